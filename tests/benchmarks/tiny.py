"""A benchmark small enough to compute its ground truth inside a test (seconds)."""

from datatrace.benchmarks import Benchmark
from datatrace.benchmarks.recipes import fit_adam_full_batch
from testable_tasks import blobs, mlp

STEPS, LR = 30, 0.05


def tiny_load():
    return blobs(60), blobs(8, seed=1)


def tiny_checkpoints(data, seed):
    x, y = data.tensors()
    return fit_adam_full_batch(mlp(seed=seed), x, y, STEPS, LR, 0.0, n_checkpoints=2), [LR, LR]


def tiny_train(data, seed):
    return tiny_checkpoints(data, seed)[0][-1]


TINY = Benchmark(
    name="tiny",
    version=1,
    description="Gaussian blobs, 60 train / 8 queries, MLP 5-8-3",
    load=tiny_load,
    train_fn=tiny_train,
    n_subsets=6,
    seeds_per_subset=2,
    common_random_numbers=True,
    checkpoints=tiny_checkpoints,
)
