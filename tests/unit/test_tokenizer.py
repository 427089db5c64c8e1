"""TextTokenizer("clip-bpe") must reproduce open_clip.tokenize id for id, offline."""

from __future__ import annotations

import os
import pickle

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from zoo.data.tokenizers import (
    CLIP_VOCAB_SIZE,
    TextTokenizer,
    clip_bpe_tokenizer,
    load_tokenizer,
)

TEXTS = [
    "a photo of a cat.",
    "",
    "   ",
    "A PHOTO of the Number SEVEN!!!",
    "don't stop; it's what we'll've done... (really?) [yes] {no} #hashtag @user",
    "naïve café — crème brûlée, façade, Zürich, Ångström",
    "東京の写真 and 北京 🐱🐶 emoji 👍🏽 test",
    "Tom &amp; Jerry &lt;3 &amp;amp; friends",
    "tabs\tand\nnewlines\r\n   and    spaces",
    "numbers 1234567890 3.14159 1e-9 -42 $100 50%",
    "mojibake: sÃ³lo cafÃ©",
    "url http://example.com/path?q=1&x=2 and e-mail a.b@c.de",
    "word " * 100,  # longer than the context: truncated, last kept token is EOS
    "supercalifragilisticexpialidocious antidisestablishmentarianism " * 20,
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """A private tokenizer cache, so tests never touch ~/.cache."""
    path = tmp_path_factory.mktemp("vlz-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VL_ZOO_CACHE", str(path))
        yield str(path)


@pytest.fixture(scope="module")
def reference():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.tokenize


@pytest.mark.parametrize("context_length", [77, 8])
def test_matches_open_clip(cache: str, reference, context_length: int) -> None:
    tok = TextTokenizer("clip-bpe", context_length=context_length)
    ours = tok(TEXTS)
    expected = reference(TEXTS, context_length=context_length)
    assert ours.dtype == torch.long
    assert torch.equal(ours, expected)
    # single strings give the (L,) row of the batch
    for i, text in enumerate(TEXTS):
        assert torch.equal(tok(text), expected[i])


def test_structure_of_ids(cache: str) -> None:
    tok = TextTokenizer(context_length=16)
    assert tok.vocab_size == CLIP_VOCAB_SIZE
    assert (tok.bos_token_id, tok.eot_token_id, tok.pad_token_id) == (49406, 49407, 0)
    empty = tok("")
    assert empty.tolist() == [49406, 49407] + [0] * 14
    long = tok("word " * 50)
    assert long[0] == 49406 and long[-1] == 49407 and (long != 0).all()
    # the EOT is the argmax of every row (the text tower pools there)
    batch = tok(TEXTS)
    eot_pos = batch.argmax(dim=-1)
    assert (batch[torch.arange(len(TEXTS)), eot_pos] == 49407).all()


def test_vocab_files_and_cache_reuse(tmp_path, reference) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    hf = clip_bpe_tokenizer(tmp_path)
    ours = hf.get_vocab()
    theirs = SimpleTokenizer().encoder  # open_clip names the specials <start_of_text> ...
    assert len(ours) == len(theirs) == CLIP_VOCAB_SIZE
    specials = {"<|startoftext|>": 49406, "<|endoftext|>": 49407}
    assert {k: v for k, v in ours.items() if v < 49406} == {
        k: v for k, v in theirs.items() if v < 49406
    }
    assert {k: ours[k] for k in specials} == specials
    mtime = (tmp_path / "vocab.json").stat().st_mtime_ns
    clip_bpe_tokenizer(tmp_path)
    assert (tmp_path / "vocab.json").stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_local_hf_folder_and_errors(cache: str, tmp_path) -> None:
    clip_bpe_tokenizer().save_pretrained(tmp_path / "tok")
    local = TextTokenizer(str(tmp_path / "tok"), context_length=12)
    ref = TextTokenizer("clip-bpe", context_length=12)
    texts = ["a handwritten seven", "digit 7 scanned"]
    assert torch.equal(local(texts), ref(texts))
    assert local.name_or_path == str(tmp_path / "tok")
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(str(missing))
    with pytest.raises(FileNotFoundError, match="nope"):
        TextTokenizer(str(missing))


def test_pickles_without_the_hf_object(cache: str) -> None:
    tok = TextTokenizer(context_length=10)
    before = tok(TEXTS[:4])
    blob = pickle.dumps(tok)
    assert b"CLIPTokenizer" not in blob and len(blob) < 1000
    clone = pickle.loads(blob)
    assert clone.context_length == 10 and clone.name_or_path == "clip-bpe"
    assert torch.equal(clone(TEXTS[:4]), before)
