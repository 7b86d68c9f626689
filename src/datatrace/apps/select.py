"""Data selection: choose the training examples that most help a target set of queries.

Given attribution scores of target queries against a candidate pool (positive = proponent: training on the example
lowers the query's loss), :func:`select` keeps a budget of candidates:

- ``"sum"``: largest Σ_q score[q, i] — the first-order (additive) estimate of how much example i lowers the total
  target loss; opponents of some queries are counted against their help to others.
- ``"max"``: largest max_q score[q, i] — an example that strongly supports any one target query (LESS-style).
- ``"balanced"``: round robin over the queries, each taking its best not-yet-selected proponent in turn, so that
  every target query gets an equal share of the budget however different the score scales of the queries are.

:func:`select_random` and :func:`select_oracle` are the baselines at equal budget: a seeded random draw and the top of
a known per-example utility (e.g. in-domain membership or measured leave-one-out gain). All three return a
:class:`Selection`. Scores are streamed block by block (``sum``/``max``) or through :meth:`Scores.topk`
(``balanced``); the full matrix is never materialised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._utils import derive_seed
from ..errors import InputError, NonFiniteError, check_choice
from ..eval.metrics import ScoresLike, as_scores, score_blocks

STRATEGIES = ("sum", "max", "balanced")


@dataclass
class Selection:
    """Selected pool indices.

    Attributes:
        indices: ``(budget,)`` pool indices in order of selection (best first).
        utility: ``(budget,)`` the value each was selected by (aggregate score, oracle utility; NaN for random).
        n_pool: size of the candidate pool.
        strategy: ``"sum"``, ``"max"``, ``"balanced"``, ``"random"`` or ``"oracle"``.
    """

    indices: np.ndarray
    utility: np.ndarray
    n_pool: int
    strategy: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        """``(n_pool,)`` bool, True for the selected examples."""
        out = np.zeros(self.n_pool, dtype=bool)
        out[self.indices] = True
        return out

    def __len__(self) -> int:
        return len(self.indices)


def select(
    scores: ScoresLike,
    budget: int,
    strategy: str = "sum",
    *,
    exclude: Sequence[int] | np.ndarray | None = None,
) -> Selection:
    """Select ``budget`` pool examples that most help the target queries.

    Args:
        scores: ``(n_target_queries, n_pool)`` attribution scores, positive = proponent (any scale; ``"balanced"``
            uses only the order within each query).
        budget: number of examples to keep, 1 ≤ budget ≤ n_pool − len(exclude).
        strategy: ``"sum"``, ``"max"`` or ``"balanced"`` (see the module docstring).
        exclude: pool indices that may not be selected (e.g. examples already in the training set).

    Returns:
        A :class:`Selection`; ties are broken by the lower pool index, so the result is deterministic.
    """
    check_choice("selection strategy", strategy, STRATEGIES)
    scores = as_scores(scores)
    blocked = _blocked(exclude, scores.n_train)
    _check_budget(budget, scores.n_train - int(blocked.sum()))
    if strategy == "balanced":
        indices, utility = _balanced(scores, budget, blocked)
    else:
        aggregate = _aggregate(scores, strategy)
        aggregate[blocked] = -np.inf
        indices = np.argsort(-aggregate, kind="stable")[:budget]
        utility = aggregate[indices]
    meta = {"n_queries": scores.n_query, "method": scores.metadata.get("method"), "n_excluded": int(blocked.sum())}
    return Selection(indices, utility.astype(np.float64), scores.n_train, strategy, meta)


def select_random(n_pool: int, budget: int, seed: int = 0) -> Selection:
    """``budget`` distinct pool indices drawn uniformly at random (seeded) — the baseline at equal budget."""
    _check_budget(budget, n_pool)
    rng = np.random.default_rng(derive_seed(seed, "select-random"))
    indices = rng.choice(n_pool, budget, replace=False)
    return Selection(indices, np.full(budget, np.nan), n_pool, "random", {"seed": seed})


def select_oracle(utility: Sequence[float] | np.ndarray, budget: int) -> Selection:
    """The ``budget`` examples of largest known ``utility`` — the reference an attributor tries to approach.

    Args:
        utility: ``(n_pool,)`` a per-example value known from outside attribution, e.g. 1 for in-domain examples and
            0 otherwise, or the measured drop of the target loss when the example is added.
        budget: number of examples to keep.
    """
    utility = np.asarray(utility, dtype=np.float64)
    if utility.ndim != 1:
        raise InputError(f"utility must be a (n_pool,) vector, got shape {utility.shape}.")
    _check_finite(utility, "oracle utility")
    _check_budget(budget, len(utility))
    indices = np.argsort(-utility, kind="stable")[:budget]
    return Selection(indices, utility[indices], len(utility), "oracle")


def _aggregate(scores, strategy: str) -> np.ndarray:
    """Σ_q or max_q of the scores of every pool example, streamed over score blocks."""
    out = np.zeros(scores.n_train) if strategy == "sum" else np.full(scores.n_train, -np.inf)
    for _, cols, block in score_blocks(scores):
        _check_finite(block, "scores")
        if strategy == "sum":
            out[cols] += block.sum(axis=0, dtype=np.float64)
        else:
            out[cols] = np.maximum(out[cols], block.max(axis=0))
    return out


def _balanced(scores, budget: int, blocked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Round robin over queries, each taking its best example not yet taken, from top-k lists.

    k starts at what the budget needs if the lists did not overlap and doubles whenever a query runs out.
    """
    k = min(scores.n_train, -(-budget // scores.n_query) + int(blocked.sum()))
    while True:
        values, ranked = scores.topk(k)
        _check_finite(values, "scores")
        taken, pointer = blocked.copy(), np.zeros(scores.n_query, dtype=np.int64)
        indices, utility = [], []
        while len(indices) < budget and (pointer < k).all():
            for q in range(scores.n_query):
                while pointer[q] < k and taken[ranked[q, pointer[q]]]:
                    pointer[q] += 1
                if pointer[q] == k:
                    break  # this query's list is used up: look deeper
                taken[ranked[q, pointer[q]]] = True
                indices.append(ranked[q, pointer[q]])
                utility.append(values[q, pointer[q]])
                if len(indices) == budget:
                    return np.asarray(indices, dtype=np.int64), np.asarray(utility)
        k = min(scores.n_train, 2 * k)


def _blocked(exclude, n_pool: int) -> np.ndarray:
    blocked = np.zeros(n_pool, dtype=bool)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        bad = exclude[(exclude < 0) | (exclude >= n_pool)]
        if len(bad):
            raise InputError(f"exclude holds indices outside the pool [0, {n_pool}): {bad[:10].tolist()}.")
        blocked[exclude] = True
    return blocked


def _check_budget(budget: int, available: int) -> None:
    if not isinstance(budget, (int, np.integer)) or not 1 <= budget <= available:
        raise InputError(
            f"budget must be an integer in [1, {available}] (the selectable pool), got {budget!r}; "
            "lower the budget or enlarge the pool."
        )


def _check_finite(values: np.ndarray, what: str) -> None:
    if not np.isfinite(values).all():
        raise NonFiniteError(f"{what} contain NaN or infinite values; selection needs finite values.")
