"""Attribution metrics against retraining ground truth, each a mean over queries with a bootstrap interval.

- Linear datamodeling score (LDS, Park et al. 2023): for each query q, the rank correlation (Spearman or Kendall)
  over subsets S between the additive prediction Σ_{i∈S} score[q, i] and the actual *goodness* −measurement(q; θ_S)
  of models retrained on S. Scores follow datatrace's sign convention (positive = lowers the measurement), so a
  perfect attributor has LDS 1.
- Noise ceiling: the LDS that the expected measurement itself would reach against the ground truth, estimated from
  the disagreement between training seeds. No attributor can be expected to exceed it.
- Leave-one-out correlation: for each query, the correlation over removed examples i between score[q, i] and the
  actual change m(q; θ_{−i}) − m(q; θ) when i is left out (positive = i was a proponent).
- Retrieval: Recall@k and mean reciprocal rank of planted (known relevant) training examples.

LDS, LOO correlation and retrieval are streaming metrics: ``update(scores_of_some_queries, queries)`` any number of
times (e.g. one batch of queries at a time), then ``compute()``. The functions :func:`lds`, :func:`loo_correlation`
and :func:`retrieval` do both for a whole score matrix. A query whose correlation is undefined (constant scores or
measurements) is reported as NaN and counted in ``n_undefined``, never silently counted as zero.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.stats import kendalltau, rankdata
from torch import Tensor

from ..errors import InputError, NonFiniteError, check_choice
from ..scores import Scores
from .retrain import GroundTruth

if TYPE_CHECKING:
    from .loo import LOOGroundTruth

CORRELATIONS = ("spearman", "kendall", "pearson")
ScoresLike = Scores | np.ndarray | Tensor


@dataclass
class MetricResult:
    """A per-query metric and its mean.

    Attributes:
        mean: mean over queries where the metric is defined.
        ci: bootstrap confidence interval of the mean, resampling queries.
        per_query: ``(n_query,)`` value of each query; NaN where undefined (or never updated).
        n_undefined: number of updated queries whose value is undefined (excluded from the mean and the interval).
        metadata: settings (correlation, level, number of subsets, ...).
        name: what is measured.
    """

    mean: float
    ci: tuple[float, float]
    per_query: np.ndarray
    n_undefined: int
    metadata: dict[str, Any] = field(default_factory=dict)
    name: str = "metric"

    def __str__(self) -> str:
        return f"{self.name} {self.mean:.3f} [{self.ci[0]:.3f}, {self.ci[1]:.3f}]"


@dataclass
class LDSResult(MetricResult):
    """Result of :func:`lds`."""

    name: str = "LDS"


@dataclass
class NoiseCeiling(MetricResult):
    """Result of :func:`noise_ceiling`.

    Attributes:
        seed_to_seed: mean over queries of the correlation between the measurements of two training seeds on the
            same subsets (what a single-seed ground truth would allow).
        seeds_per_subset: the number of seeds R behind each ground-truth measurement.
    """

    seed_to_seed: float = float("nan")
    seeds_per_subset: int = 1
    name: str = "noise ceiling"


# -- correlations -------------------------------------------------------------------------------------------------


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching columns; NaN where a column is constant."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denom = np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=0) / denom
    r[denom <= 1e-300] = np.nan
    return r


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of matching columns (average ranks for ties); NaN where a column is constant."""
    return pearson_columns(rankdata(a, axis=0), rankdata(b, axis=0))


