"""Contrastive-loss memory and time against world size (1, 2, 4 gloo processes on CPU).

Strong scaling: the global batch B_global is fixed and split over W ranks, B_local =
B_global / W. Per rank we measure the peak tensor bytes of one loss forward + backward
(:class:`benchmarks.memory.TensorMemory`) and its median time, for

- ``no_grad``: the zoo's ``clip_infonce`` with ``gather_policy="no_grad"`` (other ranks'
  features gathered as constants, local loss; SLIP's ``constant`` policy has the same
  memory): logits are B_local × B_global, so memory per rank falls as 1/W;
- ``global``: a naive reference that gathers both sides and builds the full
  B_global × B_global logits on every rank: memory per rank stays O(B_global²).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import Section, median
from benchmarks.config import BenchConfig
from benchmarks.memory import TensorMemory

MiB = 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loss_fn(policy: str):
    """The loss of ``policy``: ``(z_i, z_t, scale) -> loss``."""
    from zoo.losses import clip_infonce, gather

    if policy == "global":

        def full(z_i: torch.Tensor, z_t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            all_i, _ = gather(z_i, "with_grad")
            all_t, _ = gather(z_t, "with_grad")
            return clip_infonce(all_i, all_t, scale, gather_policy="none")

        return full
    return lambda z_i, z_t, scale: clip_infonce(z_i, z_t, scale, gather_policy=policy)


def measure_rank(b_local: int, dim: int, repeats: int, policies: tuple[str, ...]) -> dict:
    """Peak bytes and median seconds of one loss forward + backward per policy."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    g = torch.Generator().manual_seed(rank)
    z_i = torch.randn(b_local, dim, generator=g).requires_grad_()
    z_t = torch.randn(b_local, dim, generator=g).requires_grad_()
    scale = torch.tensor(14.3, requires_grad=True)
    out = {}
    for policy in policies:
        fn = loss_fn(policy)
        with TensorMemory() as mem:
            fn(z_i, z_t, scale).backward()
        times = []
        for r in range(repeats + 1):
            z_i.grad = z_t.grad = scale.grad = None
            if dist.is_initialized():
                dist.barrier()
            t0 = time.perf_counter()
            fn(z_i, z_t, scale).backward()
            if r > 0:
                times.append(time.perf_counter() - t0)
        out[policy] = {"peak_bytes": mem.peak, "seconds": median(times)}
    return out


def _worker(rank: int, world: int, port: int, args: dict, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = measure_rank(**args)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run_world(world: int, b_global: int, dim: int, repeats: int) -> list[dict]:
    """Spawn ``world`` gloo ranks; each rank's ``{policy: {peak_bytes, seconds}}``."""
    import torch.multiprocessing as mp

    policies = ("no_grad", "global") if world > 1 else ("no_grad",)
    args = {"b_local": b_global // world, "dim": dim, "repeats": repeats, "policies": policies}
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, _free_port(), args, tmp), nprocs=world, join=True)
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]


def measure_loss_scaling(cfg: BenchConfig) -> Section:
    start = time.perf_counter()
    sec = Section("loss scaling")
    bg, d = cfg.loss_global_batch, cfg.loss_dim
    peaks: dict[int, float] = {}
    for world in cfg.loss_worlds:
        ranks = run_world(world, bg, d, cfg.loss_repeats)
        bl = bg // world
        peak = max(r["no_grad"]["peak_bytes"] for r in ranks)
        secs = max(r["no_grad"]["seconds"] for r in ranks)
        peaks[world] = peak
        logits = 2 * bl * bg * 4  # the two B_local × B_global fp32 logit matrices
        note = f"{peak / logits:.2f}× the B_local·B_global logits; {secs * 1e3:.1f} ms fwd+bwd"
        if world > 1:
            glob = max(r["global"]["peak_bytes"] for r in ranks)
            note += f"; naive B_global² logits: {glob / MiB:.1f} MiB"
        sec.add(
            f"loss W={world} (B_local {bl}, B_global {bg}, D {d})",
            f"{peak / MiB:.2f} MiB/rank",
            note,
        )
        sec.summary[f"loss_mib_w{world}"] = round(peak / MiB, 2)
        sec.summary[f"loss_ms_w{world}"] = round(secs * 1e3, 2)
    lo, hi = min(peaks), max(peaks)
    ratio = peaks[hi] / peaks[lo]
    sec.add(
        f"per-rank memory W={hi} / W={lo}",
        f"{ratio:.3f}",
        f"O(B_local·B_global) → {lo / hi:.2f} plus the gathered B_global×D features; O(B_global²) → 1",
    )
    sec.summary["loss_mem_ratio"] = round(ratio, 3)
    sec.seconds = time.perf_counter() - start
    return sec
