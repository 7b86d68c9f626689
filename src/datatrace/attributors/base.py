"""The fit/score path shared by every attributor.

``Attributor(model, task, **hyperparameters).fit(train).score(query) -> Scores``

``fit`` computes per-example training features for each model (a final model, checkpoints or ensemble members) and
writes them shard by shard into a resumable :class:`~datatrace.store.Store`; ``score`` computes query features in
memory and returns lazy :class:`~datatrace.scores.Scores`. A subclass supplies only its math:

- ``_train_arrays()``: the per-example arrays it stores, ``{name: (row_shape, dtype)}``;
- ``_train_batch(model, batch, offset)``: those arrays for one batch;
- ``_query_batch(model, batch, offset, fn)``: query features for one batch, from the gradient of the per-example
  function ``fn`` (the task's measurement when scoring, its loss for self-influence);
- ``_finalize()``: optional work once all training features exist (e.g. a kernel inverse);
- ``_scores(query_features, train)``: the :class:`Scores` from one query-feature matrix per model against one
  mapping of training arrays per model (the stores, or in-memory arrays of other examples).
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._utils import check_eval_mode, model_device, model_fingerprint, track
from .._version import __version__
from ..data import Data, as_data, to_device
from ..errors import DatatraceWarning, InputError, NotFittedError, check_choice
from ..grads import check_per_example, num_parameters, per_example_gradients, select_parameters
from ..projection import KINDS, RandomProjector
from ..scores import Scores
from ..store import Store
from ..task import Task

Batch = tuple[Tensor, ...]

#: Projection dimension used by ``proj_dim="auto"``; models with at most this many parameters are not projected.
AUTO_PROJ_DIM = 2048
#: Hyperparameters that configure execution only and never change the scores.
EXECUTION_PARAMS = ("batch_size", "shard_size", "cache_dir", "verbose")


class Attributor:
    """Base class of all attributors.

    Args:
        model: a trained ``nn.Module`` in ``eval()`` mode, or a list of them (checkpoints or independently trained
            models) for methods that combine several.
        task: the :class:`~datatrace.task.Task` that defines the training loss and the measurement.
        params: parameters to differentiate: ``"all"``, ``"last"`` or a list of module/parameter names.
        proj_dim: dimension of the seeded random projection of gradients; ``None`` keeps full gradients;
            ``"auto"`` projects to ``AUTO_PROJ_DIM`` dimensions only when the model has more parameters than that.
        proj_kind: ``"rademacher"`` or ``"gaussian"``.
        seed: seed of every random choice (projection); the same seed gives bit-identical scores on CPU.
        batch_size: examples per batch when computing features.
        shard_size: training examples per store shard (the unit of resumption).
        cache_dir: directory of the on-disk feature store; a rerun resumes from it. ``None`` uses a temporary one.
        verbose: show progress bars (only on a terminal, never in CI).
    """

    method = "attributor"
    #: Hyperparameters that change the scores but not the stored training features (left out of the store header,
    #: so that one feature store serves every value of them).
    score_only_params: tuple[str, ...] = ()

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module],
        task: Task,
        *,
        params: str | Sequence[str] = "all",
        proj_dim: int | str | None = None,
        proj_kind: str = "rademacher",
        seed: int = 0,
        batch_size: int = 64,
        shard_size: int = 1024,
        cache_dir: str | os.PathLike | None = None,
        verbose: bool = True,
    ):
        self.models = [model] if isinstance(model, nn.Module) else list(model)
        if not self.models or not all(isinstance(m, nn.Module) for m in self.models):
            raise InputError("model must be an nn.Module or a non-empty list of nn.Module.")
        if not isinstance(task, Task):
            raise InputError(
                f"task must be a datatrace Task (e.g. dt.ClassificationTask()), got {type(task).__name__}."
            )
        if not (proj_dim is None or proj_dim == "auto" or (isinstance(proj_dim, int) and proj_dim >= 1)):
            raise InputError(f"proj_dim must be a positive int, 'auto' or None, got {proj_dim!r}.")
        if batch_size < 1 or shard_size < 1:
            raise InputError(f"batch_size and shard_size must be ≥ 1, got {batch_size}, {shard_size}.")
        self.task = task
        self.params = params
        self.proj_dim = proj_dim
        self.proj_kind = check_choice("proj_kind", proj_kind, KINDS)
        self.seed = seed
        self.batch_size = batch_size
        self.shard_size = shard_size
        self.cache_dir = cache_dir
        self.verbose = verbose

    # -- public API -----------------------------------------------------------------------------------------------
    def fit(self, train: Sequence[Tensor] | torch.utils.data.Dataset | Data) -> Attributor:
        """Compute and store the training features; returns ``self``."""
        data = as_data(train, "train")
        for i, model in enumerate(self.models):
            check_eval_mode(model, f"model {i}" if len(self.models) > 1 else "model")
        self._check_task(data)
        self.param_names_ = select_parameters(self.models[0], self.params)
        self.n_params_ = num_parameters(self.models[0], self.param_names_)
        self.projector_ = self._make_projector(self.n_params_)
        self.feature_dim_ = self.projector_.out_dim if self.projector_ else self.n_params_
        self.n_train_ = len(data)
        self.train_fingerprint_ = data.fingerprint()
        self.stores_ = [self._fit_store(i, model, data) for i, model in enumerate(self.models)]
        self._finalize()
        return self

    def score(self, query: Sequence[Tensor] | torch.utils.data.Dataset | Data) -> Scores:
        """Scores of every query against every training example; positive = proponent."""
        self._check_fitted()
        data = as_data(query, "query")
        return self._scores(self._query_features(data, self.task.measurement), self.stores_)

    def self_influence(self, data: Sequence[Tensor] | torch.utils.data.Dataset | Data) -> np.ndarray:
        """Each example's score against itself, with its training loss on the query side, shape ``(len(data),)``.

        Uses the fitted method as is (e.g. the training set's kernel or Hessian); the examples need not be
        training examples. High values flag examples the model finds hard to fit: outliers and mislabelled data.
        """
        self._check_fitted()
        data = as_data(data, "data")
        if data.fingerprint() == self.train_fingerprint_:
            train = self.stores_
        else:
            train = [self._train_arrays_in_memory(model, data) for model in self.models]
        scores = self._scores(self._query_features(data, self.task.loss), train)
        chunk = scores.query_chunk
        return np.concatenate(
            [scores.block(slice(lo, lo + chunk), slice(lo, lo + chunk)).diagonal() for lo in range(0, len(data), chunk)]
        )

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as passed to ``__init__`` (excluding the model and task)."""
        names = [
            p
            for cls in type(self).__mro__
            if "__init__" in vars(cls)
            for p in inspect.signature(cls.__init__).parameters
            if p not in ("self", "model", "task")
        ]
        return {n: getattr(self, n) for n in dict.fromkeys(names) if hasattr(self, n)}

    # -- shared machinery -----------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "stores_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call .fit(train) before .score(query).")

    def _check_task(self, data: Data) -> None:
        batch = to_device(data.batch(slice(0, min(2, len(data)))), model_device(self.models[0]))
        with torch.no_grad():
            check_per_example(self.task.loss(self.models[0], batch), len(batch[0]), "loss")
            check_per_example(self.task.measurement(self.models[0], batch), len(batch[0]), "measurement")

    def _make_projector(self, n_params: int) -> RandomProjector | None:
        dim = self.proj_dim
        if dim == "auto":
            dim = AUTO_PROJ_DIM if n_params > AUTO_PROJ_DIM else None
        return None if dim is None else RandomProjector(n_params, dim, kind=self.proj_kind, seed=self.seed)

    def _query_features(self, data: Data, fn: Callable[[nn.Module, Batch], Tensor]) -> list[Tensor]:
        """Query-side features of every example of ``data``, one ``(n, k)`` matrix per model."""
        feats = []
        for model in self.models:
            parts = [self._query_batch(model, b, off, fn) for off, b in self._batches(data, model, "query features")]
            feats.append(torch.cat(parts).cpu())
        return feats

    def _train_arrays_in_memory(self, model: nn.Module, data: Data) -> dict[str, np.ndarray]:
        """Training-side arrays of ``data`` computed without a store (for examples outside the training set)."""
        parts = [self._train_batch(model, b, off) for off, b in self._batches(data, model, "training features")]
        return {k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in parts[0]}

    def _batches(self, data: Data, model: nn.Module, what: str, start: int = 0, stop: int | None = None):
        stop = len(data) if stop is None else stop
        total = -(-(stop - start) // self.batch_size)
        device = model_device(model)
        for off, batch in track(data.batches(self.batch_size, start, stop), what, total, self.verbose):
            yield off, to_device(batch, device)

    def _fit_store(self, index: int, model: nn.Module, data: Data) -> Store:
        skip = (*EXECUTION_PARAMS, *self.score_only_params)
        hyper = {k: v for k, v in self.get_params().items() if k not in skip}
        meta = {
            "method": self.method,
            "member": index,
            "hyperparameters": {
                k: v if isinstance(v, (int, float, str, type(None))) else repr(v) for k, v in hyper.items()
            },
            "task": repr(self.task),
            "model_fingerprint": model_fingerprint(model),
            "data_fingerprint": data.fingerprint(),
            "datatrace_version": __version__,
        }
        path = None if self.cache_dir is None else Path(self.cache_dir) / f"{self.method}-member{index}"
        store = Store(path, len(data), self._train_arrays(), meta, shard_size=self.shard_size)
        missing = store.missing_shards()
        for shard in track(missing, f"{self.method}: training features", len(missing), self.verbose):
            rows = store.shard_rows(shard)
            parts = [
                self._train_batch(model, to_device(b, model_device(model)), off)
                for off, b in data.batches(self.batch_size, rows.start, rows.stop)
            ]
            store.write_shard(shard, {k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in parts[0]})
        return store

    def _gradient_features(
        self, model: nn.Module, fn: Callable[[nn.Module, Batch], Tensor], batch: Batch, offset: int
    ) -> tuple[Tensor, Tensor]:
        """Per-example gradients of ``fn`` (projected when ``proj_dim`` is set) and the values of ``fn``."""
        return per_example_gradients(model, fn, batch, self.param_names_, offset=offset, transform=self.projector_)

    def _metadata(self, **extra: Any) -> dict[str, Any]:
        return {
            "method": self.method,
            "hyperparameters": self.get_params(),
            "n_train": self.n_train_,
            "n_params": self.n_params_,
            "feature_dim": self.feature_dim_,
            "sign": "positive = proponent (training on the example lowers the query's measurement)",
            **extra,
        }

    def _warn(self, message: str) -> None:
        warnings.warn(message, DatatraceWarning, stacklevel=4)  # _warn < hook < fit/score < caller

    # -- hooks for subclasses -------------------------------------------------------------------------------------
    def _train_arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        raise NotImplementedError

    def _train_batch(self, model: nn.Module, batch: Batch, offset: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def _query_batch(
        self, model: nn.Module, batch: Batch, offset: int, fn: Callable[[nn.Module, Batch], Tensor]
    ) -> Tensor:
        raise NotImplementedError

    def _finalize(self) -> None:
        """Work needed once all training features are stored (default: nothing)."""

    def _scores(self, query_features: list[Tensor], train: Sequence[Mapping[str, np.ndarray]]) -> Scores:
        raise NotImplementedError

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if k not in EXECUTION_PARAMS)
        return f"{type(self).__name__}({shown})"


def stored_chunks(array: np.ndarray, chunk: int = 8192):
    """Yield ``(rows, float tensor)`` chunks of a stored array (streams a memmap without loading it whole)."""
    for lo in range(0, len(array), chunk):
        yield slice(lo, lo + chunk), torch.from_numpy(np.array(array[lo : lo + chunk], dtype=np.float32))