def kendall_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of matching columns (corrected for ties); NaN where a column is constant."""
    out = np.full(a.shape[1], np.nan)
    for j in range(a.shape[1]):
        if np.ptp(a[:, j]) > 0 and np.ptp(b[:, j]) > 0:
            out[j] = kendalltau(a[:, j], b[:, j]).statistic
    return out


def correlate_columns(a: np.ndarray, b: np.ndarray, correlation: str = "spearman") -> np.ndarray:
    """Correlation (``"spearman"``, ``"kendall"`` or ``"pearson"``) of matching columns of two equal-shape arrays."""
    fn = {"spearman": spearman_columns, "kendall": kendall_columns, "pearson": pearson_columns}
    return fn[check_choice("correlation", correlation, CORRELATIONS)](np.asarray(a), np.asarray(b))


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


# -- streaming over queries -----------------------------------------------------------------------------------------


def as_scores(scores: ScoresLike) -> Scores:
    return scores if isinstance(scores, Scores) else Scores.from_array(scores)


def score_blocks(scores: Scores) -> Iterator[tuple[slice, slice, np.ndarray]]:
    """``(rows, cols, block)`` over the whole matrix, one block of ``query_chunk × train_chunk`` at a time."""
    for r0 in range(0, scores.n_query, scores.query_chunk):
        rows = slice(r0, min(r0 + scores.query_chunk, scores.n_query))
        for c0 in range(0, scores.n_train, scores.train_chunk):
            cols = slice(c0, min(c0 + scores.train_chunk, scores.n_train))
            yield rows, cols, scores.block(rows, cols)


def query_rows(scores: Scores, rows: slice) -> Scores:
    """The lazy scores of queries ``rows`` only."""

    def block(r: slice, c: slice) -> Tensor:
        start, stop, _ = r.indices(rows.stop - rows.start)
        return scores.block_fn(slice(rows.start + start, rows.start + stop), c)

    return Scores(
        block, (rows.stop - rows.start, scores.n_train), scores.metadata, scores.query_chunk, scores.train_chunk
    )


class QueryMetric:
    """Base of streaming per-query metrics: ``update`` with the scores of some queries, then ``compute``.

    Args:
        n_query: total number of queries.
        n_train: number of training examples every score row must have.
        n_bootstrap, level, seed: bootstrap over queries for the confidence interval.
    """

    result_type = MetricResult

    def __init__(self, n_query: int, n_train: int, n_bootstrap: int = 1000, level: float = 0.95, seed: int = 0):
        self.n_query, self.n_train = n_query, n_train
        self.n_bootstrap, self.level, self.seed = n_bootstrap, level, seed
        self.per_query_ = np.full(n_query, np.nan)
        self.seen_ = np.zeros(n_query, dtype=bool)
        self._next = 0

    def update(self, scores: ScoresLike, queries: slice | Sequence[int] | np.ndarray | None = None) -> QueryMetric:
        """Add the ``(b, n_train)`` scores of queries ``queries`` (default: the ``b`` queries after the last update)."""
        scores = as_scores(scores)
        if scores.n_train != self.n_train:
            raise InputError(f"Ground truth has {self.n_train} training examples but scores have {scores.n_train}.")
        if queries is None:
            queries = slice(self._next, self._next + scores.n_query)
        idx = np.arange(self.n_query)[queries] if isinstance(queries, slice) else np.asarray(queries, dtype=np.int64)
        if len(idx) != scores.n_query or (len(idx) and not 0 <= idx.min() <= idx.max() < self.n_query):
            raise InputError(
                f"Scores have {scores.n_query} queries but the ground truth has {self.n_query}"
                + (f" (update for queries {idx.min()}..{idx.max()})" if len(idx) else "")
                + "."
            )
        self.per_query_[idx] = self._per_query(scores, idx)
        self.seen_[idx] = True
        self._next = int(idx.max()) + 1 if len(idx) else self._next
        return self

    def update_all(self, scores: ScoresLike) -> QueryMetric:
        """Update with the scores of every query at once (their number must match)."""
        scores = as_scores(scores)
        if scores.n_query != self.n_query:
            raise InputError(f"Scores have {scores.n_query} queries but the ground truth has {self.n_query}.")
        return self.update(scores, slice(0, self.n_query))

    def compute(self) -> MetricResult:
        """Mean and bootstrap interval over the queries updated so far."""
        if not self.seen_.any():
            raise InputError(f"{type(self).__name__}.compute() before any update().")
        values = self.per_query_[self.seen_]
        defined = np.isfinite(values)
        return self.result_type(
            mean=float(values[defined].mean()) if defined.any() else float("nan"),
            ci=bootstrap_ci(values, self.n_bootstrap, self.level, self.seed),
            per_query=self.per_query_.copy(),
            n_undefined=int((~defined).sum()),
            metadata={"level": self.level, "n_queries": int(self.seen_.sum()), **self._metadata()},
        )

    def _per_query(self, scores: Scores, queries: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _metadata(self) -> dict[str, Any]:
        return {}


# -- LDS ------------------------------------------------------------------------------------------------------------


def predicted_outputs(scores: ScoresLike, masks: np.ndarray) -> np.ndarray:
    """``(n_subsets, n_query)`` additive predictions Σ_{i∈S} score[q, i], streamed over score blocks."""
    scores = as_scores(scores)
    if masks.shape[1] != scores.n_train:
        raise InputError(f"Ground truth has {masks.shape[1]} training examples but scores have {scores.n_train}.")
    m = torch.as_tensor(masks, dtype=torch.float32)
    out = np.zeros((len(masks), scores.n_query), dtype=np.float64)
    for rows, cols, block in score_blocks(scores):
        out[:, rows] += (m[:, cols] @ torch.from_numpy(block).T).double().numpy()
    return out


class LDS(QueryMetric):
    """Streaming linear datamodeling score against ground truth ``gt`` (see :func:`lds`)."""

    result_type = LDSResult

    def __init__(self, gt: GroundTruth, correlation: str = "spearman", **bootstrap: Any):
        super().__init__(gt.measurements.shape[1], gt.masks.shape[1], **bootstrap)
        self.gt = gt
        self.correlation = check_choice("correlation", correlation, ("spearman", "kendall"))

    def _per_query(self, scores: Scores, queries: np.ndarray) -> np.ndarray:
        pred = predicted_outputs(scores, self.gt.masks)
        return correlate_columns(pred, -self.gt.measurements[:, queries], self.correlation)

    def _metadata(self) -> dict[str, Any]:
        return {
            "correlation": self.correlation,
            "n_subsets": len(self.gt.masks),
            "seeds_per_subset": self.gt.seeds_per_subset,
        }


def lds(
    scores: ScoresLike,
    gt: GroundTruth,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    correlation: str = "spearman",
) -> LDSResult:
    """Linear datamodeling score of ``scores`` against subset-retraining ground truth ``gt``.

    Args:
        scores: ``(n_query, n_train)`` scores (a :class:`Scores` or an array), positive = proponent.
        gt: ground truth from :func:`~datatrace.eval.subset_retraining` on the same training set and queries,
            recorded with the task's measurement (loss or margin) that the scores explain.
        n_bootstrap, level, seed: bootstrap over queries for the confidence interval.
        correlation: ``"spearman"`` (default) or ``"kendall"`` (tau-b).
    """
    return LDS(gt, correlation, n_bootstrap=n_bootstrap, level=level, seed=seed).update_all(scores).compute()


#: Rank correlation ↔ Pearson correlation of a bivariate normal pair (Pearson 1907; Greiner 1909).
TO_PEARSON = {"spearman": lambda rho: 2 * np.sin(np.pi * rho / 6), "kendall": lambda tau: np.sin(np.pi * tau / 2)}
FROM_PEARSON = {"spearman": lambda r: 6 / np.pi * np.arcsin(r / 2), "kendall": lambda r: 2 / np.pi * np.arcsin(r)}


def noise_ceiling(
    gt: GroundTruth, correlation: str = "spearman", n_bootstrap: int = 1000, level: float = 0.95, seed: int = 0
) -> NoiseCeiling:
    """How high any attributor's LDS against ``gt`` can be expected to go, given retraining noise.

    With R seeds per subset, ρ_q is the rank correlation over subsets between the measurements of two seeds,
    averaged over the R(R−1)/2 pairs. If each run measures m_r(S) = μ(S) + ε_r (seed noise independent of the
    data), the best possible predictor μ(S) correlates with the R-seed mean that the ground truth records as
    ``sqrt(R·r / (1 + (R−1)·r))`` (Spearman–Brown), in terms of the Pearson correlation r between two seeds. The
    rank correlations are converted to r and back with the bivariate-normal relations (r = 2 sin(πρ/6) for
    Spearman, r = sin(πτ/2) for Kendall). A query whose seeds disagree (r ≤ 0) has ceiling 0.

    Args:
        gt: ground truth with ``seeds_per_subset ≥ 2``.
        correlation: ``"spearman"`` or ``"kendall"``, as used for the LDS it bounds.
    """
    runs = gt.run_measurements
    if runs is None or runs.shape[1] < 2:
        raise InputError("noise_ceiling needs ground truth with seeds_per_subset ≥ 2.")
    check_choice("correlation", correlation, ("spearman", "kendall"))
    n_seeds = runs.shape[1]
    pairs = [correlate_columns(runs[:, a], runs[:, b], correlation) for a, b in combinations(range(n_seeds), 2)]
    rho = np.mean(pairs, axis=0)
    r = TO_PEARSON[correlation](rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        best = np.sqrt(np.clip(n_seeds * r / (1 + (n_seeds - 1) * r), 0, None))
    ceiling = np.where(r > 0, FROM_PEARSON[correlation](best), np.where(np.isnan(r), np.nan, 0.0))
    defined = np.isfinite(ceiling)
    return NoiseCeiling(
        mean=float(ceiling[defined].mean()) if defined.any() else float("nan"),
        ci=bootstrap_ci(ceiling, n_bootstrap, level, seed),
        per_query=ceiling,
        n_undefined=int((~defined).sum()),
        metadata={"correlation": correlation, "n_subsets": len(gt.masks), "level": level},
        seed_to_seed=float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan"),
        seeds_per_subset=n_seeds,
    )


# -- leave-one-out ----------------------------------------------------------------------------------------------------


def score_columns(scores: Scores, cols: np.ndarray) -> np.ndarray:
    """``(n_query, len(cols))`` scores of the training examples ``cols``, streamed over blocks."""
    out = np.empty((scores.n_query, len(cols)), dtype=np.float32)
    for rows, block_cols, block in score_blocks(scores):
        hit = (cols >= block_cols.start) & (cols < block_cols.stop)
        out[rows, hit] = block[:, cols[hit] - block_cols.start]
    return out


class LOOCorrelation(QueryMetric):
    """Streaming correlation of scores with actual leave-one-out effects (see :func:`loo_correlation`)."""

    def __init__(self, loo: LOOGroundTruth, correlation: str = "pearson", **bootstrap: Any):
        super().__init__(loo.effects.shape[1], loo.n_train, **bootstrap)
        self.loo = loo
        self.correlation = check_choice("correlation", correlation, CORRELATIONS)

    def _per_query(self, scores: Scores, queries: np.ndarray) -> np.ndarray:
        return correlate_columns(
            score_columns(scores, self.loo.removed).T, self.loo.effects[:, queries], self.correlation
        )

    def _metadata(self) -> dict[str, Any]:
        return {"correlation": self.correlation, "n_removed": len(self.loo.removed)}


def loo_correlation(
    scores: ScoresLike, loo: LOOGroundTruth, correlation: str = "pearson", n_bootstrap: int = 1000, seed: int = 0
) -> MetricResult:
    """Correlation over removed examples between ``scores[q, i]`` and the leave-one-out effect, per query.

    Args:
        scores: ``(n_query, n_train)`` scores, positive = proponent.
        loo: ground truth from :func:`~datatrace.eval.loo_retraining`; its effect m(q; θ_{−i}) − m(q; θ) is
            positive when removing i raises the query's loss, i.e. when i is a proponent.
        correlation: ``"pearson"`` (default), ``"spearman"`` or ``"kendall"``.
    """
    metric = LOOCorrelation(loo, correlation, n_bootstrap=n_bootstrap, seed=seed)
    result = metric.update_all(scores).compute()
    result.name = f"LOO {correlation}"
    return result


# -- retrieval of planted examples ------------------------------------------------------------------------------------


@dataclass
class RetrievalResult:
    """Result of :func:`retrieval`.

    Attributes:
        recall: ``{k: mean Recall@k}``, the fraction of a query's relevant examples ranked in its top k.
        mrr: mean reciprocal rank of the best-ranked relevant example, with its bootstrap interval ``mrr_ci``.
        per_query_recall: ``(n_query, len(ks))``; per_query_rr: ``(n_query,)``; NaN for queries without relevant
            examples (counted in ``n_undefined``).
    """

    recall: dict[int, float]
    mrr: float
    mrr_ci: tuple[float, float]
    per_query_recall: np.ndarray
    per_query_rr: np.ndarray
    n_undefined: int

    def __str__(self) -> str:
        recalls = ", ".join(f"R@{k} {v:.3f}" for k, v in self.recall.items())
        return f"MRR {self.mrr:.3f} [{self.mrr_ci[0]:.3f}, {self.mrr_ci[1]:.3f}], {recalls}"


class Retrieval(QueryMetric):
    """Streaming Recall@k and reciprocal rank of known relevant training examples (see :func:`retrieval`)."""

    def __init__(
        self,
        relevant: Sequence[Sequence[int]] | np.ndarray,
        n_train: int,
        ks: Sequence[int] = (1, 5, 10),
        **bootstrap: Any,
    ):
        relevant = list(relevant)
        super().__init__(len(relevant), n_train, **bootstrap)
        self.relevant = [_relevant_indices(r, n_train) for r in relevant]
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or min(self.ks) < 1:
            raise InputError(f"ks must be positive ranks, got {ks!r}.")
        self.recall_ = np.full((self.n_query, len(self.ks)), np.nan)

    def _per_query(self, scores: Scores, queries: np.ndarray) -> np.ndarray:
        values = np.empty((scores.n_query, scores.n_train), dtype=np.float32)
        for rows, cols, block in score_blocks(scores):
            values[rows, cols] = block
        if not np.isfinite(values).all():
            raise NonFiniteError("retrieval got non-finite scores.")
        rr = np.full(len(queries), np.nan)
        for j, q in enumerate(queries):
            rel = self.relevant[q]
            if len(rel) == 0:
                self.recall_[q] = np.nan
                continue
            ranks = mid_ranks(values[j], rel)
            self.recall_[q] = [(ranks <= k).mean() for k in self.ks]
            rr[j] = 1.0 / ranks.min()
        return rr

    def compute(self) -> RetrievalResult:
        base = super().compute()
        recall = self.recall_[self.seen_]
        return RetrievalResult(
            recall={
                k: float(np.nanmean(recall[:, j])) if np.isfinite(recall[:, j]).any() else float("nan")
                for j, k in enumerate(self.ks)
            },
            mrr=base.mean,
            mrr_ci=base.ci,
            per_query_recall=self.recall_.copy(),
            per_query_rr=base.per_query,
            n_undefined=base.n_undefined,
        )


def mid_ranks(row: np.ndarray, items: np.ndarray) -> np.ndarray:
    """1-based rank of ``row[items]`` among all of ``row`` by decreasing value, ties sharing their average rank."""
    values = row[items]
    greater = (row[None, :] > values[:, None]).sum(axis=1)
    equal = (row[None, :] == values[:, None]).sum(axis=1)
    return 1 + greater + (equal - 1) / 2


def _relevant_indices(relevant: Sequence[int] | np.ndarray, n_train: int) -> np.ndarray:
    rel = np.asarray(relevant)
    if rel.dtype == bool:
        if rel.shape != (n_train,):
            raise InputError(f"A boolean relevance row must have n_train = {n_train} entries, got {rel.shape}.")
        rel = np.flatnonzero(rel)
    rel = np.unique(rel.astype(np.int64))
    if len(rel) and not 0 <= rel[0] <= rel[-1] < n_train:
        raise InputError(f"Relevant training indices must be in [0, {n_train}), got {rel[0]}..{rel[-1]}.")
    return rel


def retrieval(
    scores: ScoresLike,
    relevant: Sequence[Sequence[int]] | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> RetrievalResult:
    """Recall@k and mean reciprocal rank of planted training examples.

    Args:
        scores: ``(n_query, n_train)`` scores; higher = more strongly attributed (proponent).
        relevant: for each query, the indices of the training examples planted for it (or a boolean
            ``(n_query, n_train)`` matrix).
        ks: the cut-offs k of Recall@k.

    Ranks are by decreasing score; tied examples share their average rank, so a method that gives every example
    the same score gets the rank of a random guess, not the best one.
    """
    scores = as_scores(scores)
    metric = Retrieval(relevant, scores.n_train, ks, n_bootstrap=n_bootstrap, seed=seed)
    if scores.n_query != metric.n_query:
        raise InputError(f"Scores have {scores.n_query} queries but relevant examples are given for {metric.n_query}.")
    for r0 in range(0, scores.n_query, scores.query_chunk):
        metric.update(query_rows(scores, slice(r0, min(r0 + scores.query_chunk, scores.n_query))))
    return metric.compute()
