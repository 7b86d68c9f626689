"""Ground truth by retraining on random subsets of the training data.

``subset_retraining`` draws ``n_subsets`` random subsets of ``round(fraction · n_train)`` examples, trains
``seeds_per_subset`` fresh models on each with the user's ``train_fn(subset, seed)`` and records the task's
measurement of every query. Each training run is one row of a resumable :class:`~datatrace.store.Store` (mask,
measurement, seed, training time, attempts), written as soon as the run finishes: an interrupted computation continues
where it stopped, and a store from other data, settings, seed or benchmark version is refused.

Execution (:func:`retrain_runs`, shared with leave-one-out and removal experiments):

- ``backend="local"``: with ``workers > 1``, a pool of forked processes that inherit the data and ``train_fn``
  (nothing is pickled per run but the run's index, and closures work). A worker that dies (killed, out of memory,
  segfault) is replaced and its run retried; finished runs are already in the store and never redone.
- ``backend="ray"`` (extra ``[ray]``): Ray tasks on the running Ray cluster (a local one with ``workers`` CPUs is
  started when none is). The job (data, ``train_fn``, task) is put in the object store once and cached in each
  worker process. Runs lost with their worker are retried the same way.

Every run trains with one torch thread, so the ground truth is bit-identical for any backend and number of workers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
import traceback
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._utils import check_eval_mode, derive_seed, model_device, track
from ..data import Data, as_data, to_device
from ..errors import DatatraceError, DatatraceWarning, InputError, NonFiniteError, StoreMismatchError, check_choice
from ..grads import check_per_example
from ..store import Store
from ..task import ClassificationTask, Task

TrainFn = Callable[[Data, int], nn.Module]
BACKENDS = ("local", "ray")
#: Per-run arrays of a retraining store besides the mask and the measurements.
RUN_ARRAYS = {"seed": ((), "int64"), "train_seconds": ((), "float64"), "attempts": ((), "int64")}


@dataclass
class GroundTruth:
    """Measurements of retrained models.

    Attributes:
        masks: ``(n_subsets, n_train)`` bool, ``masks[s, i]`` = example i was in subset s.
        measurements: ``(n_subsets, n_query)`` float, the (loss-like) measurement of each query after training on
            subset s, averaged over the ``seeds_per_subset`` runs of that subset.
        seeds: ``(n_subsets, seeds_per_subset)`` the seed passed to ``train_fn`` for each run.
        metadata: the settings that produced it (the store header).
        run_measurements: ``(n_subsets, seeds_per_subset, n_query)`` the measurements of every run (``None`` means
            one run per subset, equal to ``measurements``).
        train_seconds, attempts: ``(n_subsets, seeds_per_subset)`` wall time of each run and how many times it was
            started (> 1 when a worker died and the run was retried).
    """

    masks: np.ndarray
    measurements: np.ndarray
    seeds: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    run_measurements: np.ndarray | None = None
    train_seconds: np.ndarray | None = None
    attempts: np.ndarray | None = None

    @property
    def seeds_per_subset(self) -> int:
        return 1 if self.run_measurements is None else self.run_measurements.shape[1]

    @classmethod
    def load(cls, path: str | os.PathLike) -> GroundTruth:
        """Open a complete ground-truth store written by :func:`subset_retraining` (e.g. on another machine)."""
        meta, arrays = open_store(path, "subset_retraining")
        n_subsets, n_seeds = meta["n_subsets"], meta["seeds_per_subset"]
        return _ground_truth(arrays, n_subsets, n_seeds, meta)


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


def run_seeds(n_subsets: int, seeds_per_subset: int, seed: int, common_random_numbers: bool) -> np.ndarray:
    """``(n_subsets, seeds_per_subset)`` training seeds; with common random numbers they depend only on the column."""
    return np.array(
        [
            [
                derive_seed(seed, "train-run", "common" if common_random_numbers else s, r) % 2**31
                for r in range(seeds_per_subset)
            ]
            for s in range(n_subsets)
        ],
        dtype=np.int64,
    )


def common_seed(seed: int) -> int:
    """The one training seed of leave-out experiments (LOO, removal): run 0 of common random numbers."""
    return int(run_seeds(1, 1, seed, common_random_numbers=True)[0, 0])


def data_order(data: Data, seed: int, epoch: int = 0) -> np.ndarray:
    """Positions of ``data``'s examples sorted by a seeded random key of their position in the full training set.

    For a subset made by :func:`subset_retraining` (``data.indices`` set), every subset trained with the same seed
    visits the examples it shares with another subset in the same relative order — the data-order half of common
    random numbers. For data that is not a subset this is an ordinary seeded permutation.
    """
    ids = np.arange(len(data)) if data.indices is None else data.indices
    return np.argsort(_random_keys(ids, derive_seed(seed, "data-order", epoch)), kind="stable")


def _random_keys(ids: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random uint64 per id that depends only on ``(seed, id)`` (SplitMix64 finaliser)."""
    z = ids.astype(np.uint64) ^ np.uint64(seed)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


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
    *,
    seeds_per_subset: int = 1,
    common_random_numbers: bool = False,
    backend: str = "local",
    max_retries: int = 2,
    metadata: dict[str, Any] | None = None,
) -> GroundTruth:
    """Retrain on random subsets and record the measurement of every query.

    Args:
        train_fn: ``train_fn(subset, seed) -> model`` trains a fresh model on ``subset`` (a :class:`Data` whose
            ``indices`` are the examples' positions in ``train``) and returns it in ``eval()`` mode. It must be
            deterministic given the seed; the seed should set the initialisation and the data order (see
            :func:`data_order`).
        train, query: the full training set and the queries.
        task: defines the measurement recorded.
        n_subsets: number of subsets.
        fraction: fraction of the training set in each subset, in (0, 1).
        seed: seeds the subsets and the training seeds.
        workers: training runs in parallel (capped at the CPU cores for ``"local"``, at the cluster's CPUs for Ray).
        cache_dir: directory of the resumable store; ``None`` keeps it temporary.
        verbose: progress bar.
        seeds_per_subset: training runs per subset with different seeds; ``measurements`` is their mean and ≥ 2
            lets :func:`~datatrace.eval.noise_ceiling` measure how reproducible the ground truth itself is.
        common_random_numbers: the training seed depends only on the run's index within its subset, so all subsets
            share the initialisation and the data order; differences between subsets then come from the data.
        backend: ``"local"`` (forked process pool) or ``"ray"``.
        max_retries: how many times a run is restarted after its worker died before giving up.
        metadata: extra identification written to the store header (e.g. the benchmark name and version); a store
            with other metadata is refused.
    """
    train, query = as_data(train, "train"), as_data(query, "query")
    if not 0 < fraction < 1:
        raise InputError(f"fraction must be in (0, 1), got {fraction}.")
    if n_subsets < 2:
        raise InputError(f"n_subsets must be ≥ 2 to correlate anything, got {n_subsets}.")
    if not (isinstance(seeds_per_subset, (int, np.integer)) and seeds_per_subset >= 1):
        raise InputError(f"seeds_per_subset must be an int ≥ 1, got {seeds_per_subset!r}.")
    check_subset_size(train, task, round(fraction * len(train)), f"fraction {fraction} of {len(train)}")
    masks = subset_masks(len(train), n_subsets, fraction, seed)
    seeds = run_seeds(n_subsets, seeds_per_subset, seed, common_random_numbers)
    meta = {
        "kind": "subset_retraining",
        "n_subsets": n_subsets,
        "seeds_per_subset": int(seeds_per_subset),
        "common_random_numbers": bool(common_random_numbers),
        "fraction": fraction,
        "seed": seed,
        **_job_meta(train_fn, train, query, task, metadata),
    }
    names = [f"subset {s}" for s in range(n_subsets) for _ in range(seeds_per_subset)]
    arrays = retrain_runs(
        train_fn,
        train,
        query,
        task,
        np.repeat(masks, seeds_per_subset, axis=0),
        seeds.reshape(-1),
        names,
        cache_dir,
        meta,
        workers=workers,
        backend=backend,
        max_retries=max_retries,
        verbose=verbose,
    )
    return _ground_truth(arrays, n_subsets, seeds_per_subset, meta)


