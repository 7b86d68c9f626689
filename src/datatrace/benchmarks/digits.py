"""Benchmarks on scikit-learn's bundled digits (1,797 8×8 images, 10 classes; no download).

Split (fixed, seed 0 permutation): 1,000 training images, 100 query images from the remaining 797, pixels in [0, 1].
Both recipes are deterministic given the seed passed to ``train_fn``.
"""

from __future__ import annotations

from torch import nn

from ..data import Data
from .base import Benchmark
from .recipes import fit_adam_full_batch, fit_lbfgs, seeded, split

N_TRAIN, N_QUERY = 1000, 100


def digits_split(n_train: int = N_TRAIN, n_query: int = N_QUERY) -> tuple[tuple, tuple]:
    """``((X_train, y_train), (X_query, y_query))`` as float32 / int64 tensors."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return split(x / 16.0, y, n_train, n_query)


def logreg(seed: int = 0) -> nn.Module:
    return seeded(lambda: nn.Linear(64, 10), seed)


def mlp(seed: int = 0, hidden: int = 64) -> nn.Module:
    return seeded(lambda: nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)), seed)


def train_logreg(data: Data, seed: int, l2: float = 1e-3) -> nn.Module:
    """L2-regularised multinomial logistic regression, trained to convergence with L-BFGS (convex: seed-free)."""
    x, y = data.tensors()
    return fit_lbfgs(logreg(seed), x, y, l2)


def train_mlp(data: Data, seed: int, steps: int = 300, lr: float = 1e-2, l2: float = 1e-3) -> nn.Module:
    """MLP 64-64-10 trained with full-batch Adam; the seed sets the initialisation."""
    return train_mlp_checkpoints(data, seed, 1, steps, lr, l2)[-1]


def train_mlp_checkpoints(
    data: Data, seed: int, n_checkpoints: int, steps: int = 300, lr: float = 1e-2, l2: float = 1e-3
) -> list[nn.Module]:
    """The :func:`train_mlp` run, keeping a copy of the model every ``steps / n_checkpoints`` steps (last = final)."""
    x, y = data.tensors()
    return fit_adam_full_batch(mlp(seed), x, y, steps, lr, l2, n_checkpoints)


def mlp_checkpoints(data: Data, seed: int) -> tuple[list[nn.Module], list[float]]:
    """Three checkpoints of the :func:`train_mlp` run and the (constant) Adam learning rate after each, for TracIn."""
    return train_mlp_checkpoints(data, seed, 3), [1e-2] * 3


#: Ground truth of version 2: two seeds per subset (for the noise ceiling) with common random numbers.
GROUND_TRUTH = {"n_subsets": 64, "fraction": 0.5, "seeds_per_subset": 2, "common_random_numbers": True}

DIGITS_LOGREG = Benchmark(
    name="digits-logreg",
    version=2,
    description="sklearn digits, 1,000 train / 100 queries, L2 logistic regression (L-BFGS)",
    load=digits_split,
    train_fn=train_logreg,
    **GROUND_TRUTH,
)

DIGITS_MLP = Benchmark(
    name="digits-mlp",
    version=2,
    description="sklearn digits, 1,000 train / 100 queries, MLP 64-64-10 (full-batch Adam, 300 steps)",
    load=digits_split,
    train_fn=train_mlp,
    checkpoints=mlp_checkpoints,
    **GROUND_TRUTH,
)
