"""The results ledger: the schema of ``recipes/<paper>/metafile.yaml``.

Reported numbers carry their source; reproduced numbers carry what makes them checkable
(value per seed, mean ± std, scale, command, commit, date, hardware). Validated with
pydantic; ``zoo reproduce --append`` validates before it writes, and a test validates every
metafile in the repository.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PaperInfo(_Strict):
    title: str
    arxiv: str | None = None
    venue: str | None = None
    code: str | None = None
    code_commit: str | None = None
    authors: str | None = None


class ReportedResult(_Strict):
    """A number as the paper (or its official code) reports it, with where it comes from.

    A paper whose checkable sources state only a qualitative result (an abstract's "improves
    over the baseline by a large margin") lists it as a ``claim`` instead of a ``value``: the
    claim, in the project's words, is what a reproduction is read against. Exactly one of
    ``value`` and ``claim`` is set."""

    dataset: str
    metric: str
    value: float | None = None
    claim: str | None = Field(default=None, min_length=20)
    recipe: str
    source: str = Field(min_length=1)
    setting: str | None = None
    pretrain_data: str | None = None
    backbone: str | None = None
    epochs: int | None = None

    @model_validator(mode="after")
    def _number_or_claim(self) -> ReportedResult:
        if (self.value is None) == (self.claim is None):
            raise ValueError("a reported result has a value (a number) or a claim, not both")
        return self


class ReproducedResult(_Strict):
    """A number produced in this zoo by ``zoo reproduce`` (never typed by hand).

    ``shots``: the shot count K of a few-shot sweep (``zoo reproduce --shots``); the values
    are then the seeds' results at K shots per class. Unset for other recipes."""

    recipe: str
    metric: str
    mean: float
    std: float = Field(ge=0)
    values: list[float] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    scale: str = Field(min_length=1)
    command: str = Field(pattern=r"^python -m zoo reproduce ")
    commit: str | None = Field(pattern=r"^[0-9a-f]{40}$")
    dirty: bool
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    hardware: str
    zoo_version: str | None = None
    config_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    shots: int | None = None
    #: ``zoo fit`` overrides given to ``zoo reproduce`` after ``--`` (e.g. a label fraction
    #: of a sweep): the entry's setting differs from the recipe file by these.
    overrides: list[str] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ReproducedResult:
        if len(self.values) != len(self.seeds):
            raise ValueError(f"{len(self.values)} values for {len(self.seeds)} seeds")
        mean = statistics.fmean(self.values)
        std = statistics.stdev(self.values) if len(self.values) > 1 else 0.0
        # values are stored rounded to 4 decimals
        if abs(mean - self.mean) > 1e-3 or abs(std - self.std) > 1e-3:
            raise ValueError(
                f"mean/std {self.mean}/{self.std} do not match the values {self.values}"
            )
        return self


class Metafile(_Strict):
    """``reported`` lists the paper's numbers. A paper with no number that can be checked
    (only a claim, or numbers in a PDF no source here confirms) lists its claims, if any, and
    says in ``reported_unavailable`` why no number is listed, so the gap is stated rather than
    papered over."""

    paper: PaperInfo
    reported: list[ReportedResult] = Field(default_factory=list)
    reported_unavailable: str | None = Field(default=None, min_length=20)
    reproduced: list[ReproducedResult] = Field(default_factory=list)
    #: What the reproduced numbers say about the paper's claim, whichever way they point
    #: (written by whoever ran them; the numbers themselves stay in ``reproduced``).
    reading: str | None = None
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _reported_or_why_not(self) -> Metafile:
        if not self.reported and not self.reported_unavailable:
            raise ValueError(
                "reported: list the paper's numbers (with their source), or say in "
                "reported_unavailable why none can be listed"
            )
        numbers = [r for r in self.reported if r.value is not None]
        if numbers and self.reported_unavailable:
            raise ValueError("reported_unavailable is for a metafile with no reported numbers")
        if self.reported and not numbers and not self.reported_unavailable:
            raise ValueError(
                "reported lists only claims: say in reported_unavailable why no number is listed"
            )
        return self


def validate_metafile(data: dict[str, Any] | Path) -> Metafile:
    """Parse and validate a metafile (a path or its loaded YAML); raises ``ValueError``."""
    if isinstance(data, Path):
        data = yaml.safe_load(data.read_text()) or {}
    return Metafile.model_validate(data)
