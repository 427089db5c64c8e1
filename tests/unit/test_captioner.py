"""ViSFT caption head: Show-Attend-Tell decoder, its loss, vocabulary and caption metrics.

Hand computations for the doubly-stochastic regulariser, BLEU-4 and CIDEr-D; properties of
teacher forcing (causality, padding, batch independence); and an overfit of the tiny head.
"""

import json
import math

import pytest
import torch

from zoo.eval.caption_metrics import caption_scores, cider_d, corpus_bleu4
from zoo.heads.captioner import (
    CaptionHeadSpec,
    CaptionVocab,
    ShowAttendTellHead,
    caption_loss,
    caption_loss_terms,
    tokenize_caption,
)

CAPTIONS = [
    "a red cube left of a blue ball",
    "two green cylinders",
    "a small blue ball right of a red cube",
    "three cubes and one ball",
]


def _head(cell: str = "lstm", channels: int = 8, vocab: int = 20, **kw) -> ShowAttendTellHead:
    torch.manual_seed(0)
    return ShowAttendTellHead(channels, CaptionHeadSpec.tiny(vocab, cell=cell, **kw)).eval()


def _batch(vocab: int = 20, lengths=(6, 3, 5)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    features = torch.randn(len(lengths), 8, 6, 6, generator=g)
    tokens = torch.randint(1, vocab, (len(lengths), max(lengths)), generator=g)
    lengths_t = torch.tensor(lengths)
    tokens[torch.arange(max(lengths)) >= lengths_t[:, None]] = 0
    return features, tokens, lengths_t


# --- specs -------------------------------------------------------------------------------


def test_paper_scale_spec_is_the_official_configuration():
    spec = CaptionHeadSpec()
    assert (spec.vocab_size, spec.encoded_size) == (9490, 14)
    assert (spec.attention_dim, spec.embed_dim, spec.decoder_dim) == (384, 384, 384)
    assert (spec.dropout, spec.cell, spec.alpha_c, spec.max_decode_length) == (0.5, "lstm", 1.0, 50)
    head = ShowAttendTellHead(16, CaptionHeadSpec(vocab_size=30, encoded_size=2))
    # names follow the official DecoderWithAttention so its checkpoints load by key
    linears = ["attention.encoder_att", "attention.decoder_att", "attention.full_att"]
    linears += ["init_h", "init_c", "f_beta", "fc"]
    expected = {f"{m}.{p}" for m in linears for p in ("weight", "bias")}
    expected |= {f"decode_step.{p}" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    assert {n for n, _ in head.named_parameters()} == expected | {"embedding.weight"}
    assert torch.equal(head.fc.bias, torch.zeros(30))
    assert head.fc.weight.abs().max() <= 0.1 and head.embedding.weight.abs().max() <= 0.1
    assert ShowAttendTellHead(16, CaptionHeadSpec(vocab_size=30, cell="gru")).init_c is None


# --- loss --------------------------------------------------------------------------------


def test_doubly_stochastic_regulariser_by_hand():
    # two captions, two pixels; caption 1 has one real step, its second step is padding
    alphas = torch.tensor([[[0.25, 0.75], [0.5, 0.5]], [[0.9, 0.1], [0.3, 0.7]]])
    mask = torch.tensor([[True, True], [True, False]])
    logits = torch.zeros(2, 2, 3)  # uniform: CE = log 3 per real token
    targets = torch.tensor([[0, 1], [2, 0]])
    terms = caption_loss_terms(logits, targets, alphas, mask)
    # Σ_t α: [0.75, 1.25] and [0.9, 0.1] → (1 − Σ)²: .0625 .0625 .01 .81 → mean over b and i
    assert terms["attention"].item() == pytest.approx(0.945 / 4, abs=1e-7)
    assert terms["ce"].item() == pytest.approx(math.log(3), abs=1e-6)
    total = caption_loss(logits, targets, alphas, mask)
    assert total.item() == pytest.approx(math.log(3) + 0.23625, abs=1e-6)
    half = caption_loss(logits, targets, alphas, mask, alpha_c=0.5)
    assert half.item() == pytest.approx(math.log(3) + 0.5 * 0.23625, abs=1e-6)


def test_cross_entropy_is_the_mean_over_real_tokens_by_hand():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [5.0, -5.0]]])
    targets = torch.tensor([[0, 1], [1, 1]])
    mask = torch.tensor([[True, True], [True, False]])
    alphas = torch.full((2, 2, 1), 0.5)
    ce = caption_loss_terms(logits, targets, alphas, mask)["ce"].item()
    # three real tokens: -log σ(2), log 2, -log σ(1); the padded (5, -5) row is ignored
    expected = (math.log1p(math.exp(-2)) + math.log(2) + math.log1p(math.exp(-1))) / 3
    assert ce == pytest.approx(expected, abs=1e-6)


