"""Tiny models, data and training recipes shared by the tests (seconds on 2 CPU cores)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import datatrace as dt
from datatrace.benchmarks.digits import digits_split, train_logreg


def blobs(n: int = 120, d: int = 5, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian class blobs: float32 inputs (n, d), int64 labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g) * 2
    y = torch.arange(n) % classes
    x = centers[y] + torch.randn(n, d, generator=g)
    return x, y


def mlp(d: int = 5, hidden: int = 8, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, classes)).eval()


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, classes)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))


def images(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 200, lr: float = 0.05) -> nn.Module:
    """Full-batch Adam on cross-entropy; returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def for_loop_grads(model: nn.Module, fn, x: torch.Tensor, y: torch.Tensor, names=None) -> torch.Tensor:
    """Reference per-example gradients: one ``backward()`` per example."""
    params = dict(model.named_parameters())
    names = list(params) if names is None else names
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        fn(model, (x[i : i + 1], y[i : i + 1]))[0].backward()
        rows.append(torch.cat([params[n].grad.reshape(-1) for n in names]))
    model.zero_grad()
    return torch.stack(rows)


def digits_with_copies(n_copies: int = 10):
    """Digits train set (1,000) plus exact copies of ``n_copies`` queries, and a logistic regression trained on it.

    The copied queries are the held-out images with the highest loss under a model trained without them: a copy
    of an image the model already fits perfectly has a near-zero gradient, and its influence would say nothing
    about the sign convention.

    Returns ``(train, query, model, copy_index)``: query q's copy is training example ``copy_index[q]``.
    """
    (xt, yt), (xq, yq) = digits_split()
    task = dt.ClassificationTask()
    with torch.no_grad():
        loss = task.loss(train_logreg(dt.Data((xt, yt)), seed=0), (xq, yq))
    pick = torch.argsort(loss, descending=True)[:n_copies]
    xq, yq = xq[pick], yq[pick]
    train = (torch.cat([xt, xq]), torch.cat([yt, yq]))
    model = train_logreg(dt.Data(train), seed=0)
    return train, (xq, yq), model, np.arange(len(xt), len(xt) + n_copies)
