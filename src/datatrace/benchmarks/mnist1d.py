"""Benchmark on MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package (no download).

The default generator settings give 4,000 training and 1,000 test sequences of 40 values in 10 classes; all 4,000
training sequences are used, and the first 100 test sequences are the queries. The model is the MNIST-1D reference
MLP (40-100-100-10) trained with its reference optimiser settings (Adam, learning rate 1e-2, batch size 100).
"""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from ..data import Data
from .base import Benchmark
from .mnist import GROUND_TRUTH
from .recipes import fit_adam_minibatch, seeded

N_QUERY = 100
EPOCHS, BATCH_SIZE, LR, N_CHECKPOINTS = 30, 100, 1e-2, 3


@lru_cache(maxsize=1)
def mnist1d_split() -> tuple[tuple, tuple]:
    """``((X_train, y_train), (X_query, y_query))`` as float32 / int64 tensors."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise ImportError("The mnist1d benchmark needs mnist1d: pip install 'datatrace[benchmarks]'.") from e
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002 (restored: make_dataset reseeds)
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    x, y = torch.tensor(d["x"], dtype=torch.float32), torch.tensor(d["y"], dtype=torch.long)
    xq, yq = torch.tensor(d["x_test"][:N_QUERY], dtype=torch.float32), torch.tensor(d["y_test"][:N_QUERY])
    return (x, y), (xq, yq.long())


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))


def mlp_checkpoints(data: Data, seed: int) -> tuple[list[nn.Module], list[float]]:
    """The MLP after every third of training and the learning rate after each, for TracIn."""
    return fit_adam_minibatch(seeded(mlp, seed), data, seed, EPOCHS, BATCH_SIZE, LR, 0.0, N_CHECKPOINTS), [
        LR
    ] * N_CHECKPOINTS


def train_mlp(data: Data, seed: int) -> nn.Module:
    """The final model of :func:`mlp_checkpoints`."""
    return fit_adam_minibatch(seeded(mlp, seed), data, seed, EPOCHS, BATCH_SIZE, LR)[-1]


MNIST1D_MLP = Benchmark(
    name="mnist1d-mlp",
    version=1,
    description="MNIST-1D, 4,000 train / 100 queries, MLP 40-100-100-10 (Adam, 30 epochs)",
    load=mnist1d_split,
    train_fn=train_mlp,
    checkpoints=mlp_checkpoints,
    **GROUND_TRUTH,
)
