"""Removal-and-retrain counterfactual curve: does removing a query's top proponents actually hurt it?

For each evaluated query q and each k, retrain without q's k highest-scoring training examples and record how much
q's (loss-like) measurement rose; do the same after removing k random examples. A faithful attributor's curve rises
well above the random one. Every run uses the same training seed as the reference model trained on all the data
(common random numbers), so the change reflects the removed data rather than a new initialisation. Runs share the
retraining engine of :func:`~datatrace.eval.subset_retraining` (resumable store, local or Ray workers).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._utils import derive_seed
from ..data import Data, as_data
from ..errors import InputError
from ..task import Task
from .metrics import ScoresLike, as_scores, bootstrap_ci, query_rows
from .retrain import TrainFn, _job_meta, check_subset_size, common_seed, retrain_runs


@dataclass
class RemovalCurve:
    """Result of :func:`removal_curve`.

    Attributes:
        ks: ``(n_k,)`` numbers of removed examples.
        queries: ``(n_q,)`` indices of the evaluated queries.
        top: ``(n_q, n_k)`` rise of each query's measurement after removing its top-k proponents.
        random: ``(n_q, n_k)`` rise after removing k random examples (the baseline).
        base: ``(n_q,)`` measurements of the model trained on all the data.
    """

    ks: np.ndarray
    queries: np.ndarray
    top: np.ndarray
    random: np.ndarray
    base: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def summary(self, level: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
        """Per k: mean rise with bootstrap interval over queries, for top-k and random removal."""
        return [
            {
                "k": int(k),
                "top": float(self.top[:, j].mean()),
                "top_ci": bootstrap_ci(self.top[:, j], level=level, seed=seed),
                "random": float(self.random[:, j].mean()),
                "random_ci": bootstrap_ci(self.random[:, j], level=level, seed=seed),
            }
            for j, k in enumerate(self.ks)
        ]

    def __str__(self) -> str:
        rows = [f"k={r['k']}: top {r['top']:+.4f} vs random {r['random']:+.4f}" for r in self.summary()]
        return "measurement rise after removal — " + "; ".join(rows)


def removal_curve(
    scores: ScoresLike,
    train_fn: TrainFn,
    train: Sequence[Tensor] | torch.utils.data.Dataset | Data,
    query: Sequence[Tensor] | torch.utils.data.Dataset | Data,
    task: Task,
    ks: Sequence[int] = (10, 50, 100),
    queries: int | Sequence[int] = 10,
    seed: int = 0,
    workers: int = 1,
    cache_dir: str | os.PathLike | None = None,
    verbose: bool = True,
    *,
    backend: str = "local",
    max_retries: int = 2,
    metadata: dict[str, Any] | None = None,
) -> RemovalCurve:
    """Retrain without each query's top-k proponents (and without k random examples) and measure the damage.

    Costs ``1 + 2 · len(queries) · len(ks)`` training runs.

    Args:
        scores: ``(n_query, n_train)`` scores, positive = proponent.
        train_fn, train, query, task: as for :func:`~datatrace.eval.subset_retraining`.
        ks: numbers of examples to remove, each in [1, n_train − n_classes].
        queries: the query indices to evaluate, or how many to draw at random (seeded by ``seed``).
        seed: seeds the query choice, the random removals and the single training seed shared by all runs.
        workers, cache_dir, verbose, backend, max_retries, metadata: as for
            :func:`~datatrace.eval.subset_retraining`.
    """
    scores = as_scores(scores)
    train, query = as_data(train, "train"), as_data(query, "query")
    n = len(train)
    if scores.shape != (len(query), n):
        raise InputError(f"Scores have shape {scores.shape} but there are {len(query)} queries and {n} examples.")
    ks = np.asarray(sorted(set(int(k) for k in ks)), dtype=np.int64)
    if len(ks) == 0 or ks[0] < 1 or ks[-1] >= n:
        raise InputError(f"ks must be in [1, n_train) = [1, {n}), got {ks.tolist()}.")
    check_subset_size(train, task, n - int(ks[-1]), f"removing {ks[-1]} of {n}")
    rng = np.random.default_rng(derive_seed(seed, "removal"))
    if isinstance(queries, (int, np.integer)):
        queries = np.sort(rng.choice(len(query), min(int(queries), len(query)), replace=False))
    queries = np.asarray(queries, dtype=np.int64)
    if len(queries) == 0 or queries.min() < 0 or queries.max() >= len(query):
        raise InputError(f"queries must be indices in [0, {len(query)}), got {queries.tolist()}.")

    removals = []  # (kind, query position, k, removed indices)
    for pos, q in enumerate(queries):
        _, top = query_rows(scores, slice(int(q), int(q) + 1)).topk(int(ks[-1]))
        shuffled = rng.permutation(n)
        for k in ks:
            removals += [("top", pos, k, top[0, :k]), ("random", pos, k, shuffled[:k])]
    masks = np.ones((1 + len(removals), n), dtype=bool)
    for row, (_, _, _, removed) in enumerate(removals, start=1):
        masks[row, removed] = False
    train_seed = common_seed(seed)
    meta = {
        "kind": "removal_curve",
        "ks": ks.tolist(),
        "queries": queries.tolist(),
        "seed": seed,
        "train_seed": train_seed,
        "masks_fingerprint": hashlib.sha256(np.packbits(masks).tobytes()).hexdigest()[:16],
        **_job_meta(train_fn, train, query, task, metadata),
    }
    names = ["the full training set"] + [f"query {queries[p]} without {kind} {k}" for kind, p, k, _ in removals]
    arrays = retrain_runs(
        train_fn,
        train,
        query.subset(queries),
        task,
        masks,
        np.full(len(masks), train_seed, dtype=np.int64),
        names,
        cache_dir,
        meta,
        workers=workers,
        backend=backend,
        max_retries=max_retries,
        verbose=verbose,
    )
    measured = arrays["measurement"].astype(np.float64)
    base = measured[0]
    rise = {"top": np.zeros((len(queries), len(ks))), "random": np.zeros((len(queries), len(ks)))}
    for row, (kind, pos, k, _) in enumerate(removals, start=1):
        rise[kind][pos, np.searchsorted(ks, k)] = measured[row, pos] - base[pos]
    meta["method"] = scores.metadata.get("method")
    return RemovalCurve(ks, queries, rise["top"], rise["random"], base, meta)
