"""Tiny SLIP fitted with 2 gloo processes (DDP, CPU) and half the per-process batch equals
1 process with the full batch: the same loss curve (1e-5) and the same final weights.

Exact by construction: the sampler's order depends only on (seed, epoch) and rank r takes
every r-th index, so the two ranks' batches together are the single process's batch;
augmentations are seeded per sample; both losses gather with gradient (SLIP's CLIP term
gathers without gradient by default, which is an approximation of the full-batch gradient,
so this test switches it to ``with_grad``); the SSL head's batch norm uses global statistics.

The runs use float64. In float32 the two runs agree to 1e-6 for the first steps, then
AdamW amplifies reduction-order noise: parameters whose true gradient is zero or tiny (key
biases under softmax, biases before batch norm) get noise of the size of Adam's eps, which
Adam turns into steps of size lr with random sign. In float64 that noise is 1e-9 of eps.
"""

import pytest
import torch

from ._tiny_fit import fit_tiny_slip


def _fit(tmp_path, world: int) -> tuple[list[float], dict]:
    record, state, _ = fit_tiny_slip(
        tmp_path,
        f"w{world}",
        world,
        "ddp" if world > 1 else "auto",
        epochs=3,
        overrides=["--trainer.precision", "64-true"],
    )
    return record["losses"], state


# ~130 s on 2 cores: slow-marked to keep the default run under 15 minutes; .ci/run's slow line
# runs it on every CI
@pytest.mark.slow
def test_two_process_ddp_equals_one_process_full_batch(tmp_path):
    # build the digits cache once so both runs read the same files
    single_losses, single_state = _fit(tmp_path, 1)
    ddp_losses, ddp_state = _fit(tmp_path, 2)
    assert len(single_losses) == len(ddp_losses) == 12  # 3 epochs x 4 steps of 256
    assert single_losses[0] != pytest.approx(single_losses[-1])  # it trained
    for step, (a, b) in enumerate(zip(single_losses, ddp_losses)):
        assert a == pytest.approx(b, abs=1e-5), f"step {step}: {a} vs {b}"
    assert single_state.keys() == ddp_state.keys()
    for name, value in single_state.items():
        torch.testing.assert_close(ddp_state[name], value, atol=1e-5, rtol=1e-5, msg=name)