def test_padding_logits_do_not_change_the_loss_bit_for_bit():
    head = _head()
    out = head(*_batch())
    loss = caption_loss(*out)
    noisy = out.logits.clone()
    noisy[~out.mask] = torch.randn(int((~out.mask).sum()), noisy.shape[-1]) * 100
    assert not torch.equal(noisy, out.logits)
    assert torch.equal(caption_loss(noisy, out.targets, out.alphas, out.mask), loss)


# --- teacher forcing ---------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_teacher_forcing_is_causal(cell):
    head = _head(cell)
    features, tokens, lengths = _batch()
    base = head(features, tokens, lengths).logits
    for t in range(1, 5):
        changed = tokens.clone()
        changed[:, t] = (changed[:, t] + 7) % 20
        logits = head(features, changed, lengths).logits
        assert torch.equal(logits[:, :t], base[:, :t])  # steps 0..t-1 read tokens 0..t-1
        assert not torch.allclose(logits[0, t], base[0, t])  # step t reads token t


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_attention_is_a_distribution_over_pixels_on_real_steps(cell):
    out = _head(cell)(*_batch())
    p = CaptionHeadSpec.tiny(20).encoded_size ** 2
    assert out.alphas.shape[-1] == p
    sums = out.alphas.sum(-1)
    torch.testing.assert_close(sums[out.mask], torch.ones(int(out.mask.sum())), rtol=0, atol=1e-6)
    assert torch.equal(out.alphas[~out.mask], torch.zeros(int((~out.mask).sum()), p))
    assert bool((out.alphas[out.mask] > 0).all())


def test_masked_batch_equals_each_caption_decoded_alone():
    """The official loop sorts by length and shrinks the batch; masking must give each
    caption the same logits on its real steps as decoding it on its own."""
    head = _head()
    features, tokens, lengths = _batch()
    out = head(features, tokens, lengths)
    assert out.mask.tolist() == [
        [True] * 5,
        [True, True, False, False, False],
        [True] * 4 + [False],
    ]
    assert torch.equal(out.targets, tokens[:, 1:6])
    for b, n in enumerate(lengths.tolist()):
        alone = head(features[b : b + 1], tokens[b : b + 1, :n], lengths[b : b + 1])
        torch.testing.assert_close(alone.logits[0], out.logits[b, : n - 1], rtol=0, atol=1e-6)
        torch.testing.assert_close(alone.alphas[0], out.alphas[b, : n - 1], rtol=0, atol=1e-6)


def test_bad_input_is_named():
    head = _head()
    features, tokens, lengths = _batch()
    with pytest.raises(ValueError, match=r"expects features \(B, 8, H, W\)"):
        head(features[:, :4], tokens, lengths)
    with pytest.raises(ValueError, match="count <start> and <end>"):
        head(features, tokens, torch.tensor([6, 1, 5]))
    with pytest.raises(ValueError, match="'lstm' or 'gru'"):
        ShowAttendTellHead(8, CaptionHeadSpec.tiny(20, cell="rnn"))


# --- vocabulary --------------------------------------------------------------------------


def test_vocab_min_frequency_cut_and_official_layout():
    captions = ["Cube ball."] * 5 + ["cube cone"] + ["Sphere"] * 7
    vocab = CaptionVocab.from_captions(captions, min_word_freq=5)
    # cube 6 > 5 and sphere 7 > 5 are kept; ball (5) and cone (1) fall to <unk>
    assert vocab.word_map == {
        "cube": 1,
        "sphere": 2,
        "<unk>": 3,
        "<start>": 4,
        "<end>": 5,
        "<pad>": 0,
    }
    assert vocab.encode("A cube, a ball!") == [4, 3, 1, 3, 3, 5]


def test_vocab_round_trip_through_json(tmp_path):
    vocab = CaptionVocab.from_captions(CAPTIONS, min_word_freq=0, max_length=6)
    assert tokenize_caption("A man's RED-hat.") == ["a", "mans", "red", "hat"]
    for caption in CAPTIONS:
        assert vocab.decode(vocab.encode(caption)) == " ".join(tokenize_caption(caption)[:6])
    tokens, lengths = vocab.encode_batch(CAPTIONS)
    assert lengths.tolist() == [8, 5, 8, 7]  # ≤ 6 words + <start> + <end>
    assert tokens[1, 5:].tolist() == [0, 0, 0]
    assert vocab.decode_batch(tokens) == [vocab.decode(vocab.encode(c)) for c in CAPTIONS]
    vocab.save(tmp_path / "vocab.json")
    loaded = CaptionVocab.load(tmp_path / "vocab.json")
    assert loaded == vocab and torch.equal(loaded.encode_batch(CAPTIONS)[0], tokens)
    # an official WORDMAP_*.json ({word: index}) loads as it is
    (tmp_path / "WORDMAP.json").write_text(json.dumps(vocab.word_map))
    assert CaptionVocab.load(tmp_path / "WORDMAP.json").word_map == vocab.word_map


