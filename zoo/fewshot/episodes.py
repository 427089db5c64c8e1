"""Episodic (N-way K-shot) sampling over a few-shot training set, for SgVA-CLIP.

SgVA-CLIP (Peng et al., IEEE TMM 2024; github.com/FannierPeng/SgVA-CLIP ``main.py``
``meta_train`` with the data loaders' ``FewShotDataloader``, e.g. ``data/imagenet.py``)
trains on *episodes* drawn from the K-shot training set rather than on shuffled batches:

- an epoch has ``C // way`` episodes (``epoch_size = episodes_per_batch · n_classes //
  train_way`` with one episode per batch; 1000 // 50 = 20 for ImageNet);
- each episode draws ``way`` distinct classes uniformly (``random.sample``), independently
  of the other episodes (an epoch need not visit every class), and, for each of them,
  ``shots + queries`` distinct images of that class (``random.sample`` again);
- **support and query in the official training episodes are the same images**: the
  training loader is built with ``nTestNovel=0``, so an episode has no separate queries and
  its ``load_function`` returns the exemplars twice (``Xe, Ye, RYe, Xe, Ye, RYe``); the
  ``--train-query 50`` flag is not read when training. With the 16-shot set and
  ``--train-shot 16`` the support is the whole K-shot pool of each drawn class. Here
  ``queries=0`` (the default) is that behaviour: the batch is the support and the losses
  use the same images as queries; ``queries > 0`` draws separate queries (each class then
  needs ``shots + queries`` images in the pool);
- the official loader reseeds Python's ``random`` with ``epoch + 21`` at each epoch; here the
  plan of epoch ``e`` is a function of ``(seed, e)`` alone (a private NumPy generator).

:class:`EpisodeSampler` yields the episodes of an epoch back to back as flat dataset indices
(support block then query block, classes in ascending label order as the official
``sorted(Knovel)``); a ``DataLoader`` with ``batch_size = episode_size`` turns each episode
into one batch. It is a :class:`zoo.data.resumable.EpochSampler`, so
:class:`zoo.data.resumable.ResumableDataLoader` resumes it exactly mid-epoch and Lightning
calls its ``set_epoch``. Its indices are :class:`zoo.data.samples.SampleKey` objects whose
``epoch`` field is the *global episode number*, so an image drawn in two episodes of one
epoch gets two different augmentations. :class:`EpisodicBatchSampler` is the same plan as a
batch sampler (one list of indices per episode) for plain ``DataLoader(batch_sampler=…)``.

:class:`EpisodicFewShotDataModule` is the few-shot protocol's
:class:`~zoo.data.fewshot_datamodule.FewShotDataModule` with an episodic training loader;
its batches carry ``"support"`` ((B,) bool), True on the support block.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler

from zoo.data.fewshot_datamodule import FewShotDataModule
from zoo.data.resumable import EpochSampler, ResumableDataLoader, global_seed
from zoo.data.samples import SampleKey

log = logging.getLogger("zoo.data")


class EpisodeSampler(EpochSampler):
    """The episodes of an epoch, back to back, as flat dataset indices (see module docstring).

    Args:
        labels: the class label of every dataset index (the K-shot training set).
        way: classes per episode (N); at most the number of classes.
        shots: support images per class and episode (K).
        queries: query images per class and episode; 0: the support doubles as the queries
            (the official training episodes).
        episodes: episodes per epoch; ``None``: ``C // way`` (the official ``epoch_size``).
        seed: with the epoch, the only source of randomness.
        num_replicas: distributed training: the number of ranks R; rank r takes episodes
            r, r + R, … of the epoch's plan (padded by wrapping around so every rank has the
            same count).
        rank: this process's rank r.
    """

    def __init__(
        self,
        labels: Sequence[int] | torch.Tensor | np.ndarray,
        way: int,
        shots: int,
        queries: int = 0,
        episodes: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        super().__init__(labels, seed=seed, shuffle=False, num_replicas=num_replicas, rank=rank)
        self.classes = np.unique(labels)
        if way < 1 or shots < 1 or queries < 0:
            raise ValueError(
                f"episodes need way >= 1 and shots >= 1 and queries >= 0; got way {way}, "
                f"shots {shots}, queries {queries}"
            )
        if way > len(self.classes):
            raise ValueError(
                f"episode way {way} exceeds the {len(self.classes)} classes of the training set"
            )
        self.pools = [np.flatnonzero(labels == c) for c in self.classes]
        needed = shots + queries
        small = [(int(c), len(p)) for c, p in zip(self.classes, self.pools) if len(p) < needed]
        if small:
            c, n = small[0]
            raise ValueError(
                f"an episode draws shots + queries = {shots} + {queries} = {needed} images per "
                f"class, but class {c} has only {n} in the training set ({len(small)} classes "
                "are short); lower the shots, or use queries: 0 (the support images are also "
                "the queries, as in the official SgVA-CLIP training episodes)"
            )
        self.way, self.shots, self.queries = int(way), int(shots), int(queries)
        self.episodes = int(episodes) if episodes is not None else len(self.classes) // way
        if self.episodes < 1:
            raise ValueError(f"episodes per epoch must be >= 1, got {self.episodes}")
        self.per_rank = -(-self.episodes // self.num_replicas)  # ceil

    @property
    def episode_size(self) -> int:
        """Indices per episode: ``way · (shots + queries)``."""
        return self.way * (self.shots + self.queries)

    @property
    def support_size(self) -> int:
        return self.way * self.shots

    def plan(self, epoch: int) -> list[np.ndarray]:
        """Every episode of ``epoch`` (all ranks), each ``[support | query]`` indices with
        classes in ascending order; a function of ``(seed, epoch)`` only."""
        rng = np.random.default_rng([int(self.seed), int(epoch)])
        episodes = []
        for _ in range(self.episodes):
            chosen = np.sort(rng.choice(len(self.classes), self.way, replace=False))
            drawn = np.stack(
                [
                    rng.choice(self.pools[c], self.shots + self.queries, replace=False)
                    for c in chosen
                ]
            )  # (way, shots + queries)
            episodes.append(np.concatenate([drawn[:, : self.shots], drawn[:, self.shots :]], None))
        return episodes

    def rank_episodes(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """This rank's ``(global episode number, indices)`` for ``epoch``."""
        plan = self.plan(epoch)
        ids = [(self.rank + k * self.num_replicas) % self.episodes for k in range(self.per_rank)]
        return [(epoch * self.episodes + i, plan[i]) for i in ids]

    def __iter__(self) -> Iterator[SampleKey]:
        epoch, skip = self.epoch, self._skip
        self._skip = 0
        keys = [
            SampleKey(int(i), self.seed, number)
            for number, episode in self.rank_episodes(epoch)
            for i in episode
        ]
        return iter(keys[skip:])

    def __len__(self) -> int:
        return self.per_rank * self.episode_size


