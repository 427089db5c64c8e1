"""Evaluation protocols (zoo.eval): hand-computed values, naive references, Lightning runs."""

from __future__ import annotations

import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.retrieval import RetrievalHitRate

from zoo.eval import (
    DEFAULT_CS,
    KNNEval,
    LinearProbeEval,
    RetrievalEval,
    ZeroShotEval,
    extract_features,
    knn_accuracy,
    knn_classify,
    linear_probe,
    retrieval_recall,
    retrieval_recall_from_similarity,
    zeroshot_accuracy,
    zeroshot_classifier,
    zeroshot_logits,
)
from zoo.protocols import DualEncoderProtocols

# --------------------------------------------------------------------------- features


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.9)
        self.frozen = nn.BatchNorm1d(3)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.linear(x))


def test_extract_features_eval_mode_restored_and_texts_padded() -> None:
    torch.manual_seed(0)
    net = _Net().train()
    net.frozen.eval()  # a deliberately frozen submodule must stay in eval mode
    x1, x2 = torch.randn(2, 4), torch.randn(3, 4)
    batches = [
        {"image": x1, "label": torch.tensor([1, 0]), "text": torch.tensor([[5, 6], [7, 0]])},
        {"image": x2, "label": torch.tensor([2, 2, 1]), "text": torch.tensor([[1, 2, 3]] * 3)},
    ]
    feats, labels, texts = extract_features(net.forward, batches, "cpu")
    # Dropout off (eval mode): exactly the linear layer.
    expected = torch.cat([x1, x2]) @ net.linear.weight.detach().T + net.linear.bias.detach()
    torch.testing.assert_close(feats, expected)
    assert feats.dtype == torch.float32 and not feats.is_inference()
    assert labels.tolist() == [1, 0, 2, 2, 1]
    assert texts.tolist() == [[5, 6, 0], [7, 0, 0], [1, 2, 3], [1, 2, 3], [1, 2, 3]]
    assert net.training and net.drop.training and not net.frozen.training
    # max_batches stops early (fast_dev_run); missing keys give None.
    feats, labels, texts = extract_features(net.forward, [{"image": x1}] * 3, "cpu", max_batches=1)
    assert feats.shape == (2, 3) and labels is None and texts is None


# --------------------------------------------------------------------------- zero-shot


class _LookupTokenizer:
    """Stand-in tokenizer: every known string becomes one token, its vocabulary index."""

    def __init__(self, vocab: list[str]) -> None:
        self.index = {s: i for i, s in enumerate(vocab)}

    def __call__(self, texts: list[str]) -> Tensor:
        return torch.tensor([[self.index[t]] for t in texts])


