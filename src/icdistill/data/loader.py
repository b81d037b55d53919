"""Deterministic, resumable data loading.

Training order: the concatenation of per-epoch permutations, epoch e being
``torch.randperm(n, generator=torch.Generator().manual_seed(seed + e))``. Global iteration i
consumes positions ``[i*G, (i+1)*G)`` of that stream, G = batch_size × world_size; rank r takes
the r-th block of ``batch_size`` positions of each global batch. Every position p also gets an
augmentation seed ``aug_seed(seed, p)``, and the dataset runs its random transforms under that
seed. So what iteration i sees depends only on (seed, i, world_size, batch_size): a run resumed
with ``start_iter=k`` yields exactly what an uninterrupted run yields from iteration k, whatever
the number of worker processes.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError
from ..structures import collate_batch

__all__ = ["TrainSampler", "ShardSampler", "aug_seed_for", "build_train_loader",
           "build_test_loader"]

_MASK64 = (1 << 64) - 1


def aug_seed_for(seed: int, position: int) -> int:
    """Augmentation seed of global stream position ``position``: a splitmix64 hash of
    (seed, position), in [0, 2**63)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(position) + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z >> 1


class TrainSampler(Sampler):
    """Infinite sampler of ``(index, aug_seed)`` for one process.

    Yields, for iterations ``start_iter, start_iter + 1, ...``, the ``batch_size`` items of this
    rank's block of each global batch, in order; a ``DataLoader`` with the same ``batch_size``
    (``drop_last=True``) therefore turns each consecutive group into this rank's batch of one
    iteration.

    Args:
        dataset_size: number of items n (>= 1).
        batch_size: images per process per iteration.
        seed: seed of the permutations and of the augmentation seeds.
        start_iter: first iteration to produce (resume point).
        rank / world_size: this process and the number of processes.
    """

    def __init__(
        self,
        dataset_size: int,
        *,
        batch_size: int,
        seed: int,
        start_iter: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if dataset_size < 1:
            raise DataError("the training set has no images")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        if start_iter < 0:
            raise ValueError(f"start_iter must be >= 0, got {start_iter}")
        self.n = int(dataset_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.start_iter = int(start_iter)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self._perm_epoch = -1
        self._perm: list[int] = []

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def _index_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch != self._perm_epoch:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._perm_epoch = epoch
        return self._perm[offset]

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        """This rank's ``(index, aug_seed)`` items of global iteration ``iteration``."""
        first = iteration * self.global_batch_size + self.rank * self.batch_size
        return [(self._index_at(p), aug_seed_for(self.seed, p))
                for p in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        it = self.start_iter
        while True:
            yield from self.batch(it)
            it += 1


class ShardSampler(Sampler):
    """Finite, sequential sampler over this rank's contiguous shard of ``range(dataset_size)``.

    Shards are as equal as possible (sizes differ by at most one), cover every index exactly
    once over all ranks and keep the data set order.
    """

    def __init__(self, dataset_size: int, *, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        base, extra = divmod(int(dataset_size), int(world_size))
        self.start = rank * base + min(rank, extra)
        self.stop = self.start + base + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def build_train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    start_iter: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Infinite training loader yielding :class:`~icdistill.structures.Batch` objects.

    Batch j of the loader is this rank's share of global iteration ``start_iter + j`` (see the
    module docstring). The dataset must accept ``dataset[(index, aug_seed)]`` (as
    :class:`~icdistill.data.coco.CocoDetection` does). The loader never touches the global torch
    RNG (it has its own generator), so model-side randomness is unaffected by data loading.
    """
    sampler = TrainSampler(len(dataset), batch_size=batch_size, seed=seed,  # type: ignore[arg-type]
                           start_iter=start_iter, rank=rank, world_size=world_size)
    g = torch.Generator()
    g.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        collate_fn=collate_batch,
        persistent_workers=num_workers > 0,
        generator=g,
    )


def build_test_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Finite, sequential loader over this rank's shard (:class:`ShardSampler`) yielding
    :class:`~icdistill.structures.Batch` objects; the last batch may be smaller. Over all ranks
    every image appears exactly once."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = ShardSampler(len(dataset), rank=rank, world_size=world_size)  # type: ignore[arg-type]
    g = torch.Generator()
    g.manual_seed(0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=False,
        num_workers=num_workers,
        collate_fn=collate_batch,
        persistent_workers=False,
        generator=g,
    )
