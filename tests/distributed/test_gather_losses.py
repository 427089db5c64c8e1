"""Data-parallel correctness: 2 gloo processes with half the batch each equal 1 process on
the full batch, for the loss and the feature gradients (float64, to 1e-6); the constant-gather
policies match references written after the official SLIP / open_clip loss code."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zoo.losses import GATHER_POLICIES, clip_infonce, gather, nt_xent

WORLD = 2
N, D = 8, 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=g, dtype=torch.float64), torch.randn(
        N, D, generator=g, dtype=torch.float64
    )


def _loss(kind: str, a: torch.Tensor, b: torch.Tensor, policy: str) -> torch.Tensor:
    if kind == "clip":
        return clip_infonce(a, b, 12.0, label_smoothing=0.1, gather_policy=policy)
    return nt_xent(a, b, temperature=0.1, gather_policy=policy)


def _worker(rank: int, port: int, kind: str, policy: str, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        a, b = _inputs()
        rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        a, b = a[rows].clone().requires_grad_(), b[rows].clone().requires_grad_()
        loss = _loss(kind, a, b, policy)
        loss.backward()
        out[rank] = (loss.detach(), a.grad / WORLD, b.grad / WORLD)  # DDP averages over ranks
    finally:
        dist.destroy_process_group()


def _run_two_ranks(kind: str, policy: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(_free_port(), kind, policy, out), nprocs=WORLD, join=True)
    losses = torch.stack([out[r][0] for r in range(WORLD)])
    return (
        losses.mean(),
        torch.cat([out[r][1] for r in range(WORLD)]),
        torch.cat([out[r][2] for r in range(WORLD)]),
    )


@pytest.mark.parametrize("kind", ["clip", "ntxent"])
def test_with_grad_gather_equals_full_batch(kind):
    a, b = _inputs()
    a.requires_grad_(), b.requires_grad_()
    full = _loss(kind, a, b, "none")
    full.backward()
    loss, grad_a, grad_b = _run_two_ranks(kind, "with_grad")
    torch.testing.assert_close(loss, full.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_a, a.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_b, b.grad, atol=1e-6, rtol=0)


def test_no_grad_gather_equals_full_batch_loss_and_local_gradient():
    """``no_grad`` (alias of ``local_grad``): same loss; the gradient flows through this
    rank's rows and columns only (other ranks' features are constants), which is what we
    check."""
    a, b = _inputs()
    full = _loss("clip", a, b, "none")
    loss, grad_a, grad_b = _run_two_ranks("clip", "no_grad")
    torch.testing.assert_close(loss, full, atol=1e-6, rtol=0)

    expected_a, expected_b = [], []
    for r in range(WORLD):
        rows = slice(r * N // WORLD, (r + 1) * N // WORLD)
        la, lb = a[rows].clone().requires_grad_(), b[rows].clone().requires_grad_()
        all_a, all_b = a.clone(), b.clone()
        all_a[rows], all_b[rows] = la, lb
        za, zb = torch.nn.functional.normalize(la, dim=1), torch.nn.functional.normalize(lb, dim=1)
        za_all = torch.nn.functional.normalize(all_a, dim=1)
        zb_all = torch.nn.functional.normalize(all_b, dim=1)
        labels = torch.arange(rows.start, rows.stop)
        ce = torch.nn.functional.cross_entropy
        local = 0.5 * (
            ce(12.0 * za @ zb_all.T, labels, label_smoothing=0.1)
            + ce(12.0 * zb @ za_all.T, labels, label_smoothing=0.1)
        )
        local.backward()
        expected_a.append(la.grad / WORLD)
        expected_b.append(lb.grad / WORLD)
    torch.testing.assert_close(grad_a, torch.cat(expected_a), atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_b, torch.cat(expected_b), atol=1e-6, rtol=0)


# --- constant-gather policies against the official loss code -------------------------------

SCALE = 12.0
CONSTANT_POLICIES = ("constant", "local_grad", "no_grad")


def _ce_pair(img, txt, img_all, txt_all, labels):
    logits_per_image = SCALE * img @ txt_all.t()
    logits_per_text = SCALE * txt @ img_all.t()
    ce = torch.nn.functional.cross_entropy
    return (ce(logits_per_image, labels) + ce(logits_per_text, labels)) / 2


def _slip_clip_loss(image_embed, text_embed):
    """SLIP ``losses.CLIPLoss.forward`` with ``utils.all_gather_batch``: plain
    ``dist.all_gather`` into fresh ``ones_like`` buffers, so every copy is a constant."""
    world, rank = dist.get_world_size(), dist.get_rank()
    labels = image_embed.shape[0] * rank + torch.arange(image_embed.shape[0])
    image_embed = torch.nn.functional.normalize(image_embed, dim=-1, p=2)
    text_embed = torch.nn.functional.normalize(text_embed, dim=-1, p=2)
    gathered = []
    for tensor in (image_embed, text_embed):
        tensor_all = [torch.ones_like(tensor) for _ in range(world)]
        dist.all_gather(tensor_all, tensor)
        gathered.append(torch.cat(tensor_all, dim=0))
    return _ce_pair(image_embed, text_embed, *gathered, labels)


def _open_clip_local_grad_loss(image_features, text_features):
    """open_clip ``gather_features(gather_with_grad=False, local_loss=False)`` (gathered
    list, own slice replaced by the local tensor, cat) with local-row logits and offset
    labels as in ``ClipLoss`` with ``local_loss``."""
    world, rank = dist.get_world_size(), dist.get_rank()
    image_features = torch.nn.functional.normalize(image_features, dim=-1)
    text_features = torch.nn.functional.normalize(text_features, dim=-1)
    gathered_image = [torch.zeros_like(image_features) for _ in range(world)]
    gathered_text = [torch.zeros_like(text_features) for _ in range(world)]
    dist.all_gather(gathered_image, image_features)
    dist.all_gather(gathered_text, text_features)
    gathered_image[rank] = image_features
    gathered_text[rank] = text_features
    all_image, all_text = torch.cat(gathered_image), torch.cat(gathered_text)
    labels = torch.arange(image_features.shape[0]) + image_features.shape[0] * rank
    return _ce_pair(image_features, text_features, all_image, all_text, labels)


REFERENCES = {
    "constant": _slip_clip_loss,
    "local_grad": _open_clip_local_grad_loss,
    "no_grad": _open_clip_local_grad_loss,
}


def _loss_and_grads(fn, a, b, rows):
    a, b = a[rows].clone().requires_grad_(), b[rows].clone().requires_grad_()
    loss = fn(a, b)
    loss.backward()
    return loss.detach(), a.grad, b.grad


def _reference_worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        a, b = _inputs()
        rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        result = {}
        for policy in CONSTANT_POLICIES:
            zoo = _loss_and_grads(
                lambda x, y, p=policy: clip_infonce(x, y, SCALE, gather_policy=p), a, b, rows
            )
            ref = _loss_and_grads(REFERENCES[policy], a, b, rows)
            result[policy] = (zoo, ref)
        out[rank] = result
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def per_rank_results() -> dict:
    """{rank: {policy: ((loss, grad_a, grad_b) of the zoo, (same) of the reference)}}."""
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_reference_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    return {r: out[r] for r in range(WORLD)}


@pytest.mark.parametrize("policy", CONSTANT_POLICIES)
def test_constant_gather_policies_match_official_loss_code(per_rank_results, policy):
    """constant = SLIP ``CLIPLoss`` + ``all_gather_batch``; local_grad (and its alias
    no_grad) = open_clip's ``gather_features``: per rank, loss and feature gradients."""
    for rank in range(WORLD):
        zoo, ref = per_rank_results[rank][policy]
        for got, expected in zip(zoo, ref):
            torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