class _LookupEncoder(nn.Module):
    """encode_text is a fixed table lookup, so every prompt embedding is known."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table = nn.Embedding.from_pretrained(table)

    def encode_text(self, tokens: Tensor, normalize: bool = False) -> Tensor:
        return self.table(tokens[:, 0])


def test_zeroshot_classifier_matches_hand_computation() -> None:
    vocab = ["the dog", "a cat", "a dog", "the cat"]  # ids deliberately not in prompt order
    table = torch.tensor([[0.0, 2, 2], [3, 0, 0], [0, 0, 2], [0, 4, 0]])
    encoder = _LookupEncoder(table).train()
    clf = zeroshot_classifier(
        encoder, _LookupTokenizer(vocab), ["cat", "dog"], ["a {}", "the {}"], "cpu", batch_size=3
    )
    # cat: mean(normalize([3,0,0]), normalize([0,4,0])) = [.5,.5,0] -> [1,1,0]/√2
    # dog: mean([0,0,1], [0,1,1]/√2) -> renormalised bisector at 22.5°: [0, sin π/8, cos π/8]
    sin8, cos8 = math.sin(math.pi / 8), math.cos(math.pi / 8)
    expected = torch.tensor([[2**-0.5, 2**-0.5, 0.0], [0.0, sin8, cos8]])
    torch.testing.assert_close(clf, expected)
    assert not torch.allclose(clf[0], torch.tensor([0.6, 0.8, 0.0]))  # no raw averaging
    assert encoder.training

    images = torch.tensor([[1.0, 1, 0], [0, 0, 5], [0, 1, 0.5], [2, 0, 0]])
    logits = zeroshot_logits(images, clf)
    torch.testing.assert_close(logits[0], torch.tensor([100.0, 100 * sin8 / 2**0.5]))
    # image 2 = [0,2,1]/√5: cos(cat) = 2/√10 = .632 < cos(dog) = (2 sin π/8 + cos π/8)/√5 = .755
    assert logits.argmax(1).tolist() == [0, 1, 1, 0]
    acc = zeroshot_accuracy(images, torch.tensor([0, 1, 0, 0]), clf, top_k=(1, 5))
    assert acc == {"top1": 75.0, "top5": 100.0}  # top-5 capped at the 2 classes


# --------------------------------------------------------------------------- linear probe


def _blobs(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centers = 4.0 * np.eye(num_classes, dim)
    y = np.repeat(np.arange(num_classes), n_per_class)
    return (centers[y] + spread * rng.standard_normal((len(y), dim))).astype(np.float32), y


def test_linear_probe_separable_random_and_refit() -> None:
    xtr, ytr = _blobs(50, 3, 16, 0.5, seed=0)
    xte, yte = _blobs(30, 3, 16, 0.5, seed=1)
    res = linear_probe(torch.from_numpy(xtr), torch.from_numpy(ytr), xte, yte)
    assert res["top1"] == 100.0 and res["C"] in DEFAULT_CS
    # The reported number is the refit on *all* train features with the chosen C.
    ref = LogisticRegression(C=res["C"], max_iter=1000).fit(xtr, ytr).score(xte, yte)
    assert res["top1"] == pytest.approx(100 * ref)

    rng = np.random.default_rng(2)
    xr, xr_test = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    yr, yr_test = rng.integers(0, 4, 400), rng.integers(0, 4, 400)
    res = linear_probe(xr, yr, xr_test, yr_test, Cs=(1e-2, 1.0, 1e2))
    assert abs(res["top1"] - 25.0) < 8.0 and res["C"] in (1e-2, 1.0, 1e2)


def test_linear_probe_chooses_c_on_stratified_validation_split() -> None:
    xtr, ytr = _blobs(40, 4, 8, 2.5, seed=3)  # overlapping classes: C matters
    xte, yte = _blobs(20, 4, 8, 2.5, seed=4)
    grid = (1e2, 1e-4, 1e-2, 1.0)  # unsorted on purpose
    res = linear_probe(xtr, ytr, xte, yte, Cs=grid, val_fraction=0.25, seed=7)
    xa, xv, ya, yv = train_test_split(xtr, ytr, test_size=0.25, random_state=7, stratify=ytr)
    val = {c: LogisticRegression(C=c, max_iter=1000).fit(xa, ya).score(xv, yv) for c in grid}
    best = max(sorted(grid), key=lambda c: val[c])  # first maximum = smallest C among ties
    assert res["C"] == best and res["val_top1"] == pytest.approx(100 * val[best])
    assert len(set(val.values())) > 1


def test_linear_probe_chooses_c_on_a_separate_validation_split() -> None:
    """The few-shot protocol: every C is fitted on all train features and scored on the
    given validation split; the refit uses all train features too."""
    xtr, ytr = _blobs(8, 4, 8, 2.5, seed=5)  # 8 shots per class: nothing to hold out
    xva, yva = _blobs(10, 4, 8, 2.5, seed=6)
    xte, yte = _blobs(20, 4, 8, 2.5, seed=4)
    grid = (1e-4, 1e-2, 1.0, 1e2)
    res = linear_probe(xtr, ytr, xte, yte, Cs=grid, val_x=xva, val_y=yva)
    val = {c: LogisticRegression(C=c, max_iter=1000).fit(xtr, ytr).score(xva, yva) for c in grid}
    best = max(grid, key=lambda c: val[c])
    assert res["C"] == best and res["val_top1"] == pytest.approx(100 * val[best])
    test = LogisticRegression(C=best, max_iter=1000).fit(xtr, ytr).score(xte, yte)
    assert res["top1"] == pytest.approx(100 * test)
    assert len(set(val.values())) > 1


# --------------------------------------------------------------------------- kNN


def _naive_knn(train: Tensor, ytr: Tensor, test: Tensor, num_classes: int, k: int, t: float):
    scores = torch.zeros(len(test), num_classes, dtype=torch.float64)
    for i, q in enumerate(test.double()):
        sims = [float(q @ r / (q.norm() * r.norm())) for r in train.double()]
        for j in sorted(range(len(train)), key=lambda j: -sims[j])[:k]:
            scores[i, int(ytr[j])] += math.exp(sims[j] / t)
    return scores


@pytest.mark.parametrize("k", [7, 100])
def test_knn_matches_naive_loop(k: int) -> None:
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 8, generator=g), torch.randn(13, 8, generator=g)
    ytr, yte = torch.randint(0, 5, (50,), generator=g), torch.randint(0, 5, (13,), generator=g)
    pred, scores = knn_classify(train, ytr, test, 5, k=k, temperature=0.07, chunk_size=4)
    ref = _naive_knn(train, ytr, test, 5, min(k, 50), 0.07)
    torch.testing.assert_close(scores.double(), ref, rtol=1e-4, atol=1e-6)
    assert pred.tolist() == ref.argmax(1).tolist()
    acc = knn_accuracy(train, ytr, test, yte, 5, k=k, top_k=(1, 2))
    assert acc["top1"] == pytest.approx(100 * float((ref.argmax(1) == yte).double().mean()))
    in_top2 = (ref.topk(2, dim=1).indices == yte[:, None]).any(1)
    assert acc["top2"] == pytest.approx(100 * float(in_top2.double().mean()))


# --------------------------------------------------------------------------- retrieval

# 4 images (rows) × 8 captions (columns); caption j belongs to image j // 2.
_SIM = torch.tensor(
    [
        [0.5, 0.9, 0.1, 0.2, 0.3, 0.0, 0.1, 0.2],  # img0: own caption 1 first: hit at every k
        [0.1, 0.2, 0.3, 0.7, 0.8, 0.1, 0.0, 0.2],  # img1: caption 4 (miss) above 3: hit k >= 2
        [0.6, 0.1, 0.2, 0.3, 0.5, 0.6, 0.1, 0.0],  # img2: caption 5 TIED with negative 0
        [0.4, 0.4, 0.4, 0.4, 0.4, 0.2, 0.2, 0.2],  # img3: 5 negatives above; 6, 7 TIED with 5
    ]
)
_T2I = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def test_retrieval_recall_hand_computed_with_ties_and_misses() -> None:
    rec = retrieval_recall_from_similarity(_SIM, _T2I, ks=(1, 2, 6), chunk_size=3)
    # Ties count in expectation over a random tie-break, P(hit) = 1 - C(q,m)/C(p+q,m):
    # img2 at k=1: 1 positive and 1 negative tied on top -> 1/2;
    # img3: 5 negatives above, then 2 positives and 1 negative tied -> k=6: 1 - 1/3 = 2/3.
    # image->text: R@1 = (1 + 0 + 1/2 + 0)/4, R@2 = (1 + 1 + 1 + 0)/4, R@6 = (3 + 2/3)/4.
    # text->image (columns): c0, c2, c4 have one image above theirs (hit from k = 2);
    # c7 = [.2, .2, 0, .2] ties its image 3 with images 0, 1: 1/3 at k=1, 2/3 at k=2;
    # the other four captions rank their image first.
    expected = {
        "i2t_r1": 100 * 1.5 / 4,
        "i2t_r2": 75.0,
        "i2t_r6": 100 * (3 + 2 / 3) / 4,
        "t2i_r1": 100 * (4 + 1 / 3) / 8,
        "t2i_r2": 100 * (7 + 2 / 3) / 8,
        "t2i_r6": 100.0,
    }
    assert rec == pytest.approx(expected)
    # The same expectation by simulation: random jitter far below the 0.1 gaps breaks ties.
    g = torch.Generator().manual_seed(0)
    draws = [
        retrieval_recall_from_similarity(
            _SIM + 1e-4 * torch.rand(4, 8, generator=g), _T2I, (1, 2, 6)
        )
        for _ in range(400)
    ]
    simulated = {key: float(np.mean([d[key] for d in draws])) for key in expected}
    assert simulated == pytest.approx(expected, abs=4.0)
    # A collapsed model (all similarities equal) scores chance, k / N.
    flat = retrieval_recall_from_similarity(torch.ones(4, 8), _T2I, ks=(1, 2))
    assert flat == pytest.approx(
        {"i2t_r1": 25.0, "i2t_r2": 100 * (1 - 15 / 28), "t2i_r1": 25.0, "t2i_r2": 50.0}
    )


def test_retrieval_recall_features_and_torchmetrics_hit_rate() -> None:
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(6, 5, generator=g), torch.randn(12, 5, generator=g)
    t2i = torch.randperm(12, generator=g) % 6
    rec = retrieval_recall(image * 3.0, text, t2i, ks=(1, 3))  # scale-invariant (cosine)
    sim = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    assert rec == retrieval_recall_from_similarity(sim, t2i, ks=(1, 3))
    # No ties in random data: i2t R@k is torchmetrics' hit rate (>= 1 relevant in the top k).
    rows = torch.arange(6)[:, None].expand(6, 12)
    for k in (1, 3):
        i2t = RetrievalHitRate(top_k=k)(
            sim.flatten(), (t2i[None, :] == rows).flatten(), rows.flatten()
        )
        cols = torch.arange(12)[:, None].expand(12, 6)
        target = (t2i[:, None] == torch.arange(6)[None, :]).flatten()
        t2i_hit = RetrievalHitRate(top_k=k)(sim.T.flatten(), target, cols.flatten())
        assert rec[f"i2t_r{k}"] == pytest.approx(100 * float(i2t))
        assert rec[f"t2i_r{k}"] == pytest.approx(100 * float(t2i_hit))


def test_matched_recall_by_hand_and_equal_to_pair_recall_on_the_pairing() -> None:
    from zoo.eval.retrieval import matched_recall_from_similarity

    # With relevance = the pairing itself, retrieval by match is pair retrieval (ties too).
    pairing = _T2I[:, None] == torch.arange(4)[None, :]
    assert matched_recall_from_similarity(_SIM, pairing, (1, 2, 6), 3) == pytest.approx(
        retrieval_recall_from_similarity(_SIM, _T2I, (1, 2, 6))
    )
    # 3 images x 2 captions: caption 0 fits images 0 and 2, caption 1 fits image 1 only.
    sim = torch.tensor([[0.1, 0.3], [0.2, 0.9], [0.8, 0.4]])
    fits = torch.tensor([[True, False, True], [False, True, False]])
    rec = matched_recall_from_similarity(sim, fits, ks=(1,))
    # text->image: caption 0 ranks image 2 (fits) first; caption 1 ranks image 1 first -> 100.
    # image->text: image 0 ranks caption 1 (miss) first; image 1 caption 1 (hit); image 2
    # caption 0 (hit) -> 2 of 3.
    assert rec == pytest.approx({"t2i_r1": 100.0, "i2t_r1": 200 / 3})
    # pair recall on the same scores (caption 0 is image 0's): caption 0's top image is 2 -> miss
    pair = retrieval_recall_from_similarity(sim[:2], torch.tensor([0, 1]), ks=(1,))
    assert pair["t2i_r1"] == 50.0
    with pytest.raises(ValueError, match="relevance must have shape"):
        matched_recall_from_similarity(sim, fits.T)


# --------------------------------------------------------------------------- callbacks

_CLASSES = ["zero", "one", "two"]
_TEMPLATES = ["a photo of a {}", "a {}"]
_WORDS = ["a", "photo", "of", "blurry", *_CLASSES]


class _WordTokenizer:
    """Stand-in for TextTokenizer: word ids (0 = pad, 1 = unknown), fixed length 6."""

    def __call__(self, texts: list[str]) -> Tensor:
        out = torch.zeros(len(texts), 6, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [_WORDS.index(w) + 2 if w in _WORDS else 1 for w in text.split()][:6]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class _Images(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        protos = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(99))
        self.label = torch.arange(n) % 3
        self.image = protos[self.label] + 0.8 * torch.randn(n, 3, 4, 4, generator=g)
        captions = [f"a blurry photo of a {_CLASSES[c]}" for c in self.label.tolist()]
        self.text = _WordTokenizer()(captions)

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.image[i], "label": self.label[i], "text": self.text[i]}


class _DataModule(L.LightningDataModule):
    classnames = _CLASSES
    templates = _TEMPLATES
    tokenizer = _WordTokenizer()

    def __init__(self) -> None:
        super().__init__()
        self.sets = {"train": _Images(45, seed=1), "test": _Images(25, seed=2)}

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(self.sets["train"], batch_size=15, shuffle=True, generator=g)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["test"], batch_size=25)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["test"], batch_size=25)

    def eval_dataloader(self, split: str) -> DataLoader:
        return DataLoader(self.sets[split], batch_size=10)  # 10 does not divide 45 / 25


class _TinyEncoder(nn.Module):
    """Linear image 'tower' (with dropout, so eval mode matters) and bag-of-words text."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.Dropout(0.5))
        self.image_projection = nn.Linear(16, 8, bias=False)
        self.embed = nn.Embedding(len(_WORDS) + 2, 8, padding_idx=0)

    def image_trunk(self, images: Tensor) -> Tensor:
        return self.trunk(images)

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        z = self.image_projection(self.image_trunk(images))
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text(self, tokens: Tensor, normalize: bool = False) -> Tensor:
        mask = (tokens != 0).unsqueeze(-1).float()
        z = (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return F.normalize(z, dim=-1) if normalize else z


class _TinyCLIP(DualEncoderProtocols, L.LightningModule):
    """A dual encoder answering the evaluation protocols through the shared mixin."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = _TinyEncoder()

    def _loss(self, batch: dict[str, Tensor]) -> Tensor:
        zi = self.encoder.encode_image(batch["image"], normalize=True)
        zt = self.encoder.encode_text(batch["text"], normalize=True)
        logits = 10.0 * zi @ zt.T
        target = torch.arange(len(zi))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._loss(batch)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch))

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("test/loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class _CaptureLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[dict[str, float], int | None]] = []

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: object, *args: object, **kwargs: object) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.events.append((dict(metrics), step))


def _events(logger: _CaptureLogger, key: str) -> list[tuple[float, int | None]]:
    return [(m[key], step) for m, step in logger.events if key in m]


def _reference(encoder: _TinyEncoder, dm: _DataModule) -> dict[str, float]:
    """The same protocols run by hand with the standalone functions."""
    emb = {s: extract_features(encoder.encode_image, dm.eval_dataloader(s), "cpu") for s in dm.sets}
    trunk = {
        s: extract_features(encoder.image_trunk, dm.eval_dataloader(s), "cpu") for s in dm.sets
    }
    clf = zeroshot_classifier(encoder, dm.tokenizer, _CLASSES, _TEMPLATES, "cpu")
    zs = zeroshot_accuracy(emb["test"][0], emb["test"][1], clf)
    (xtr, ytr, _), (xte, yte, texts) = trunk["train"], trunk["test"]
    lp = linear_probe(xtr, ytr, xte, yte, Cs=(0.1, 1.0, 10.0))
    knn = knn_accuracy(xtr, ytr, xte, yte, 3, k=5, temperature=0.1)
    with torch.inference_mode():
        text = encoder.eval().encode_text(texts)
    rec = retrieval_recall(emb["test"][0], text, torch.arange(25))
    return {
        "eval/zeroshot_top1": zs["top1"],
        "eval/zeroshot_top5": zs["top5"],
        "eval/linear_probe_top1": lp["top1"],
        "eval/linear_probe_C": lp["C"],
        "eval/knn_top1": knn["top1"],
        "eval/knn_top5": knn["top5"],
        **{f"eval/retrieval_{k}": v for k, v in rec.items()},
    }


def test_callbacks_in_trainer_match_standalone_functions(tmp_path, capsys) -> None:
    dm, model, logger = _DataModule(), _TinyCLIP(), _CaptureLogger()
    callbacks = [
        ZeroShotEval(),
        LinearProbeEval(feature="trunk", Cs=(0.1, 1.0, 10.0)),
        KNNEval(k=5, temperature=0.1, every_n_epochs=1),
        RetrievalEval(),
    ]
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=logger,
        callbacks=list(callbacks),  # Lightning appends its own callbacks to the list
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    steps = trainer.global_step
    assert steps == 6 and model.training and model.encoder.trunk[2].training  # modes restored

    ref = _reference(model.encoder, dm)
    results = {k: v for cb in callbacks for k, v in cb.results.items()}
    assert results == pytest.approx(ref)
    for key, value in ref.items():
        assert float(trainer.callback_metrics[key]) == pytest.approx(value)
    # Once at the end of fit (not in the sanity check nor fit's own validation) ...
    assert _events(logger, "eval/zeroshot_top1") == [(pytest.approx(ref["eval/zeroshot_top1"]), 6)]
    assert [s for _, s in _events(logger, "eval/linear_probe_top1")] == [6]
    # ... and every epoch for every_n_epochs=1, without a duplicate run at the end.
    assert [s for _, s in _events(logger, "eval/knn_top1")] == [3, 6]
    out = capsys.readouterr().out
    zs = f"zero-shot top-1: {ref['eval/zeroshot_top1']:.2f}% (top-5 100.00%) on 25 test images"
    assert zs in out and "linear probe (trunk) top-1:" in out and "retrieval R@1/5/10" in out

    # trainer.validate / trainer.test run every protocol once more, with the same weights.
    trainer.validate(model, datamodule=dm, verbose=False)
    trainer.test(model, datamodule=dm, verbose=False)
    for key in ("eval/zeroshot_top1", "eval/linear_probe_top1", "eval/retrieval_t2i_r1"):
        assert [v for v, _ in _events(logger, key)] == pytest.approx([ref[key]] * 3)
    assert len(_events(logger, "eval/knn_top1")) == 4


def test_callbacks_fast_dev_run_use_one_batch(tmp_path, capsys) -> None:
    callbacks = [ZeroShotEval(), LinearProbeEval(), KNNEval(), RetrievalEval()]
    trainer = L.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        callbacks=list(callbacks),  # Lightning appends its own callbacks to the list
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_TinyCLIP(), datamodule=_DataModule())
    out = capsys.readouterr().out
    assert "on 10 test images" in out and "fitted on 10" in out
    assert all(cb.results for cb in callbacks)


def _fit_one_step(tmp_path, monkeypatch, callback):
    """A tiny CLIP on the digits (no caption relevance) with ``callback``: returns the
    trainer and the error the fit raised."""
    import lightning as L

    from datamodules.clip import CLIPDataModule
    from lightning_modules.clip import CLIP

    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))
    dm = CLIPDataModule(
        source="digits",
        digits={"size": 16, "format": "csv"},
        image_size=16,
        context_length=16,
        batch_size=32,
    )
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    with pytest.raises(ValueError) as err:
        trainer.fit(CLIP(encoder={"preset": "vit-tiny-digits"}), dm)
    return trainer, str(err.value)


def test_retrieval_by_match_without_relevance_fails_before_training(tmp_path, monkeypatch):
    from zoo.eval import RetrievalEval

    trainer, message = _fit_one_step(
        tmp_path, monkeypatch, RetrievalEval(split="test", ks=(1,), match=True)
    )
    assert trainer.global_step == 0  # refused at fit start, not after training
    assert "caption_relevance" in message and "CLIPDataModule" in message
