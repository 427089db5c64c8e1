"""The metafile schema accepts the repository's metafiles and rejects what would make a
number untraceable."""

import copy

import pytest
from pydantic import ValidationError

from zoo.ledger import validate_metafile
from zoo.registry import papers

GOOD_REPRODUCED = {
    "recipe": "tiny.yaml",
    "metric": "eval/zeroshot_top1",
    "mean": 20.0,
    "std": 10.0,
    "values": [10.0, 20.0, 30.0],
    "seeds": [0, 1, 2],
    "scale": "tiny",
    "command": "python -m zoo reproduce recipes/clip/tiny.yaml --seeds 3",
    "commit": "a" * 40,
    "dirty": False,
    "date": "2026-11-29",
    "hardware": "x86_64 2 CPU cores",
    "zoo_version": "0.1.0",
    "config_sha256": "b" * 64,
}
BASE = {
    "paper": {"title": "T", "arxiv": "1"},
    "reported": [
        {"dataset": "d", "metric": "m", "value": 1.0, "recipe": "r.yaml", "source": "paper Table 1"}
    ],
    "reproduced": [GOOD_REPRODUCED],
}


def test_repository_metafiles_validate():
    found = papers()
    assert found
    for paper in found:
        meta = validate_metafile(paper.folder / "metafile.yaml")
        assert meta.reported


def test_valid_example_passes():
    assert validate_metafile(copy.deepcopy(BASE)).reproduced[0].mean == 20.0


@pytest.mark.parametrize(
    "path, value",
    [
        (("reported", 0, "source"), ""),  # a reported number without a source
        (("reproduced", 0, "mean"), 25.0),  # mean does not match the values
        (("reproduced", 0, "std"), 1.0),  # std does not match the values
        (("reproduced", 0, "seeds"), [0, 1]),  # fewer seeds than values
        (("reproduced", 0, "commit"), "main"),  # not a commit hash
        (("reproduced", 0, "command"), "edited by hand"),  # not produced by zoo reproduce
        (("reproduced", 0, "date"), "yesterday"),
        (("paper", "venue_typo"), "x"),  # unknown key
    ],
)
def test_untraceable_entries_are_rejected(path, value):
    data = copy.deepcopy(BASE)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValidationError):
        validate_metafile(data)
