"""Attribution metrics against retraining ground truth.

Linear datamodeling score (LDS, Park et al. 2023): for each query q, the rank correlation over subsets S between the
additive prediction Σ_{i∈S} score[q, i] and the actual *goodness* −measurement(q; θ_S) of a model retrained on S.
Scores follow datatrace's sign convention (positive = lowers the measurement), so a perfect attributor has LDS 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from ..errors import InputError
from ..scores import Scores
from .retrain import GroundTruth


@dataclass
class LDSResult:
    """Result of :func:`lds`.

    Attributes:
        mean: mean LDS over queries where it is defined.
        ci: bootstrap confidence interval of the mean, resampling queries.
        per_query: ``(n_query,)`` LDS of each query; NaN where undefined (constant prediction or measurement).
        n_undefined: number of NaN queries (excluded from the mean and the interval).
    """

    mean: float
    ci: tuple[float, float]
    per_query: np.ndarray
    n_undefined: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"LDS {self.mean:.3f} [{self.ci[0]:.3f}, {self.ci[1]:.3f}]"


def predicted_outputs(scores: Scores | np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``(n_subsets, n_query)`` additive predictions Σ_{i∈S} score[q, i], streamed over score blocks."""
    if isinstance(scores, np.ndarray):
        scores = Scores.from_array(scores)
    if masks.shape[1] != scores.n_train:
        raise InputError(f"Ground truth has {masks.shape[1]} training examples but scores have {scores.n_train}.")
    m = torch.as_tensor(masks, dtype=torch.float32)
    out = np.zeros((len(masks), scores.n_query), dtype=np.float64)
    for r0 in range(0, scores.n_query, scores.query_chunk):
        r = slice(r0, min(r0 + scores.query_chunk, scores.n_query))
        for c0 in range(0, scores.n_train, scores.train_chunk):
            c = slice(c0, min(c0 + scores.train_chunk, scores.n_train))
            out[:, r] += (m[:, c] @ scores.block_fn(r, c).float().T).double().numpy()
    return out


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of matching columns (average ranks for ties); NaN where a column is constant."""
    return pearson_columns(rankdata(a, axis=0), rankdata(b, axis=0))


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching columns; NaN where a column is constant."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denom = np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=0) / denom
    r[denom <= 1e-300] = np.nan
    return r


def bootstrap_ci(
    values: np.ndarray, n_bootstrap: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs dropped)."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_bootstrap, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def lds(
    scores: Scores | np.ndarray,
    gt: GroundTruth,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> LDSResult:
    """Linear datamodeling score of ``scores`` against subset-retraining ground truth ``gt``.

    Args:
        scores: ``(n_query, n_train)`` scores (a :class:`Scores` or an array), positive = proponent.
        gt: ground truth from :func:`~datatrace.eval.subset_retraining` on the same training set and queries.
        n_bootstrap, level, seed: bootstrap over queries for the confidence interval.
    """
    pred = predicted_outputs(scores, gt.masks)
    if pred.shape[1] != gt.measurements.shape[1]:
        raise InputError(f"Scores have {pred.shape[1]} queries but the ground truth has {gt.measurements.shape[1]}.")
    per_query = spearman_columns(pred, -gt.measurements)
    defined = np.isfinite(per_query)
    mean = float(per_query[defined].mean()) if defined.any() else float("nan")
    return LDSResult(
        mean=mean,
        ci=bootstrap_ci(per_query, n_bootstrap, level, seed),
        per_query=per_query,
        n_undefined=int((~defined).sum()),
        metadata={"correlation": "spearman", "n_subsets": len(gt.masks), "level": level},
    )