def _ground_truth(arrays: dict[str, np.ndarray], n_subsets: int, n_seeds: int, meta: dict) -> GroundTruth:
    runs = arrays["measurement"].reshape(n_subsets, n_seeds, -1)
    return GroundTruth(
        masks=arrays["mask"][::n_seeds],
        measurements=runs.mean(axis=1) if n_seeds > 1 else runs[:, 0],
        seeds=arrays["seed"].reshape(n_subsets, n_seeds),
        metadata=dict(meta),
        run_measurements=runs,
        train_seconds=arrays["train_seconds"].reshape(n_subsets, n_seeds),
        attempts=arrays["attempts"].reshape(n_subsets, n_seeds),
    )


def check_subset_size(train: Data, task: Task, size: int, what: str) -> None:
    """Refuse training subsets that are empty or, for classification, smaller than the number of classes."""
    if size < 1:
        raise InputError(f"{what} training examples leaves empty subsets.")
    if isinstance(task, ClassificationTask):
        labels = torch.cat([batch[-1].reshape(-1) for _, batch in train.batches(8192)])
        n_classes = len(torch.unique(labels))
        if size < n_classes:
            raise InputError(
                f"{what} training examples gives subsets of {size} examples, fewer than the {n_classes} classes; "
                "use larger subsets."
            )


