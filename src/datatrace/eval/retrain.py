"""Ground truth by retraining on random subsets of the training data.

``subset_retraining`` draws ``n_subsets`` random subsets of ``round(fraction · n_train)`` examples, trains a fresh
model on each with the user's ``train_fn(subset, seed)`` and records the task's measurement of every query. Runs
are written to a resumable :class:`~datatrace.store.Store` (one shard per subset) as they finish, so an interrupted
run continues where it stopped; a store from other data, settings or seed is refused.

With ``workers > 1`` subsets are trained in a pool of forked processes that inherit the data and ``train_fn``
(nothing is pickled per task, and closures work). Each worker uses one torch thread.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._utils import check_eval_mode, derive_seed, model_device, track
from ..data import Data, as_data, to_device
from ..errors import DatatraceError, DatatraceWarning, InputError, NonFiniteError
from ..grads import check_per_example
from ..store import Store
from ..task import Task

TrainFn = Callable[[Data, int], nn.Module]


@dataclass
class GroundTruth:
    """Measurements of retrained models.

    Attributes:
        masks: ``(n_subsets, n_train)`` bool, ``masks[s, i]`` = example i was in subset s.
        measurements: ``(n_subsets, n_query)`` float, the (loss-like) measurement of each query after training on
            subset s.
        seeds: ``(n_subsets,)`` the seed passed to ``train_fn`` for each subset.
        metadata: the settings that produced it.
    """

    masks: np.ndarray
    measurements: np.ndarray
    seeds: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


def measure(model: nn.Module, task: Task, data: Data, batch_size: int = 512) -> Tensor:
    """The task's measurement of every example of ``data`` (no gradients), shape ``(len(data),)``."""
    device = model_device(model)
    out = []
    with torch.no_grad():
        for _, batch in data.batches(batch_size):
            batch = to_device(batch, device)
            values = task.measurement(model, batch)
            check_per_example(values, len(batch[0]), "measurement")
            out.append(values.float().cpu())
    return torch.cat(out)


def subset_masks(n_train: int, n_subsets: int, fraction: float, seed: int) -> np.ndarray:
    """``(n_subsets, n_train)`` bool masks, each with exactly ``round(fraction · n_train)`` examples."""
    size = round(fraction * n_train)
    rng = np.random.default_rng(derive_seed(seed, "subset-masks"))
    masks = np.zeros((n_subsets, n_train), dtype=bool)
    for s in range(n_subsets):
        masks[s, rng.choice(n_train, size, replace=False)] = True
    return masks


def subset_retraining(
    train_fn: TrainFn,
    train: Sequence[Tensor] | torch.utils.data.Dataset | Data,
    query: Sequence[Tensor] | torch.utils.data.Dataset | Data,
    task: Task,
    n_subsets: int = 64,
    fraction: float = 0.5,
    seed: int = 0,
    workers: int = 1,
    cache_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> GroundTruth:
    """Retrain on random subsets and record the measurement of every query.

    Args:
        train_fn: ``train_fn(subset, seed) -> model`` trains a fresh model on ``subset`` (a :class:`Data`) and
            returns it in ``eval()`` mode.
        train, query: the full training set and the queries.
        task: defines the measurement recorded.
        n_subsets: number of subsets (one training run each).
        fraction: fraction of the training set in each subset, in (0, 1).
        seed: seeds the subsets and the per-subset training seeds.
        workers: processes training in parallel (capped at the number of CPU cores).
        cache_dir: directory of the resumable store; ``None`` keeps it temporary.
        verbose: progress bar.
    """
    train, query = as_data(train, "train"), as_data(query, "query")
    if not 0 < fraction < 1:
        raise InputError(f"fraction must be in (0, 1), got {fraction}.")
    if n_subsets < 2:
        raise InputError(f"n_subsets must be ≥ 2 to correlate anything, got {n_subsets}.")
    if round(fraction * len(train)) < 1:
        raise InputError(f"fraction {fraction} of {len(train)} training examples leaves empty subsets.")
    cores = os.cpu_count() or 1
    if workers > cores:
        warnings.warn(f"workers={workers} capped at {cores} CPU cores.", DatatraceWarning, stacklevel=2)
        workers = cores
    masks = subset_masks(len(train), n_subsets, fraction, seed)
    seeds = np.array([derive_seed(seed, "train-run", s) % 2**31 for s in range(n_subsets)], dtype=np.int64)
    meta = {
        "kind": "subset_retraining",
        "n_subsets": n_subsets,
        "fraction": fraction,
        "seed": seed,
        "train_fingerprint": train.fingerprint(),
        "query_fingerprint": query.fingerprint(),
        "task": repr(task),
        "train_fn": getattr(train_fn, "__qualname__", repr(train_fn)),
    }
    arrays = {"mask": ((len(train),), "bool"), "measurement": ((len(query),), "float32")}
    store = Store(cache_dir, n_subsets, arrays, meta, shard_size=1)
    todo = store.missing_shards()
    for s, values in track(
        _run(train_fn, train, query, task, masks, seeds, todo, workers), "retraining", len(todo), verbose
    ):
        store.write_shard(s, {"mask": masks[s][None], "measurement": values[None]})
    return GroundTruth(np.array(store["mask"]), np.array(store["measurement"]), seeds, dict(meta))


# The job of the current pool, inherited by forked workers instead of being pickled per task.
_JOB: tuple | None = None


def _run(train_fn, train, query, task, masks, seeds, todo, workers):
    global _JOB
    _JOB = (train_fn, train, query, task, masks, seeds)
    try:
        if workers <= 1 or len(todo) <= 1:
            yield from map(_train_one, todo)
            return
        ctx = mp.get_context("fork")
        with ctx.Pool(min(workers, len(todo)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            yield from pool.imap_unordered(_train_one, todo)
    finally:
        _JOB = None


def _train_one(s: int) -> tuple[int, np.ndarray]:
    train_fn, train, query, task, masks, seeds = _JOB
    seed = int(seeds[s])
    try:
        model = train_fn(train.subset(np.flatnonzero(masks[s])), seed)
        if not isinstance(model, nn.Module):
            raise InputError(f"train_fn must return an nn.Module, got {type(model).__name__}.")
        check_eval_mode(model, "the model returned by train_fn")
        values = measure(model, task, query).numpy()
        if not np.isfinite(values).all():
            raise NonFiniteError(f"non-finite measurement for query {int(np.flatnonzero(~np.isfinite(values))[0])}")
    except Exception as e:
        raise DatatraceError(f"Retraining failed on subset {s} (seed {seed}): {e}") from e
    return s, values
