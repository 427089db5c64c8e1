"""How the evaluation callbacks see the trainer's parameter sharding (zoo.eval.sharding)."""

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn

from zoo.eval import ZeroShotEval
from zoo.eval.sharding import parameter_sharding


def _trainer(model, **strategy_attrs):
    strategy = SimpleNamespace(
        model=model,
        barrier=lambda name=None: None,
        broadcast=lambda obj, src=0: obj,
        **strategy_attrs,
    )
    return SimpleNamespace(strategy=strategy, is_global_zero=True, datamodule=None, loggers=[])


@pytest.fixture
def single_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_whole_parameters_fsdp_and_unsupported_sharding(single_process_group):
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    assert parameter_sharding(_trainer(nn.Linear(4, 4))) == "none"
    assert parameter_sharding(_trainer(None)) == "none"
    fsdp1 = FullyShardedDataParallel(nn.Linear(4, 4), device_id=torch.device("cpu"))
    assert parameter_sharding(_trainer(fsdp1)) == "fsdp"
    fsdp2 = fully_shard(nn.Sequential(nn.Linear(4, 4)))
    assert parameter_sharding(_trainer(fsdp2)) == "unsupported"
    assert parameter_sharding(_trainer(nn.Linear(4, 4), zero_stage_3=True)) == "unsupported"


def test_unsupported_sharding_skips_with_a_warning_instead_of_crashing():
    trainer = _trainer(nn.Linear(4, 4), zero_stage_3=True)
    with pytest.warns(UserWarning, match="cannot gather"):
        assert ZeroShotEval().run(trainer, nn.Linear(4, 4)) == {}
