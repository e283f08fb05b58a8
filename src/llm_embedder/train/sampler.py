"""Homogeneous batches: every global batch from one dataset, the same on every rank (recipe §2.4).

Plugged into ``SentenceTransformerTrainer`` as its multi-dataset batch sampler. Per epoch, for each dataset
(one training file; a file listed twice is two datasets): shuffle its indices with an RNG seeded by
(seed, epoch, dataset), truncate to a multiple of ``per_device_batch_size × world_size``, cut into global
batches; then put the global batches of all datasets in one order. By default that order interleaves the
datasets: the k-th of a dataset's n batches sits at a random point of the k-th n-th of the epoch, so every
task is trained on evenly from the first step to the last (with equal sizes, each run of one batch per
dataset holds every dataset once). ``interleave=False`` shuffles the pool instead, as the reference code
does; with few steps that can leave a task's batches bunched where the learning rate has decayed (seed 0 of
the demo gave icl 13% of the summed learning rate instead of 17%).

Each global batch is yielded as ``world_size`` consecutive per-device batches (rank 0's slice first).
accelerate's ``BatchSamplerShard`` hands batch ``j`` to rank ``j % world_size``, so at every step rank r
trains on slice r of the same global batch: all ranks see the same dataset, hence the same task and loss.
The order depends only on (seed, epoch), which makes resuming (skipping the first batches) exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate

import numpy as np
from sentence_transformers.base.sampler import MultiDatasetDefaultBatchSampler
from torch.utils.data import BatchSampler, ConcatDataset


def global_batches(
    sizes: list[int], per_device_batch_size: int, world_size: int, seed: int, epoch: int, interleave: bool = True
) -> list[tuple[int, list[int]]]:
    """The epoch's global batches as (dataset index, local indices into that dataset), in training order."""
    global_size = per_device_batch_size * world_size
    pool: list[tuple[int, list[int]]] = []
    places: list[float] = []  # where in the epoch each batch goes when interleaving, in [0, 1)
    for dataset_index, size in enumerate(sizes):
        rng = np.random.default_rng([seed, epoch, dataset_index])
        order = rng.permutation(size)
        count = size // global_size
        jitter = np.random.default_rng([seed, epoch, dataset_index, 1]).random(count)
        for k in range(count):
            pool.append((dataset_index, order[k * global_size:(k + 1) * global_size].tolist()))
            places.append((k + jitter[k]) / count)
    if interleave:
        pool_order = np.argsort(places, kind="stable")
    else:
        pool_order = np.random.default_rng([seed, epoch, len(sizes), 7919]).permutation(len(pool))
    return [pool[i] for i in pool_order]


class HomogeneousBatchSampler(MultiDatasetDefaultBatchSampler):
    """Yield per-device batches such that each step's batches on all ranks come from one dataset."""

    def __init__(
        self,
        dataset: ConcatDataset,
        batch_samplers: list[BatchSampler],
        generator=None,
        seed: int = 0,
        *,
        per_device_batch_size: int | None = None,
        world_size: int = 1,
        interleave: bool = True,
    ) -> None:
        super().__init__(dataset, batch_samplers, generator=generator, seed=seed)
        self.per_device_batch_size = per_device_batch_size or batch_samplers[0].batch_size
        self.world_size = world_size
        self.interleave = interleave
        self.sizes = [len(d) for d in dataset.datasets]
        self.offsets = [0, *accumulate(self.sizes)]
        self.batch_size = self.per_device_batch_size
        self.drop_last = True

    def dataset_of(self, batch: list[int]) -> int:
        """Which dataset a yielded batch (of ConcatDataset indices) belongs to."""
        first = batch[0]
        return max(i for i, offset in enumerate(self.offsets[:-1]) if offset <= first)

    def __iter__(self) -> Iterator[list[int]]:
        per_device = self.per_device_batch_size
        for dataset_index, indices in global_batches(
            self.sizes, per_device, self.world_size, self.seed or 0, self.epoch, self.interleave
        ):
            offset = self.offsets[dataset_index]
            for rank in range(self.world_size):
                yield [offset + i for i in indices[rank * per_device:(rank + 1) * per_device]]

    def __len__(self) -> int:
        global_size = self.per_device_batch_size * self.world_size
        return sum(size // global_size for size in self.sizes) * self.world_size


def mixed_batches(total: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's batches for the no-homogeneous ablation: one shuffle of all datasets' concatenated indices."""
    order = np.random.default_rng([seed, epoch, 104729]).permutation(total)
    usable = (total // batch_size) * batch_size
    return [order[start:start + batch_size].tolist() for start in range(0, usable, batch_size)]


class MixedBatchSampler(HomogeneousBatchSampler):
    """Ablation "w/o homogeneous batching": batches drawn uniformly from the concatenation, so a batch mixes
    tasks (the trainer computes the loss per task subgroup). Single process only."""

    def __iter__(self) -> Iterator[list[int]]:
        yield from mixed_batches(sum(self.sizes), self.per_device_batch_size, self.seed or 0, self.epoch)

    def __len__(self) -> int:
        return sum(self.sizes) // self.per_device_batch_size
