"""Mislabel detection: flip a fraction of the training labels and check that self-influence finds them.

A mislabelled example contradicts what the rest of the data teaches, so the model fits it poorly and its own
gradient is large: it is highly self-influential. Ranking the training set by self-influence (largest first) and
inspecting from the top should find the flipped examples early. Reported: the area under the ROC curve (1 = every
flipped example ranks above every clean one, 0.5 = a random ranking) and the detection curve (the fraction of
flipped examples found after inspecting each fraction of the training set).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor, nn

from .._utils import derive_seed
from ..data import Data, as_data
from ..errors import InputError, NonFiniteError


@dataclass
class MislabelResult:
    """Result of :func:`mislabel_detection`.

    Attributes:
        auc: probability that a random flipped example has larger self-influence than a random clean one (ties 1/2).
        inspected: ``(n + 1,)`` fraction of the training set inspected, 0 to 1.
        found: ``(n + 1,)`` expected fraction of the flipped examples found by then (ties in random order).
        n_flipped: number of flipped examples.
    """

    auc: float
    inspected: np.ndarray
    found: np.ndarray
    n_flipped: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def found_at(self, fraction: float) -> float:
        """Fraction of flipped examples found after inspecting ``fraction`` of the training set."""
        return float(np.interp(fraction, self.inspected, self.found))

    def __str__(self) -> str:
        return f"mislabel AUC {self.auc:.3f}, {self.found_at(0.1):.0%} of flipped labels in the top 10%"


def flip_labels(
    labels: Tensor | np.ndarray, fraction: float, n_classes: int | None = None, seed: int = 0
) -> tuple[Tensor | np.ndarray, np.ndarray]:
    """Give ``round(fraction · n)`` random examples a different label, drawn uniformly from the other classes.

    Returns:
        ``(noisy_labels, flipped)``: labels of the input's type and a bool mask of the flipped examples.
    """
    if not 0 < fraction < 1:
        raise InputError(f"fraction must be in (0, 1), got {fraction}.")
    y = labels.numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"labels must be a 1-D integer array, got shape {y.shape} and dtype {y.dtype}.")
    n_classes = int(y.max()) + 1 if n_classes is None else n_classes
    if n_classes < 2:
        raise InputError("flip_labels needs at least 2 classes.")
    n_flip = round(fraction * len(y))
    if n_flip < 1:
        raise InputError(f"fraction {fraction} of {len(y)} labels flips none; use a larger fraction.")
    rng = np.random.default_rng(derive_seed(seed, "flip-labels"))
    idx = rng.choice(len(y), n_flip, replace=False)
    noisy = y.copy()
    noisy[idx] = (y[idx] + rng.integers(1, n_classes, size=n_flip)) % n_classes  # never the original label
    flipped = np.zeros(len(y), dtype=bool)
    flipped[idx] = True
    return (torch.from_numpy(noisy) if isinstance(labels, Tensor) else noisy), flipped


def mislabel_detection(self_influence: np.ndarray, flipped: np.ndarray) -> MislabelResult:
    """AUC and detection curve of ranking examples by decreasing ``self_influence`` to find the ``flipped`` ones."""
    scores = np.asarray(self_influence, dtype=np.float64)
    flipped = np.asarray(flipped, dtype=bool)
    if scores.shape != flipped.shape or scores.ndim != 1:
        raise InputError(f"self_influence {scores.shape} and flipped {flipped.shape} must be equal-length vectors.")
    if not np.isfinite(scores).all():
        raise NonFiniteError(f"self-influence of example {int(np.flatnonzero(~np.isfinite(scores))[0])} is not finite.")
    n, n_pos = len(scores), int(flipped.sum())
    if n_pos in (0, n):
        raise InputError("mislabel detection needs both flipped and clean examples.")
    n_neg = n - n_pos
    auc = (rankdata(scores)[flipped].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    # Detection curve: within a group of tied scores the expected number found grows linearly.
    order = np.argsort(-scores, kind="stable")
    ends = np.flatnonzero(np.diff(scores[order]) != 0) + 1
    ends = np.append(ends, n)
    found_at_ends = np.cumsum(flipped[order])[ends - 1]
    found = np.interp(np.arange(n + 1), np.append(0, ends), np.append(0, found_at_ends)) / n_pos
    return MislabelResult(float(auc), np.arange(n + 1) / n, found, n_pos, {"n": n})


def train_with_flipped_labels(
    train_fn: Callable[[Data, int], nn.Module],
    train: Sequence[Tensor] | Data,
    fraction: float = 0.1,
    seed: int = 0,
    n_classes: int | None = None,
) -> tuple[Data, np.ndarray, nn.Module]:
    """Flip ``fraction`` of the labels of ``train`` (see :func:`flip_labels`) and train on the result with ``seed``.

    Returns:
        ``(noisy, flipped, model)``: the noisy training data, the bool mask of flipped examples and the model.
    """
    *inputs, labels = as_data(train, "train").tensors()
    noisy_labels, flipped = flip_labels(labels, fraction, n_classes, seed)
    noisy = Data((*inputs, noisy_labels), "train")
    return noisy, flipped, train_fn(noisy, seed)


def mislabel_experiment(
    train_fn: Callable[[Data, int], nn.Module],
    train: Sequence[Tensor] | Data,
    make_attributor: Callable[[nn.Module], Any],
    fraction: float = 0.1,
    seed: int = 0,
    n_classes: int | None = None,
) -> MislabelResult:
    """Flip ``fraction`` of the labels of ``train``, train on it, and detect the flips by self-influence.

    Args:
        train_fn: ``train_fn(data, seed) -> model`` in ``eval()`` mode.
        train: tensor data ``(X, ..., y)`` with integer class labels last.
        make_attributor: ``model -> attributor`` (anything with ``fit(data)`` and ``self_influence(data)``).
        fraction, n_classes: see :func:`flip_labels`; ``seed`` seeds the flips and the training run.
    """
    noisy, flipped, model = train_with_flipped_labels(train_fn, train, fraction, seed, n_classes)
    influence = make_attributor(model).fit(noisy).self_influence(noisy)
    result = mislabel_detection(influence, flipped)
    result.metadata.update(fraction=fraction, seed=seed)
    return result