def _job_meta(train_fn: TrainFn, train: Data, query: Data, task: Task, metadata: dict | None) -> dict[str, Any]:
    return {
        "train_fingerprint": train.fingerprint(),
        "query_fingerprint": query.fingerprint(),
        "task": repr(task),
        "train_fn": getattr(train_fn, "__qualname__", repr(train_fn)),
        "context": dict(metadata or {}),
    }


def open_store(path: str | os.PathLike, kind: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The metadata and arrays of a complete retraining store of the given ``kind``."""
    header_file = Path(path) / "header.json"
    if not header_file.exists():
        raise InputError(f"{path} is not a datatrace store (no header.json).")
    header = json.loads(header_file.read_text())
    if header["meta"].get("kind") != kind:
        raise StoreMismatchError(f"{path} holds {header['meta'].get('kind')!r} results, not {kind!r}.")
    specs = {k: (tuple(v["shape"][1:]), v["dtype"]) for k, v in header["arrays"].items()}
    store = Store(path, header["n_rows"], specs, header["meta"], header["shard_size"])
    if not store.complete:
        raise InputError(f"The store at {path} is incomplete ({len(store.missing_shards())} runs missing); resume it.")
    return store.meta, {k: np.array(store[k]) for k in specs}


def retrain_runs(
    train_fn: TrainFn,
    train: Data,
    query: Data,
    task: Task,
    masks: np.ndarray,
    seeds: np.ndarray,
    names: Sequence[str],
    cache_dir: str | os.PathLike | None,
    meta: dict[str, Any],
    *,
    workers: int = 1,
    backend: str = "local",
    max_retries: int = 2,
    verbose: bool = True,
) -> dict[str, np.ndarray]:
    """Train one model per row of ``masks`` with the matching seed and store the measurement of every query.

    Returns the store's arrays: ``mask``, ``measurement`` and the per-run :data:`RUN_ARRAYS`, one row per run.
    """
    check_choice("backend", backend, BACKENDS)
    if workers < 1:
        raise InputError(f"workers must be ≥ 1, got {workers}.")
    if max_retries < 0:
        raise InputError(f"max_retries must be ≥ 0, got {max_retries}.")
    arrays = {"mask": ((len(train),), "bool"), "measurement": ((len(query),), "float32"), **RUN_ARRAYS}
    store = Store(cache_dir, len(masks), arrays, meta, shard_size=1)
    todo = store.missing_shards()
    job = _Job(train_fn, train, query, task, masks, seeds, list(names))
    runner = _ray_runs if backend == "ray" else _local_runs
    for run, values, seconds, attempts in track(
        runner(job, todo, workers, max_retries), "retraining", len(todo), verbose
    ):
        row = {"mask": masks[run][None], "measurement": values[None], "seed": seeds[run : run + 1]}
        store.write_shard(run, {**row, "train_seconds": np.array([seconds]), "attempts": np.array([attempts])})
    return {name: np.array(store[name]) for name in arrays}


@dataclass
class _Job:
    """Everything a worker needs; inherited by forked workers, put once in Ray's object store."""

    train_fn: TrainFn
    train: Data
    query: Data
    task: Task
    masks: np.ndarray
    seeds: np.ndarray
    names: list[str]

    def describe(self, run: int) -> str:
        return f"{self.names[run]} (seed {int(self.seeds[run])})"

    def train_one(self, run: int) -> tuple[np.ndarray, float]:
        """Train run ``run`` and measure the queries; errors name the run and its seed."""
        start = time.perf_counter()
        try:
            model = self.train_fn(self.train.subset(np.flatnonzero(self.masks[run])), int(self.seeds[run]))
            if not isinstance(model, nn.Module):
                raise InputError(f"train_fn must return an nn.Module, got {type(model).__name__}.")
            check_eval_mode(model, "the model returned by train_fn")
            values = measure(model, self.task, self.query).numpy()
            if not np.isfinite(values).all():
                bad = int(np.flatnonzero(~np.isfinite(values))[0])
                raise NonFiniteError(f"non-finite measurement for query {bad}")
        except Exception as e:
            raise DatatraceError(f"Retraining failed on {self.describe(run)}: {e}") from e
        return values, time.perf_counter() - start


RunResult = tuple[int, np.ndarray, float, int]  # run, measurements, seconds, attempts


def _cap_workers(workers: int, available: int, what: str) -> int:
    if workers > available:
        warnings.warn(f"workers={workers} capped at {available} {what}.", DatatraceWarning, stacklevel=5)
    return min(workers, available)


def _retry(job: _Job, run: int, attempts: dict[int, int], max_retries: int, cause: str, pending: deque) -> None:
    """Queue a run whose worker died again, or give up after ``max_retries`` retries."""
    if attempts[run] > max_retries:
        raise DatatraceError(
            f"Retraining {job.describe(run)} was lost {attempts[run]} times ({cause}); giving up. "
            "Check the worker's memory use, or raise max_retries."
        )
    warnings.warn(f"{cause} while training {job.describe(run)}; retrying it.", DatatraceWarning, stacklevel=2)
    pending.appendleft(run)


@contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- local backend: forked workers ----------------------------------------------------------------------------------

# The job of the current pool, inherited by forked workers instead of being pickled.
_JOB: _Job | None = None


class _RemoteTraceback(Exception):
    """The formatted traceback of an error raised in a worker process."""


def _local_runs(job: _Job, todo: list[int], workers: int, max_retries: int) -> Iterator[RunResult]:
    workers = _cap_workers(workers, os.cpu_count() or 1, "CPU cores")
    if workers <= 1 or len(todo) <= 1:
        with _one_thread():
            for run in todo:
                yield run, *job.train_one(run), 1
        return
    global _JOB
    _JOB = job
    ctx = mp.get_context("fork")
    slots: dict[Any, list] = {}  # connection -> [process, run in progress or None]

    def spawn() -> None:
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_worker_loop, args=(child,), daemon=True)
        process.start()
        child.close()
        slots[parent] = [process, None]

    pending, attempts = deque(todo), dict.fromkeys(todo, 0)
    try:
        for _ in range(min(workers, len(todo))):
            spawn()
        while pending or any(run is not None for _, run in slots.values()):
            for conn, slot in list(slots.items()):
                if slot[1] is None and pending:
                    try:
                        conn.send(pending[0])
                    except OSError:  # an idle worker is gone: replace it (its next run was never started)
                        del slots[conn]
                        spawn()
                        continue
                    slot[1] = pending.popleft()
                    attempts[slot[1]] += 1
            busy = [conn for conn, (_, run) in slots.items() if run is not None]
            if not busy:
                continue
            ready = set(wait(busy + [slots[conn][0].sentinel for conn in busy]))
            for conn in busy:
                process, run = slots[conn]
                if conn not in ready and process.sentinel not in ready:
                    continue
                message = _receive(conn)
                if message is not None:
                    slots[conn][1] = None
                    kind, payload = message
                    if kind == "error":
                        raise DatatraceError(payload[0]) from _RemoteTraceback(payload[1])
                    yield run, *payload, attempts[run]
                elif not process.is_alive():
                    del slots[conn]
                    conn.close()
                    _retry(job, run, attempts, max_retries, f"a worker died (exit code {process.exitcode})", pending)
                    spawn()
    finally:
        _JOB = None
        for conn, (process, _) in slots.items():
            try:
                conn.send(None)
            except OSError:
                pass
            process.join(timeout=1)
            if process.is_alive():
                process.terminate()
                process.join()
            conn.close()


