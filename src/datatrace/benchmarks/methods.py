"""The one registry of attribution methods by name, as used by ``datatrace bench --methods a,b,c``.

A method is a factory ``build(ctx, **options) -> attributor`` (anything with ``fit(train) -> self`` and
``score(query) -> Scores``) and a one-line description. ``ctx`` is a :class:`MethodContext`: the benchmark's task,
training data and trained models, built lazily and shared by every method of a run, so that all methods attribute
the same models and are checked against the same ground truth. ``options`` are attributor arguments the runner
controls (``cache_dir``, ``verbose``); pass them through.

Add a method with :func:`register` (an exact name) or :func:`register_family` (names ``<prefix>-<K>`` with an
integer K, e.g. ``trak-5``)::

    register("graddot", "Grad-Dot on the final model", lambda ctx, **o: GradDot(ctx.model, ctx.task, **o))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from torch import nn

from .._utils import derive_seed
from ..attributors import TRAK, GradCos, GradDot, InfluenceFunction, LoGra, TracIn
from ..attributors.kfac import SUPPORTED
from ..data import Data
from ..errors import InputError, UnknownOptionError
from ..task import Task
from .base import Benchmark

#: Projection of every gradient method here: none up to 2,048 parameters, else a 2,048-dimensional JL projection.
PROJ_DIM = "auto"


class MethodContext:
    """What a method may use: the benchmark, its task and training data, and models trained once per run.

    Args:
        bench: the benchmark.
        train: its training data.
        seed: seed of the main model and of the extra models.
    """

    def __init__(self, bench: Benchmark, train: Data, seed: int = 0):
        self.bench, self.train, self.seed = bench, train, seed
        self._half_models: list[nn.Module] = []

    @property
    def task(self) -> Task:
        return self.bench.task

    @cached_property
    def model(self) -> nn.Module:
        """The benchmark's model trained on the full training set with ``seed``."""
        return self.bench.train_fn(self.train, self.seed)

    @cached_property
    def checkpoints(self) -> tuple[list[nn.Module], list[float]]:
        """Checkpoints of the main model's training run and the learning rate after each (for TracIn)."""
        if self.bench.checkpoints is None:
            raise InputError(f"Benchmark {self.bench.name} provides no training checkpoints.")
        return self.bench.checkpoints(self.train, self.seed)

    def models(self, k: int) -> list[nn.Module]:
        """``k`` models, each trained on its own seeded random half of the training set (TRAK's ensemble)."""
        n = len(self.train)
        while len(self._half_models) < k:
            i = len(self._half_models)
            rng = np.random.default_rng(derive_seed(self.seed, "half-model", i))
            half = np.sort(rng.choice(n, n // 2, replace=False))
            self._half_models.append(self.bench.train_fn(self.train.subset(half), derive_seed(self.seed, i) % 2**31))
        return self._half_models[:k]


Build = Callable[..., Any]


@dataclass(frozen=True)
class Method:
    """A named attribution method: its factory, description and what it needs from a benchmark.

    Attributes:
        requires: benchmark attributes that must be set (e.g. ``("checkpoints",)``).
    """

    name: str
    description: str
    build: Build
    requires: tuple[str, ...] = ()

    def missing(self, bench: Benchmark) -> list[str]:
        """The required benchmark attributes that ``bench`` does not provide."""
        return [r for r in self.requires if getattr(bench, r) is None]

    def check_available(self, bench: Benchmark) -> None:
        missing = self.missing(bench)
        if missing:
            raise InputError(
                f"Method {self.name!r} needs {', '.join(missing)}, which benchmark {bench.name} does not provide; "
                "leave it out of --methods."
            )


METHODS: dict[str, Method] = {}
FAMILIES: dict[str, tuple[str, Callable[[int], Method]]] = {}


def register(name: str, description: str, build: Build, requires: Sequence[str] = ()) -> Method:
    """Register ``build(ctx, **options) -> attributor`` under ``name``."""
    if name in METHODS:
        raise InputError(f"A method called {name!r} is already registered.")
    METHODS[name] = Method(name, description, build, tuple(requires))
    return METHODS[name]


def register_family(prefix: str, description: str, build: Callable[..., Any], requires: Sequence[str] = ()) -> None:
    """Register the names ``<prefix>-<K>`` (K ≥ 1): ``build(ctx, K, **options)``; ``{k}`` in the description is K."""
    if prefix in FAMILIES:
        raise InputError(f"A method family {prefix!r}-K is already registered.")

    def make(k: int) -> Method:
        return Method(f"{prefix}-{k}", description.format(k=k), lambda ctx, **o: build(ctx, k, **o), tuple(requires))

    FAMILIES[prefix] = (description.format(k="K"), make)


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name raises an error listing the valid ones."""
    if name in METHODS:
        return METHODS[name]
    match = re.fullmatch(r"(.+)-(\d+)", name)
    if match and match.group(1) in FAMILIES and int(match.group(2)) >= 1:
        return FAMILIES[match.group(1)][1](int(match.group(2)))
    raise UnknownOptionError("method", name, method_names())


def method_names() -> list[str]:
    """Every valid name, families shown as ``<prefix>-K``."""
    return sorted(METHODS) + [f"{p}-K" for p in sorted(FAMILIES)]


def method_descriptions() -> dict[str, str]:
    return {**{n: m.description for n, m in METHODS.items()}, **{f"{p}-K": d for p, (d, _) in FAMILIES.items()}}


def parse_methods(spec: str | Sequence[str]) -> list[Method]:
    """Methods from ``"a,b,c"`` or a list of names (duplicates removed, order kept)."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if not names:
        raise InputError(f"No method given; valid: {', '.join(method_names())}.")
    return [get_method(n) for n in dict.fromkeys(names)]


register(
    "graddot",
    "Grad-Dot: loss-gradient dot product at the final model",
    lambda ctx, **o: GradDot(ctx.model, ctx.task, proj_dim=PROJ_DIM, **o),
)
register(
    "gradcos",
    "Grad-Cos: loss-gradient cosine at the final model",
    lambda ctx, **o: GradCos(ctx.model, ctx.task, proj_dim=PROJ_DIM, **o),
)
register(
    "tracin",
    "TracIn-CP over the benchmark's training checkpoints, weighted by learning rate",
    lambda ctx, **o: TracIn(ctx.checkpoints[0], ctx.task, lrs=ctx.checkpoints[1], proj_dim=PROJ_DIM, **o),
    requires=("checkpoints",),
)
register("trak", "TRAK on the final model (default ridge)", lambda ctx, **o: TRAK(ctx.model, ctx.task, **o))
register_family(
    "trak",
    "TRAK averaged over {k} models, each trained on a random half of the data",
    lambda ctx, k, **o: TRAK(ctx.models(k), ctx.task, **o),
)


def layer_params(model: nn.Module) -> list[str]:
    """Parameters of the model's ``nn.Linear`` / ``nn.Conv2d`` layers: what KFAC, EK-FAC and LoGra can factor
    (all of an MLP or CNN; the attention, MLP and unembedding matrices of a transformer, not its embeddings and norms).
    """
    return [
        f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, SUPPORTED) for p, _ in mod.named_parameters()
    ]


register(
    "logra",
    "LoGra (rank 64 per side, EK-FAC in the projected space) on the final model's linear/conv layers",
    lambda ctx, **o: LoGra(ctx.model, ctx.task, params=layer_params(ctx.model), **o),
)
for _solver in ("ekfac", "kfac"):
    register(
        f"if-{_solver}",
        f"Influence function, {_solver.upper()} Gauss–Newton Hessian of the final model's linear/conv layers",
        lambda ctx, _s=_solver, **o: InfluenceFunction(
            ctx.model, ctx.task, solver=_s, params=layer_params(ctx.model), **o
        ),
    )
