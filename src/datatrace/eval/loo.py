"""Leave-one-out ground truth: retrain without each of a set of training examples and record every query's change.

All runs (the full training set and each leave-one-out set) use the *same* training seed: removing one example moves
a query's measurement far less than changing the seed would, so only common random numbers make the effect visible.
For a convex model trained to convergence the seed does not matter at all. Runs share the retraining engine of
:func:`~datatrace.eval.subset_retraining` (resumable store, local or Ray workers, retried crashes).
"""

from __future__ import annotations

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
from .retrain import TrainFn, _job_meta, check_subset_size, common_seed, open_store, retrain_runs


@dataclass
class LOOGroundTruth:
    """Leave-one-out effects.

    Attributes:
        removed: ``(k,)`` indices of the training examples left out, one run each.
        effects: ``(k, n_query)`` ``m(q; θ_{−i}) − m(q; θ)``: how much leaving example ``removed[j]`` out raised query
            q's (loss-like) measurement. Positive = the example was a proponent, matching the sign of scores.
        base: ``(n_query,)`` measurements of the model trained on the full training set.
        n_train: size of the full training set.
        seed: the one training seed used by every run.
        metadata: the settings that produced it (the store header).
    """

    removed: np.ndarray
    effects: np.ndarray
    base: np.ndarray
    n_train: int
    seed: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LOOGroundTruth:
        """Open a complete store written by :func:`loo_retraining` (e.g. a test fixture)."""
        meta, arrays = open_store(path, "loo_retraining")
        return _loo_ground_truth(arrays, meta)


def loo_retraining(
    train_fn: TrainFn,
    train: Sequence[Tensor] | torch.utils.data.Dataset | Data,
    query: Sequence[Tensor] | torch.utils.data.Dataset | Data,
    task: Task,
    removed: int | Sequence[int] | np.ndarray = 50,
    seed: int = 0,
    workers: int = 1,
    cache_dir: str | os.PathLike | None = None,
    verbose: bool = True,
    *,
    backend: str = "local",
    max_retries: int = 2,
    metadata: dict[str, Any] | None = None,
) -> LOOGroundTruth:
    """Retrain without each example of ``removed`` (and once on everything) with one seed; record the changes.

    Args:
        train_fn: ``train_fn(subset, seed) -> model`` in ``eval()`` mode, as for
            :func:`~datatrace.eval.subset_retraining`.
        train, query: the full training set and the queries.
        task: defines the measurement.
        removed: the training indices to leave out, or how many to draw at random (seeded by ``seed``).
        seed: seeds the random choice of ``removed`` and the single training seed shared by all runs.
        workers, cache_dir, verbose, backend, max_retries, metadata: as for
            :func:`~datatrace.eval.subset_retraining`.
    """
    train, query = as_data(train, "train"), as_data(query, "query")
    n = len(train)
    if isinstance(removed, (int, np.integer)):
        if not 1 <= removed <= n:
            raise InputError(f"removed must be between 1 and n_train = {n}, got {removed}.")
        rng = np.random.default_rng(derive_seed(seed, "loo-removed"))
        removed = np.sort(rng.choice(n, int(removed), replace=False))
    removed = np.asarray(removed, dtype=np.int64)
    if removed.ndim != 1 or len(removed) == 0 or len(np.unique(removed)) != len(removed):
        raise InputError("removed must be a non-empty list of distinct training indices.")
    if removed.min() < 0 or removed.max() >= n:
        raise InputError(f"removed indices must be in [0, {n}), got {removed.min()}..{removed.max()}.")
    check_subset_size(train, task, n - 1, f"leaving one of {n}")
    masks = np.ones((len(removed) + 1, n), dtype=bool)
    masks[np.arange(1, len(removed) + 1), removed] = False
    train_seed = common_seed(seed)
    meta = {
        "kind": "loo_retraining",
        "removed": removed.tolist(),
        "seed": seed,
        "train_seed": train_seed,
        **_job_meta(train_fn, train, query, task, metadata),
    }
    names = ["the full training set"] + [f"leave-one-out of example {i}" for i in removed]
    arrays = retrain_runs(
        train_fn,
        train,
        query,
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
    return _loo_ground_truth(arrays, meta)


def _loo_ground_truth(arrays: dict[str, np.ndarray], meta: dict) -> LOOGroundTruth:
    measurements = arrays["measurement"].astype(np.float64)
    return LOOGroundTruth(
        removed=np.asarray(meta["removed"], dtype=np.int64),
        effects=measurements[1:] - measurements[0],
        base=measurements[0],
        n_train=arrays["mask"].shape[1],
        seed=int(meta["train_seed"]),
        metadata=dict(meta),
    )