class EpisodicBatchSampler(BatchSampler):
    """One list of dataset indices per episode (``DataLoader(dataset, batch_sampler=…)``);
    the arguments are :class:`EpisodeSampler` 's. ``set_epoch`` selects the epoch's plan
    (Lightning calls it through ``batch_sampler.sampler``)."""

    def __init__(
        self,
        labels: Sequence[int] | torch.Tensor | np.ndarray,
        way: int,
        shots: int,
        queries: int = 0,
        episodes: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        sampler = EpisodeSampler(labels, way, shots, queries, episodes, seed, num_replicas, rank)
        super().__init__(sampler, batch_size=sampler.episode_size, drop_last=False)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


class EpisodeCollate:
    """Collate an episode's samples with ``base`` and add ``"support"``: (B,) bool, True on
    the first ``support_size`` samples (the support block; with no separate queries every
    sample is support). Picklable for DataLoader workers."""

    def __init__(self, base: Any, support_size: int):
        self.base, self.support_size = base, int(support_size)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.base(samples)
        support = torch.zeros(len(samples), dtype=torch.bool)
        support[: self.support_size] = True
        batch["support"] = support
        return batch


class EpisodicFewShotDataModule(FewShotDataModule):
    """:class:`~zoo.data.fewshot_datamodule.FewShotDataModule` whose training loader yields
    episodes (:class:`EpisodeSampler`) of its K-shot training set; validation, test and the
    evaluation splits are the base's. Batches get ``"support"`` ((B,) bool).

    Args:
        episode_way: N, classes per episode (``None``: all classes, one episode per epoch).
            The official code advises a divisor of the class count (50 for ImageNet's 1000);
            more than the class count uses all classes, with a warning.
        episode_shots: support images per class (``None``: the data's ``shots``, i.e. the
            whole K-shot pool of each drawn class, as the official training episodes).
        episode_queries: separate query images per class (0: the support images are the
            queries, as the official training episodes; > 0 needs ``episode_shots +
            episode_queries`` images per class in the K-shot pool).
        episodes_per_epoch: ``None``: ``C // N`` (the official ``epoch_size``).

    The episodes are a function of ``seed_everything``'s seed and the epoch; a resumed run
    continues mid-epoch with the same episodes (:class:`zoo.data.resumable.ResumableDataLoader`).
    Distributed training shards the episodes by rank (the sampler is a ``DistributedSampler``,
    which Lightning keeps). Every other argument is the base's; ``batch_size`` is then the
    batch size of the plain (validation) loaders only.
    """

    def __init__(
        self,
        *,
        episode_way: int | None = None,
        episode_shots: int | None = None,
        episode_queries: int = 0,
        episodes_per_epoch: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        for key, value in (
            ("episode_way", episode_way),
            ("episode_shots", episode_shots),
            ("episodes_per_epoch", episodes_per_epoch),
        ):
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise ValueError(f"data.{key} must be a positive integer or null, got {value!r}")
        if isinstance(episode_queries, bool) or int(episode_queries) < 0:
            raise ValueError(f"data.episode_queries must be >= 0, got {episode_queries!r}")
        if episode_shots is None and self.shots <= 0:
            raise ValueError(
                "data.shots <= 0 takes every training image: set data.episode_shots (support "
                "images per class in an episode)"
            )
        self.episode_way, self.episode_shots = episode_way, episode_shots
        self.episode_queries, self.episodes_per_epoch = int(episode_queries), episodes_per_epoch

    def episode_sampler(self) -> EpisodeSampler:
        """The training set's :class:`EpisodeSampler` (seed: ``seed_everything``'s)."""
        if self.train_set is None:
            self.setup("fit")
        labels = self.train_set.labels  # type: ignore[union-attr]
        classes = len(torch.unique(torch.as_tensor(labels)))
        way = self.episode_way or classes
        if way > classes:
            # the official README's advice when the way does not fit: all the classes
            log.warning(
                "data.episode_way %d exceeds the %d classes of the training set: episodes "
                "use all %d classes",
                way,
                classes,
                classes,
            )
            way = classes
        trainer = self.trainer
        shard = (trainer.distributed_sampler_kwargs if trainer is not None else None) or {}
        return EpisodeSampler(
            labels,
            way=way,
            shots=self.episode_shots or self.shots,
            queries=self.episode_queries,
            episodes=self.episodes_per_epoch,
            seed=global_seed(),
            **shard,
        )

    def train_dataloader(self) -> ResumableDataLoader:
        sampler = self.episode_sampler()
        loader = ResumableDataLoader(
            self.train_set,
            sampler=sampler,
            batch_size=sampler.episode_size,
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=EpisodeCollate(self.collate_fn, sampler.support_size),
            # a private generator: worker seeds never come from the global RNG
            generator=torch.Generator().manual_seed(sampler.seed),
        )
        if self._train_loader_state is not None:
            loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        self._train_loader = loader
        return loader
