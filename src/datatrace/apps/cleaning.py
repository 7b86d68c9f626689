"""Mislabel cleaning end to end: flag the most self-influential training examples, drop them, retrain, compare.

Steps (all seeded): flip ``fraction`` of the training labels and train on the noisy data
(:func:`~datatrace.eval.mislabel.train_with_flipped_labels`); rank the training examples by each attributor's
self-influence and measure detection (:func:`~datatrace.eval.mislabel_detection`: AUC and detection curve); remove
the top ``remove`` fraction and retrain with the same training seed; report test accuracy before and after. Two
references at the same removal count put the gain in context: removing random examples, and removing the flipped
examples themselves (the oracle).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._utils import derive_seed, track
from ..data import Data, as_data
from ..errors import InputError
from ..eval.mislabel import MislabelResult, mislabel_detection, train_with_flipped_labels


@dataclass
class CleaningResult:
    """Result of :func:`mislabel_cleaning`.

    Attributes:
        detection: ``{attributor: MislabelResult}`` (AUC, detection curve).
        accuracy_before: test accuracy of the model trained on the noisy data.
        accuracy_after: ``{attributor: test accuracy}`` after removing its flagged examples and retraining.
        precision: ``{attributor: fraction of its flagged examples that were flipped}``.
        flagged: ``{attributor: (n_removed,) training indices removed, most self-influential first}``.
        accuracy_random: test accuracy after removing ``n_removed`` random examples (``None`` if not run).
        accuracy_oracle: test accuracy after removing exactly the flipped examples (``None`` if not run).
        n_removed, n_flipped: counts.
    """

    detection: dict[str, MislabelResult]
    accuracy_before: float
    accuracy_after: dict[str, float]
    precision: dict[str, float]
    flagged: dict[str, np.ndarray]
    accuracy_random: float | None
    accuracy_oracle: float | None
    n_removed: int
    n_flipped: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One plain dict per attributor: AUC, share of flips in the top 10%, precision, accuracy before/after."""
        return [
            {
                "method": name,
                "auc": d.auc,
                "found_at_10%": d.found_at(0.1),
                "precision": self.precision[name],
                "accuracy_before": self.accuracy_before,
                "accuracy_after": self.accuracy_after[name],
            }
            for name, d in self.detection.items()
        ]

    def __str__(self) -> str:
        parts = [
            f"{r['method']}: AUC {r['auc']:.3f}, accuracy {r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f}"
            for r in self.rows()
        ]
        return "; ".join(parts)


def mislabel_cleaning(
    train_fn: Callable[[Data, int], nn.Module],
    train: Sequence[Tensor] | Data,
    test: Sequence[Tensor] | Data,
    make_attributor: Callable[[nn.Module], Any] | Mapping[str, Callable[[nn.Module], Any]],
    fraction: float = 0.1,
    remove: float | None = None,
    seed: int = 0,
    n_classes: int | None = None,
    baselines: bool = True,
    verbose: bool = True,
) -> CleaningResult:
    """Flip labels, detect them by self-influence, remove the flagged examples, retrain and measure test accuracy.

    Args:
        train_fn: ``train_fn(data, seed) -> model`` in ``eval()`` mode (called with the same seed every time).
        train: clean tensor data ``(X, ..., y)`` with integer class labels last.
        test: held-out tensor data ``(X, ..., y)`` for the accuracy (never modified).
        make_attributor: ``model -> attributor`` (with ``fit`` and ``self_influence``), or ``{name: factory}`` to
            compare several on the same noisy model.
        fraction: fraction of training labels flipped.
        remove: fraction of the training set removed, largest self-influence first (default: ``fraction``).
        seed: seeds the flips, the random-removal baseline and every training run.
        n_classes: number of classes (default: largest label + 1).
        baselines: also retrain after random removal and after removing exactly the flipped examples.
        verbose: progress bar over attributors.
    """
    remove = fraction if remove is None else remove
    if not 0 < remove < 1:
        raise InputError(f"remove must be a fraction in (0, 1), got {remove}.")
    factories = make_attributor if isinstance(make_attributor, Mapping) else {"attributor": make_attributor}
    if not factories:
        raise InputError("make_attributor is an empty mapping; give at least one attributor factory.")
    test = as_data(test, "test")
    noisy, flipped, model = train_with_flipped_labels(train_fn, train, fraction, seed, n_classes)
    n = len(noisy)
    n_removed = round(remove * n)
    if not 1 <= n_removed < n:
        raise InputError(f"remove={remove} of {n} examples removes {n_removed}; choose a fraction removing 1..{n - 1}.")

    def accuracy_without(removed: np.ndarray) -> float:
        keep = np.setdiff1d(np.arange(n), removed)
        return accuracy(train_fn(noisy.subset(keep), seed), test)

    detection, after, precision, flagged = {}, {}, {}, {}
    for name, factory in track(factories.items(), "mislabel cleaning", verbose=verbose, total=len(factories)):
        influence = factory(model).fit(noisy).self_influence(noisy)
        detection[name] = mislabel_detection(influence, flipped)
        flagged[name] = np.argsort(-influence, kind="stable")[:n_removed]
        precision[name] = float(flipped[flagged[name]].mean())
        after[name] = accuracy_without(flagged[name])
    acc_random = acc_oracle = None
    if baselines:
        rng = np.random.default_rng(derive_seed(seed, "cleaning-random"))
        acc_random = accuracy_without(rng.choice(n, n_removed, replace=False))
        acc_oracle = accuracy_without(np.flatnonzero(flipped))
    meta = {"fraction": fraction, "remove": remove, "seed": seed, "n_train": n, "n_test": len(test)}
    return CleaningResult(
        detection,
        accuracy(model, test),
        after,
        precision,
        flagged,
        acc_random,
        acc_oracle,
        n_removed,
        int(flipped.sum()),
        meta,
    )


@torch.no_grad()
def accuracy(model: nn.Module, data: Data, batch_size: int = 1024) -> float:
    """Fraction of ``data`` (inputs ..., labels) whose arg-max prediction equals the label."""
    correct = 0
    for _, (*inputs, labels) in data.batches(batch_size):
        correct += int((model(*inputs).argmax(dim=-1) == labels).sum())
    return correct / len(data)