def test_vocab_bad_file_names_file_and_key(tmp_path):
    bad = tmp_path / "vocab.json"
    bad.write_text(json.dumps({"format": "zoo.caption_vocab", "max_length": 5}))
    with pytest.raises(ValueError, match=r"vocab\.json: key 'word_map'"):
        CaptionVocab.load(bad)
    bad.write_text(json.dumps({"a": 1, "<pad>": 0}))
    with pytest.raises(
        ValueError, match=r"vocab\.json: .*special tokens \['<unk>', '<start>', '<end>'\]"
    ):
        CaptionVocab.load(bad)


# --- metrics -----------------------------------------------------------------------------


def test_bleu4_identical_captions_is_one():
    refs = [[c, "something else entirely here"] for c in CAPTIONS]
    assert corpus_bleu4(CAPTIONS, refs) == 1.0


def test_bleu4_corpus_by_hand():
    hyps = ["the the the cat", "A small red cube."]
    refs = [["the cat sat", "the cat"], ["a small red cube", "one red cube here now ok"]]
    # clipped matches / candidates summed over the corpus:
    # p1 = (2+4)/(4+4), p2 = (1+3)/(3+3), p3 = (0+2)/(2+2), p4 = (0+1)/(1+1)
    # c = 8 > r = 3 + 4 → BP = 1; BLEU = (3/4 · 2/3 · 1/2 · 1/2)^(1/4) = 2^(-3/4)
    assert corpus_bleu4(hyps, refs) == pytest.approx(2**-0.75, abs=1e-6)


def test_bleu4_breaks_reference_length_ties_toward_the_shorter():
    # image 1: c = 3, references of 4 and 2 words tie → r = 2 (nltk / coco-caption rule)
    hyps = ["a red cube", "one small blue ball here"]
    refs = [["a big red cube", "red cube"], ["one small blue ball here"]]
    # p = 8/8, 5/6, 3/4, 2/2; c = 8 > r = 7 → BP = 1 (taking r = 4 would give e^(-1/8))
    assert corpus_bleu4(hyps, refs) == pytest.approx((5 / 8) ** 0.25, abs=1e-6)


def test_cider_d_by_hand():
    hyps = ["a cube cube", "a ball"]
    refs = [["a red cube", "a cube"], ["a ball"]]
    # N = 2. "a" is in both images' references → idf 0. Every other n-gram has weight
    # l = log 2 per count (unseen hypothesis n-grams like "cube cube" get df 1 too).
    # image 1 vs "a red cube": 1-grams min(2l, l)·l / (2l · √2 l) = 1/(2√2); 2-, 3-grams 0.
    # image 1 vs "a cube": 1-grams l²/(2l · l) = 1/2; 2-grams l²/(√2 l · l) = 1/√2;
    #   bigram lengths 2 vs 1 → penalty e^(−1/72).
    # image 1 = 10 · (sum over refs of the n-mean) / 2 refs; image 2 = 10 · (1 + 1)/4 = 5.
    image1 = 10 / (4 * 2) * (1 / (2 * math.sqrt(2)) + (0.5 + 1 / math.sqrt(2)) * math.exp(-1 / 72))
    mean, per_image = cider_d(hyps, refs)
    assert per_image == pytest.approx([image1, 5.0], abs=1e-12)
    assert mean == pytest.approx((image1 + 5.0) / 2, abs=1e-12)
    assert caption_scores(hyps, refs)["cider_d"] == mean


def test_metrics_reject_misaligned_input():
    with pytest.raises(ValueError, match="2 hypotheses for 1 reference lists"):
        corpus_bleu4(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="image 0: references must be a non-empty list"):
        cider_d(["a"], ["a"])


# --- fit ---------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    # tiny per-step ops: intra-op threads only contend with each other on a shared CPU
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_captioner_overfits_four_pairs_and_greedy_decoding_reproduces_them(one_thread):
    torch.manual_seed(0)
    vocab = CaptionVocab.from_captions(CAPTIONS, min_word_freq=0)
    tokens, lengths = vocab.encode_batch(CAPTIONS)
    features = torch.randn(4, 16, 8, 8)
    head = ShowAttendTellHead(16, CaptionHeadSpec.tiny(len(vocab)))
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(100):
        loss = caption_loss(*head(features, tokens, lengths))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    head.eval()
    generated = head.generate(features, start_id=vocab.start_id, end_id=vocab.end_id)
    assert vocab.decode_batch(generated) == CAPTIONS
    # each row stops at its own <end>; the longest caption (9 words + <end>) sets the width
    assert generated.shape[1] == 10
    assert (generated == vocab.end_id).sum(1).tolist() == [1, 1, 1, 1]
