"""A named, versioned benchmark: data, training recipe, task and ground-truth settings, fixed once."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..data import Data
from ..eval.retrain import GroundTruth, subset_retraining
from ..task import ClassificationTask, Task


def cache_root() -> Path:
    """``$DATATRACE_CACHE``, else ``$XDG_CACHE_HOME/datatrace``, else ``~/.cache/datatrace``."""
    if os.environ.get("DATATRACE_CACHE"):
        return Path(os.environ["DATATRACE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "datatrace"


@dataclass(frozen=True)
class Benchmark:
    """A benchmark definition. Its settings are chosen once and never tuned on query LDS.

    Changing anything that changes results (data, recipe, ground-truth settings) means a new ``version``; the
    ground-truth cache is keyed by it, and a ground-truth store of another version is refused.

    Attributes:
        name, version: identify the definition.
        load: ``() -> (train, query)`` tuples of tensors.
        train_fn: ``train_fn(data, seed) -> model`` in eval mode.
        task: the task (classification cross-entropy by default).
        n_subsets, fraction, seeds_per_subset, common_random_numbers: ground-truth settings (see
            :func:`~datatrace.eval.subset_retraining`).
        checkpoints: ``(data, seed) -> (checkpoints, learning_rates)`` of the ``train_fn`` run (last = its model),
            for TracIn; ``None`` when the recipe has no meaningful checkpoints (e.g. L-BFGS).
    """

    name: str
    version: int
    description: str
    load: Callable[[], tuple[tuple, tuple]]
    train_fn: Callable[[Data, int], nn.Module]
    task: Task = field(default_factory=ClassificationTask)
    n_subsets: int = 64
    fraction: float = 0.5
    seeds_per_subset: int = 1
    common_random_numbers: bool = False
    checkpoints: Callable[[Data, int], tuple[list[nn.Module], list[float]]] | None = None

    def data(self) -> tuple[Data, Data]:
        train, query = self.load()
        return Data(train, "train"), Data(query, "query")

    def model(self, seed: int = 0) -> nn.Module:
        """The model trained on the full training set with ``seed``."""
        return self.train_fn(self.data()[0], seed)

    def ground_truth(
        self,
        workers: int = 1,
        n_subsets: int | None = None,
        seed: int = 0,
        cache: bool = True,
        verbose: bool = True,
        *,
        backend: str = "local",
        path: str | os.PathLike | None = None,
    ) -> GroundTruth:
        """Subset-retraining ground truth, cached under :func:`cache_root` on first use.

        Args:
            workers, backend: parallel training (see :func:`~datatrace.eval.subset_retraining`).
            n_subsets: fewer (or more) subsets than the definition's, e.g. for a quick look.
            seed: seeds the subsets and training runs.
            cache: keep the result in the user cache directory (resumed and reused by later calls).
            verbose: progress bar.
            path: use this store directory instead of the cache (e.g. ground truth computed elsewhere); one written
                for another benchmark, version or setting is refused.
        """
        train, query = self.data()
        n_subsets = n_subsets or self.n_subsets
        if path is None and cache:
            path = cache_root() / "ground-truth" / self.cache_key(n_subsets, seed)
        return subset_retraining(
            self.train_fn,
            train,
            query,
            self.task,
            n_subsets,
            self.fraction,
            seed,
            workers,
            path,
            verbose,
            seeds_per_subset=self.seeds_per_subset,
            common_random_numbers=self.common_random_numbers,
            backend=backend,
            metadata={"benchmark": self.name, "version": self.version},
        )

    def cache_key(self, n_subsets: int, seed: int) -> str:
        """Directory name of the cached ground truth: every setting that changes it, and a hash of the task."""
        task = hashlib.sha256(repr(self.task).encode()).hexdigest()[:8]
        crn = "-crn" if self.common_random_numbers else ""
        return f"{self.name}-v{self.version}-{n_subsets}x{self.fraction}x{self.seeds_per_subset}{crn}-seed{seed}-{task}"
