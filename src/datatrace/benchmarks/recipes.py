"""Training loops shared by the built-in benchmarks; each is deterministic given its seed on CPU.

The seed sets the initialisation (the caller builds the model after ``torch.manual_seed``) and, for minibatch
training, the data order through :func:`~datatrace.eval.data_order`, so that ground truth computed with common
random numbers shares both between subsets.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Data
from ..eval.retrain import data_order


def l2_penalty(model: nn.Module, l2: float) -> Tensor:
    return 0.5 * l2 * sum((p**2).sum() for p in model.parameters())


def fit_lbfgs(model: nn.Module, x: Tensor, y: Tensor, l2: float, max_iter: int = 500) -> nn.Module:
    """Minimise mean cross-entropy + ``l2``/2·‖θ‖² with full-batch L-BFGS (strong Wolfe line search)."""
    opt = torch.optim.LBFGS(
        model.parameters(),
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + l2_penalty(model, l2)
        loss.backward()
        return loss

    opt.step(closure)
    return model.eval()


def fit_adam_full_batch(
    model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float, l2: float, n_checkpoints: int = 1
) -> list[nn.Module]:
    """Full-batch Adam on cross-entropy + ``l2``/2·‖θ‖²; a copy every ``steps / n_checkpoints`` steps (last = final)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    checkpoints = []
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + l2_penalty(model, l2)
        loss.backward()
        opt.step()
        if step * n_checkpoints % steps == 0:
            checkpoints.append(copy.deepcopy(model).eval())
    return checkpoints


def fit_adam_minibatch(
    model: nn.Module,
    data: Data,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    n_checkpoints: int = 1,
) -> list[nn.Module]:
    """Minibatch Adam on cross-entropy for ``epochs`` epochs in the order of :func:`~datatrace.eval.data_order`.

    Returns ``n_checkpoints`` (≤ ``epochs``) copies of the model at evenly spaced epoch ends; the last is the final
    model.
    """
    x, y = data.tensors()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    keep = {round(epochs * (c + 1) / n_checkpoints) for c in range(n_checkpoints)}
    checkpoints = []
    for epoch in range(epochs):
        order = torch.from_numpy(data_order(data, seed, epoch))
        model.train()
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        if epoch + 1 in keep:
            checkpoints.append(copy.deepcopy(model).eval())
    model.eval()
    return checkpoints


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` with the torch RNG seeded by ``seed`` (the initialisation depends on the seed only)."""
    torch.manual_seed(seed)
    return build()


def split(x: np.ndarray, y: np.ndarray, n_train: int, n_query: int, seed: int = 0) -> tuple[tuple, tuple]:
    """Seeded permutation, then ``n_train`` training and the next ``n_query`` query examples as tensors."""
    order = np.random.default_rng(seed).permutation(len(x))
    x = torch.tensor(x[order], dtype=torch.float32)
    y = torch.tensor(y[order], dtype=torch.long)
    q = slice(n_train, n_train + n_query)
    return (x[:n_train], y[:n_train]), (x[q], y[q])
