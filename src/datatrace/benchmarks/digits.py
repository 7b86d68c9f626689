"""Benchmarks on scikit-learn's bundled digits (1,797 8×8 images, 10 classes; no download).

Split (fixed, seed 0 permutation): 1,000 training images, 100 query images from the remaining 797, pixels in [0, 1].
Both recipes are deterministic given the seed passed to ``train_fn``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import Data
from .base import Benchmark

N_TRAIN, N_QUERY = 1000, 100


def digits_split(n_train: int = N_TRAIN, n_query: int = N_QUERY) -> tuple[tuple, tuple]:
    """``((X_train, y_train), (X_query, y_query))`` as float32 / int64 tensors."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x = torch.tensor(x[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[order], dtype=torch.long)
    q = slice(n_train, n_train + n_query)
    return (x[:n_train], y[:n_train]), (x[q], y[q])


def logreg(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(64, 10)


def mlp(seed: int = 0, hidden: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train_logreg(data: Data, seed: int, l2: float = 1e-3) -> nn.Module:
    """L2-regularised multinomial logistic regression, trained to convergence with L-BFGS (convex: seed-free)."""
    x, y = data.tensors()
    model = logreg(seed)
    opt = torch.optim.LBFGS(
        model.parameters(),
        max_iter=500,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + 0.5 * l2 * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model.eval()


def train_mlp(data: Data, seed: int, steps: int = 300, lr: float = 1e-2, l2: float = 1e-3) -> nn.Module:
    """MLP 64-64-10 trained with full-batch Adam; the seed sets the initialisation."""
    return train_mlp_checkpoints(data, seed, 1, steps, lr, l2)[-1]


def train_mlp_checkpoints(
    data: Data, seed: int, n_checkpoints: int, steps: int = 300, lr: float = 1e-2, l2: float = 1e-3
) -> list[nn.Module]:
    """The :func:`train_mlp` run, keeping a copy of the model every ``steps / n_checkpoints`` steps (last = final)."""
    x, y = data.tensors()
    model = mlp(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    checkpoints = []
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + 0.5 * l2 * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        opt.step()
        if step * n_checkpoints % steps == 0:
            checkpoints.append(copy.deepcopy(model).eval())
    return checkpoints


DIGITS_LOGREG = Benchmark(
    name="digits-logreg",
    version=1,
    description="sklearn digits, 1,000 train / 100 queries, L2 logistic regression (L-BFGS)",
    load=digits_split,
    train_fn=train_logreg,
)

DIGITS_MLP = Benchmark(
    name="digits-mlp",
    version=1,
    description="sklearn digits, 1,000 train / 100 queries, MLP 64-64-10 (full-batch Adam, 300 steps)",
    load=digits_split,
    train_fn=train_mlp,
)