def _receive(conn) -> tuple | None:
    """The worker's message, or ``None`` when there is none (yet) or the worker is gone."""
    try:
        return conn.recv() if conn.poll() else None
    except (EOFError, OSError):
        return None


def _worker_loop(conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    torch.set_num_threads(1)
    job = _JOB
    while True:
        try:
            run = conn.recv()
        except EOFError:
            return
        if run is None:
            return
        try:
            conn.send(("ok", job.train_one(run)))
        except Exception as e:
            conn.send(("error", (str(e), traceback.format_exc())))


# -- Ray backend ------------------------------------------------------------------------------------------------------


def _worker_lost(ray) -> tuple[type[Exception], ...]:
    """Ray's exceptions for a task lost with its worker or node (the run itself did not fail)."""
    names = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError")
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


# (token, job) of the last job this Ray worker process fetched from the object store.
_RAY_CACHED: tuple[str, _Job] | None = None


def _ray_train_one(job_ref: list, token: str, run: int) -> tuple[np.ndarray, float]:
    """A Ray task: train one run, fetching the job from the object store once per worker process."""
    global _RAY_CACHED
    if _RAY_CACHED is None or _RAY_CACHED[0] != token:
        import ray

        _RAY_CACHED = (token, ray.get(job_ref[0]))
    torch.set_num_threads(1)
    return _RAY_CACHED[1].train_one(run)


def _ray_runs(job: _Job, todo: list[int], workers: int, max_retries: int) -> Iterator[RunResult]:
    try:
        import ray
    except ImportError as e:
        raise ImportError("backend='ray' needs Ray: pip install 'datatrace[ray]'.") from e
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=min(workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    try:
        workers = _cap_workers(workers, int(ray.cluster_resources().get("CPU", 1)), "CPUs of the Ray cluster")
        job_ref = [ray.put(job)]  # in a list, so that tasks receive the reference and fetch it once per process
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_train_one)
        token = uuid.uuid4().hex
        pending, attempts, in_flight = deque(todo), dict.fromkeys(todo, 0), {}
        while pending or in_flight:
            while pending and len(in_flight) < workers:
                run = pending.popleft()
                attempts[run] += 1
                in_flight[task.remote(job_ref, token, run)] = run
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            run = in_flight.pop(ref)
            try:
                values, seconds = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                raise DatatraceError(str(e.cause)) from e
            except _worker_lost(ray) as e:
                _retry(job, run, attempts, max_retries, f"a Ray worker died ({type(e).__name__})", pending)
                continue
            yield run, values, seconds, attempts[run]
    finally:
        if started:
            ray.shutdown()
