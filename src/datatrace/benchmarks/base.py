"""A named, versioned benchmark: data, training recipe, task and ground-truth settings, fixed once."""

from __future__ import annotations

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

    Attributes:
        name, version: identify the definition; the ground-truth cache is keyed by both.
        load: ``() -> (train, query)`` tuples of tensors.
        train_fn: ``train_fn(data, seed) -> model`` in eval mode.
        task: the task (classification cross-entropy by default).
        n_subsets, fraction: ground-truth subset retraining settings.
    """

    name: str
    version: int
    description: str
    load: Callable[[], tuple[tuple, tuple]]
    train_fn: Callable[[Data, int], nn.Module]
    task: Task = field(default_factory=ClassificationTask)
    n_subsets: int = 64
    fraction: float = 0.5

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
    ) -> GroundTruth:
        """Subset-retraining ground truth, cached under :func:`cache_root` on first use."""
        train, query = self.data()
        n_subsets = n_subsets or self.n_subsets
        key = f"{self.name}-v{self.version}-{n_subsets}x{self.fraction}-seed{seed}"
        path = cache_root() / "ground-truth" / key if cache else None
        return subset_retraining(
            self.train_fn, train, query, self.task, n_subsets, self.fraction, seed, workers, path, verbose
        )