def test_constant_and_local_grad_differ_in_gradient_not_loss(per_rank_results):
    for rank in range(WORLD):
        constant, _ = per_rank_results[rank]["constant"]
        local_grad, _ = per_rank_results[rank]["local_grad"]
        torch.testing.assert_close(constant[0], local_grad[0], atol=1e-10, rtol=0)
        for g_constant, g_local in zip(constant[1:], local_grad[1:]):
            assert (g_constant - g_local).abs().max() > 1e-3


def test_one_process_policies_agree():
    a, b = _inputs()
    losses = [clip_infonce(a, b, SCALE, gather_policy=p) for p in GATHER_POLICIES]
    for loss in losses[1:]:
        torch.testing.assert_close(loss, losses[0], atol=0, rtol=0)


def test_clip_and_slip_default_to_the_official_clip_gather():
    # imported here, not at module level, so the spawned workers stay light
    from lightning_modules.clip import CLIP
    from lightning_modules.slip import SLIP
    from tests.papers._tiny import tiny_encoder_spec, tiny_head_spec

    assert CLIP(encoder=tiny_encoder_spec()).clip_loss.gather == "constant"
    slip = SLIP(encoder=tiny_encoder_spec(), ssl_head=tiny_head_spec())
    assert slip.clip_loss.gather == "constant"
    assert slip.ssl_loss.gather == "with_grad"


def test_unknown_gather_policy_names_the_valid_ones():
    with pytest.raises(ValueError) as err:
        gather(torch.randn(2, 2), "all_constant")
    for name in ("none", "constant", "local_grad", "no_grad", "with_grad"):
        assert repr(name) in str(err.value)
    with pytest.raises(ValueError, match="'constant'"):
        clip_infonce(torch.randn(2, 2), torch.randn(2, 2), 1.0, gather_policy="slip")
