"""The training data stream: what each iteration sees is a pure function of ``(seed, iteration)``.

Samples are drawn from an endless sequence of shuffled passes over the dataset (like mmseg's
``InfiniteSampler``): global sample position ``p = it * global_batch + j`` is element ``p mod N``
of the permutation of pass ``p // N``, and pass ``e`` is shuffled by a generator seeded with
``(seed, e)``. The dataset item for position ``p`` is produced with Python/NumPy/torch generators
fetched as ``dataset[(index, p)]`` (the dataset's per-item augmentation stream ``p``; see
``fsanet.data.base``) with Python/NumPy/torch global generators seeded from ``sample_seed(seed, p)``
for any code that still draws from them, so random augmentation depends neither on worker processes
nor on where a run was resumed; in a distributed run, rank ``r`` takes slots
``[r * b, (r + 1) * b)`` of every global batch, so ``world_size`` processes see exactly the samples one
process with the same global batch sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fsanet.repro import sample_seed, seeded

__all__ = ["IterationBatchSampler", "SeededDataset", "build_train_loader", "collate_train"]


class IterationBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Yields, for iterations ``start .. max_iters - 1``, this rank's ``[(index, position, seed), ...]``.

    Args:
        num_samples: dataset length N.
        global_batch: samples per iteration summed over all ranks.
        seed: the run's seed.
        start: first iteration to yield (the resume point).
        max_iters: one past the last iteration.
        rank: this process's rank.
        world_size: number of processes; must divide ``global_batch``.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        seed: int,
        start: int,
        max_iters: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < 1:
            raise ValueError("the training set is empty")
        if global_batch % world_size:
            raise ValueError(
                f"train.batch_size={global_batch} is not divisible by the {world_size} processes; "
                "it is the global batch, split evenly across processes"
            )
        self.n, self.global_batch, self.seed = num_samples, global_batch, seed
        self.start, self.max_iters = start, max_iters
        self.per_rank = global_batch // world_size
        self.offset = rank * self.per_rank
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, stream=1))
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).numpy(), epoch
        return self._perm

    def indices(self, it: int) -> list[tuple[int, int, int]]:
        """This rank's ``(dataset index, global sample position, sample seed)`` of iteration ``it``."""
        first = it * self.global_batch + self.offset
        out = []
        for p in range(first, first + self.per_rank):
            epoch, k = divmod(p, self.n)
            out.append((int(self._permutation(epoch)[k]), p, sample_seed(self.seed, p)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for it in range(self.start, self.max_iters):
            yield self.indices(it)

    def __len__(self) -> int:
        return max(self.max_iters - self.start, 0)


class SeededDataset(Dataset):
    """Wraps a dataset: item ``(index, position, seed)`` is ``dataset[(index, position)]``, drawn with the
    global generators seeded by ``seed`` (and restored afterwards)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        index, position, seed = key
        with seeded(seed):
            return self.dataset[(index, position)]


def collate_train(items: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``image`` (B, 3, H, W) and ``label`` (B, H, W); all crops of a batch share one size."""
    sizes = {tuple(it["image"].shape) for it in items}
    if len(sizes) > 1:
        raise ValueError(
            f"training images of one batch differ in size {sorted(sizes)}: set a fixed crop size"
        )
    return torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items]).long()


def build_train_loader(
    dataset: Dataset,
    sampler: IterationBatchSampler,
    num_workers: int,
    seed: int,
    pin_memory: bool = False,
    collate: Callable[[Sequence[dict[str, Any]]], Any] = collate_train,
) -> DataLoader:
    """A DataLoader over ``sampler``; its own generator keeps it from drawing on torch's global RNG.
    ``collate`` batches the items (default: image and label-map stacks)."""
    return DataLoader(
        SeededDataset(dataset),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
