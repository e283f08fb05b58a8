"""Homogeneous batches: one dataset per global batch, identical on every rank, reproducible per epoch."""

from __future__ import annotations

from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler, ConcatDataset, SequentialSampler

from llm_embedder.train.sampler import HomogeneousBatchSampler, global_batches

SIZES = [10, 7, 12, 3]  # the last dataset is smaller than one global batch (2 x 2)


def make_sampler(world: int, per_device: int = 2, seed: int = 5) -> HomogeneousBatchSampler:
    datasets = [list(range(n)) for n in SIZES]
    children = [BatchSampler(SequentialSampler(d), per_device, drop_last=True) for d in datasets]
    return HomogeneousBatchSampler(ConcatDataset(datasets), children, seed=seed, per_device_batch_size=per_device,
                                   world_size=world)


def test_every_global_batch_comes_from_one_dataset_and_sizes_are_truncated() -> None:
    batches = global_batches(SIZES, per_device_batch_size=2, world_size=2, seed=1, epoch=0)
    counts = [sum(1 for d, _ in batches if d == i) for i in range(len(SIZES))]
    assert counts == [n // 4 for n in SIZES]  # truncated to multiples of per_device x world
    for dataset, indices in batches:
        assert len(indices) == 4 and len(set(indices)) == 4 and max(indices) < SIZES[dataset]
    assert len({d for d, _ in batches}) > 1  # the pool mixes datasets across steps


def test_ranks_see_the_same_dataset_at_every_step() -> None:
    sampler = make_sampler(world=2)
    shards = [list(BatchSamplerShard(sampler, num_processes=2, process_index=r, even_batches=False))
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(sampler) // 2
    for b0, b1 in zip(*shards, strict=True):
        assert sampler.dataset_of(b0) == sampler.dataset_of(b1)  # same dataset (hence task) on both ranks
        assert not set(b0) & set(b1)  # different examples
        assert {sampler.dataset_of([i]) for i in b0 + b1} == {sampler.dataset_of(b0)}
    all_indices = [i for shard in shards for batch in shard for i in batch]
    assert len(all_indices) == len(set(all_indices))  # no example twice in an epoch


def test_order_depends_on_seed_and_epoch_only() -> None:
    a, b = make_sampler(world=2), make_sampler(world=2)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    assert list(make_sampler(world=2, seed=6)) != list(b)


def test_a_repeated_dataset_counts_twice() -> None:
    datasets = [list(range(8)), list(range(8)), list(range(8))]  # 0 and 1 are the same file listed twice
    children = [BatchSampler(SequentialSampler(d), 2, drop_last=True) for d in datasets]
    sampler = HomogeneousBatchSampler(ConcatDataset(datasets), children, seed=0, per_device_batch_size=2)
    per_dataset = [0, 0, 0]
    for batch in sampler:
        per_dataset[sampler.dataset_of(batch)] += 1
    assert per_dataset == [4, 4, 4] and len(sampler) == 12


def test_interleaving_spreads_each_dataset_over_the_epoch() -> None:
    # equal sizes: every run of one batch per dataset holds each dataset once, in a seeded random order
    batches = global_batches([32] * 6, per_device_batch_size=4, world_size=1, seed=0, epoch=0)
    datasets = [d for d, _ in batches]
    rounds = [datasets[i:i + 6] for i in range(0, len(datasets), 6)]
    assert all(sorted(r) == list(range(6)) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # not one fixed rotation
    # unequal sizes: the 4 batches of the small dataset fall one into each quarter of the epoch
    batches = global_batches([64, 16], per_device_batch_size=4, world_size=1, seed=3, epoch=1)
    places = [i for i, (d, _) in enumerate(batches) if d == 1]
    assert [p * 4 // len(batches) for p in places] == [0, 1, 2, 3]


def test_without_interleaving_the_pool_is_one_shuffle() -> None:
    kwargs = dict(per_device_batch_size=4, world_size=1, seed=0, epoch=0)
    shuffled = global_batches([32] * 6, interleave=False, **kwargs)
    interleaved = global_batches([32] * 6, **kwargs)
    assert sorted(map(str, shuffled)) == sorted(map(str, interleaved))  # the same batches, another order
    datasets = [d for d, _ in shuffled]
    rounds = [sorted(datasets[i:i + 6]) for i in range(0, len(datasets), 6)]
    assert any(r != list(range(6)) for r in rounds)  # seed 0 bunches some dataset's batches
