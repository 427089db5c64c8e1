"""The metafile schema accepts the repository's metafiles and rejects what would make a
number untraceable."""

import copy

import pytest
from pydantic import ValidationError

from zoo.ledger import validate_metafile
from zoo.recipe_index import papers

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
    assert {"clip", "slip"} <= {paper.slug for paper in found}
    for paper in found:
        meta = validate_metafile(paper.folder / "metafile.yaml")
        assert meta.reported or meta.reported_unavailable
        # every reproduced and reported number names a recipe of its paper
        recipes = {path.name for path in paper.recipes}
        assert {r.recipe for r in meta.reproduced} <= recipes, paper.slug
        assert {r.recipe.split(" ")[0] for r in meta.reported} <= recipes, paper.slug


def test_no_reported_numbers_needs_the_reason():
    data = copy.deepcopy(BASE)
    data["reported"] = []
    with pytest.raises(ValidationError, match="reported_unavailable"):
        validate_metafile(data)
    data["reported_unavailable"] = "the paper's tables could not be checked from any source"
    assert validate_metafile(data).reported == []
    data["reported_unavailable"] = "too short"
    with pytest.raises(ValidationError):
        validate_metafile(data)
    both = copy.deepcopy(BASE) | {"reported_unavailable": "a reason that is long enough"}
    with pytest.raises(ValidationError, match="no reported numbers"):
        validate_metafile(both)


CLAIM = {
    "dataset": "8 benchmarks",
    "metric": "zero-shot mIoU",
    "claim": "improves over the baseline by a large margin",
    "recipe": "r.yaml",
    "source": "abstract",
}


def test_a_claim_stands_for_a_number_only_with_the_reason():
    data = copy.deepcopy(BASE) | {"reported": [CLAIM]}
    with pytest.raises(ValidationError, match="only claims"):
        validate_metafile(data)
    data["reported_unavailable"] = "the paper's tables could not be checked from any source"
    meta = validate_metafile(data)
    assert meta.reported[0].value is None and meta.reported[0].claim.startswith("improves")
    # a claim and a number in one entry, or neither, is ambiguous
    for entry in ({**CLAIM, "value": 1.0}, {k: v for k, v in CLAIM.items() if k != "claim"}):
        with pytest.raises(ValidationError, match="value .a number. or a claim"):
            validate_metafile(copy.deepcopy(BASE) | {"reported": [entry]})
    # numbers next to claims: the reason for "no number" no longer applies
    mixed = copy.deepcopy(data)
    mixed["reported"].append(BASE["reported"][0])
    with pytest.raises(ValidationError, match="no reported numbers"):
        validate_metafile(mixed)


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


@pytest.mark.parametrize(
    "values, mean, std, valid",
    [
        ([1.0, 2.0, 3.0], 2.0, 1.0, True),  # sample std (n - 1): sqrt(2 / 2) = 1
        ([1.0, 2.0, 3.0], 2.0, 0.8165, False),  # population std sqrt(2 / 3) is not the ledger's
        ([1.0, 2.0, 3.0], 2.0004, 1.0004, True),  # stored rounded to 4 decimals
        ([1.0, 2.0, 3.0], 2.002, 1.0, False),
        ([12.963, 16.4815, 20.1852], 16.5432, 3.6115, True),  # the CLIP tiny zero-shot record
        ([5.0], 5.0, 0.0, True),  # one seed: std 0
        ([5.0], 5.0, 1.0, False),
    ],
)
def test_summary_must_be_mean_and_sample_std_of_the_values(values, mean, std, valid):
    data = copy.deepcopy(BASE)
    data["reproduced"][0].update(values=values, mean=mean, std=std, seeds=list(range(len(values))))
    if valid:
        record = validate_metafile(data).reproduced[0]
        assert (record.mean, record.std) == (mean, std)
    else:
        with pytest.raises(ValidationError, match="do not match the values"):
            validate_metafile(data)
