"""Epoch orders, class-balanced sampling and the loader that feeds ``predilect.training.loop.fit``.

One rule makes single-process, multi-process (DDP) and resumed runs see the same data:
every process computes the same *global* order for an epoch from ``(seed, epoch)`` alone, cut
into global batches of ``batch_size``; rank ``r`` of ``w`` takes positions ``r, r + w, ...``
of each global batch (as ``DistributedSampler`` shards), so the union of the ranks' batch
``k`` is exactly the single-process batch ``k``, and a resumed run skips whole global batches.
Training orders drop the last incomplete global batch so every step has the same size.

``make_loader`` returns an ``EpochLoader``: an iterable of collated batches with ``len`` (batches
per process) and ``skip_batches`` (used by ``fit`` to resume mid-epoch without reading the
skipped images). Workers get the epoch with the dataset, so augmentation draws depend on
``(seed, epoch, index)`` only, never on which worker served an item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from predilect.errors import ConfigError

SAMPLING_MODES: tuple[str, ...] = ("shuffle", "balanced", "sequential")


def class_balanced_weights(targets: np.ndarray) -> np.ndarray:
    """Per-item sampling weights that give every class (and ``normal``) the same expected share.

    An item weighs ``1 / n_c`` of its rarest class ``c`` (items without any label count as
    the class ``normal``), so multi-label items are drawn for their rarest finding.
    """
    positives = targets > 0.5
    counts = positives.sum(axis=0).astype(np.float64)
    normal = ~positives.any(axis=1)
    per_class = np.where(positives, 1.0 / np.maximum(counts, 1.0), 0.0)
    weights = per_class.max(axis=1, initial=0.0)
    weights[normal] = 1.0 / max(int(normal.sum()), 1)
    return weights / weights.sum()


def epoch_order(n: int, *, sampling: str, seed: int, epoch: int, targets: np.ndarray | None = None) -> np.ndarray:
    """The global order of item indices for ``epoch`` (``n`` draws; with replacement when balanced)."""
    if sampling not in SAMPLING_MODES:
        raise ConfigError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    if sampling == "sequential":
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch, 0x5A])
    if sampling == "shuffle":
        return rng.permutation(n).astype(np.int64)
    if targets is None:
        raise ConfigError("balanced sampling needs the dataset's label matrix (dataset.targets)")
    return rng.choice(n, size=n, replace=True, p=class_balanced_weights(targets)).astype(np.int64)


def distributed_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group; ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _EpochView(Dataset):
    """The dataset as seen in one epoch: items come from ``dataset.get(index, epoch=...)``."""

    def __init__(self, dataset: Any, epoch: int) -> None:
        self.dataset, self.epoch = dataset, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        get = getattr(self.dataset, "get", None)
        return get(index, epoch=self.epoch) if get is not None else self.dataset[index]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode; the main process computes


class EpochLoader:
    """The batches of one epoch for this process; see the module docstring."""

    def __init__(
        self,
        dataset: Any,
        order: np.ndarray,
        *,
        batch_size: int,
        rank: int,
        world: int,
        workers: int,
        epoch: int,
        seed: int,
        pin_memory: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        mp_context: str | None = None,
    ) -> None:
        self.dataset, self.order, self.epoch = dataset, order, epoch
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.workers, self.seed, self.pin_memory = workers, seed, pin_memory
        self.collate_fn, self.mp_context = collate_fn, mp_context
        self.start_batch = 0

    @property
    def per_rank_batch(self) -> int:
        return self.batch_size // self.world

    def __len__(self) -> int:
        """Batches this process yields in a whole epoch (skipping does not change it)."""
        return -(-len(self.order) // self.batch_size)

    def skip_batches(self, count: int) -> None:
        """Start the epoch after ``count`` global batches (a resumed run); no skipped image is read."""
        if not 0 <= count <= len(self):
            raise ValueError(f"cannot skip {count} of {len(self)} batches")
        self.start_batch = count

    def rank_indices(self) -> np.ndarray:
        """Item indices this process reads, in order, from ``start_batch`` on."""
        rest = self.order[self.start_batch * self.batch_size :]
        return rest[self.rank :: self.world]

    def __iter__(self) -> Iterator[Any]:
        loader = DataLoader(
            _EpochView(self.dataset, self.epoch),
            batch_size=self.per_rank_batch,
            sampler=self.rank_indices().tolist(),
            num_workers=self.workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            worker_init_fn=_worker_init if self.workers else None,
            # Worker base seeds come from this generator, not from the global torch RNG, so
            # iterating a loader never changes the model's random stream (dropout, ...).
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch),
            multiprocessing_context=self.mp_context if self.workers else None,
        )
        return iter(loader)


def make_loader(
    dataset: Any,
    *,
    batch_size: int,
    workers: int = 0,
    sampling: str = "shuffle",
    seed: int = 0,
    epoch: int = 0,
    distributed: bool = False,
    drop_last: bool | None = None,
    pin_memory: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    mp_context: str | None = None,
) -> EpochLoader:
    """A loader over ``dataset`` for ``epoch``.

    ``batch_size`` is GLOBAL: images per step summed over all processes (each of ``w`` ranks
    loads ``batch_size / w``), so one config means the same optimisation on 1 or N processes.
    ``sampling``: ``shuffle`` (a permutation per epoch), ``balanced`` (class-balanced draws with
    replacement from ``dataset.targets``) or ``sequential`` (evaluation; with ``distributed``
    the order is padded with its first items to a multiple of the world size -- deduplicate by
    ``index``). ``drop_last`` defaults to true for training orders, false for sequential.
    """
    rank, world = distributed_rank_world() if distributed else (0, 1)
    if distributed and world == 1 and not torch.distributed.is_initialized():
        raise ConfigError("distributed=True needs an initialised process group (run under torchrun)")
    if batch_size < 1 or batch_size % world:
        raise ConfigError(f"batch_size {batch_size} must be a positive multiple of the {world} processes")
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    targets = getattr(dataset, "targets", None)
    order = epoch_order(len(dataset), sampling=sampling, seed=seed, epoch=epoch, targets=targets)
    if drop_last if drop_last is not None else sampling != "sequential":
        whole = len(order) // batch_size * batch_size
        if whole == 0:
            raise ConfigError(f"batch_size {batch_size} exceeds the {len(order)} items of the dataset")
        order = order[:whole]
    elif len(order) % world:
        order = np.concatenate([order, order[: world - len(order) % world]])
    return EpochLoader(
        dataset,
        order,
        batch_size=batch_size,
        rank=rank,
        world=world,
        workers=workers,
        epoch=epoch,
        seed=seed,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
        mp_context=mp_context,
    )
