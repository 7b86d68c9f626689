"""The one registry of attribution methods by name, as used by ``datatrace bench --methods a,b,c``.

A method is a factory ``build(ctx, **options) -> attributor`` (anything with ``fit(train) -> self`` and
``score(query) -> Scores``) and a one-line description. ``ctx`` is a :class:`MethodContext`: the benchmark's task,
training data and trained models, built lazily and shared by every method of a run, so that all methods attribute
the same models and are checked against the same ground truth. ``options`` are attributor arguments the runner
controls (``cache_dir``, ``verbose``); pass them through.

Add a method with :func:`register` (an exact name) or :func:`register_family` (names ``<prefix>-<K>`` with an
integer K, e.g. ``trak-5``)::

    register("graddot", "Grad-Dot on the final model", lambda ctx, **o: GradDot(ctx.model, ctx.task, **o))

A method with limits on the model (size, layer types) passes ``check(ctx)``, which raises
:class:`~datatrace.errors.InputError` for a model it cannot handle; ``datatrace bench`` calls it once the model is
trained, before the ground truth and before any method runs.
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
from ..ensemble import Ensemble
from ..errors import InputError, UnknownOptionError
from ..stride import STRIDE
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
        """The benchmark's model trained on the full training set with ``seed``: the last of the
        :attr:`checkpoints` when the benchmark has them (one training run gives both)."""
        if self.bench.checkpoints is not None:
            return self.checkpoints[0][-1]
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
        check: ``check(ctx)`` raises :class:`~datatrace.errors.InputError` if the method cannot handle the
            benchmark's trained model (e.g. an explicit Hessian too large for memory); ``None``: no limit.
    """

    name: str
    description: str
    build: Build
    requires: tuple[str, ...] = ()
    check: Callable[[MethodContext], None] | None = None

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

    def check_model(self, ctx: MethodContext) -> None:
        """Raise :class:`~datatrace.errors.InputError` if this method cannot handle ``ctx.model``."""
        if self.check is not None:
            self.check(ctx)


METHODS: dict[str, Method] = {}
FAMILIES: dict[str, tuple[str, Callable[[int], Method]]] = {}


def register(
    name: str,
    description: str,
    build: Build,
    requires: Sequence[str] = (),
    check: Callable[[MethodContext], None] | None = None,
) -> Method:
    """Register ``build(ctx, **options) -> attributor`` under ``name`` (``check``: see :class:`Method`)."""
    if name in METHODS:
        raise InputError(f"A method called {name!r} is already registered.")
    METHODS[name] = Method(name, description, build, tuple(requires), check)
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
        f"{m}.{p}" if m else p
        for m, mod in model.named_modules()
        if isinstance(mod, SUPPORTED)
        for p, _ in mod.named_parameters()
    ]


#: Influence-function solvers, registered as ``if-<solver>``. They keep full training gradients (no projection): the
#: inverse Hessian acts in parameter space and the benchmarks' models have at most ~51k parameters. KFAC and EK-FAC
#: (like LoGra) default to the linear/conv layers (:func:`layer_params`), which is all of an MLP or CNN.
INFLUENCE_SOLVERS = {
    "explicit": "explicit damped Gauss–Newton Hessian, Cholesky (refused over 4 GiB, about 23k parameters)",
    "cg": "conjugate gradient on Gauss–Newton Hessian-vector products, to relative residual 1e-5",
    "lissa": "LiSSA stochastic Neumann series (depth 5,000, minibatches of 64)",
    "arnoldi": "top-128 eigenpairs of the Gauss–Newton Hessian (block Arnoldi)",
    "kfac": "KFAC Gauss–Newton Hessian of the nn.Linear / nn.Conv2d layers",
    "ekfac": "EK-FAC Gauss–Newton Hessian of the nn.Linear / nn.Conv2d layers",
}


def _influence(solver: str) -> Build:
    def build(ctx: MethodContext, **o) -> InfluenceFunction:
        if solver in ("kfac", "ekfac"):
            o.setdefault("params", layer_params(ctx.model))
        return InfluenceFunction(ctx.model, ctx.task, solver=solver, **o)

    return build


def _supported(build: Build) -> Callable[[MethodContext], None]:
    """A model check that lets the attributor refuse the trained model (size, layer types) before any work."""
    return lambda ctx: build(ctx, verbose=False).check_supported()


for _solver, _what in INFLUENCE_SOLVERS.items():
    _build = _influence(_solver)
    register(f"if-{_solver}", f"Influence function (default damping): {_what}", _build, check=_supported(_build))


def _logra(ctx: MethodContext, **o) -> LoGra:
    o.setdefault("params", layer_params(ctx.model))
    return LoGra(ctx.model, ctx.task, **o)


register(
    "logra",
    "LoGra: rank-64 factorised projection of the nn.Linear / nn.Conv2d gradients, EK-FAC preconditioned",
    _logra,
    check=_supported(_logra),
)

register(
    "stride",
    "STRIDE: Lasso recovery from learned per-subset steering operators (K=1000, d=10, Newton-refined)",
    lambda ctx, **o: STRIDE(ctx.model, ctx.task, **o),
)


def trak_ensemble(ctx: MethodContext, kind: str, n_models: int = 1, n_members: int = 1, **options) -> Ensemble:
    """A TRAK :class:`~datatrace.ensemble.Ensemble` whose members are trained inside ``fit`` (so training is costed).

    ``cache_dir`` and ``verbose`` go to the attributor, every other option to the ensemble.
    """
    attr = {k: options.pop(k) for k in ("cache_dir", "verbose") if k in options}
    train_fn = ctx.bench.train_fn
    if kind == "checkpoints":
        train_fn = lambda data, seed: ctx.bench.checkpoints(data, seed)[0]  # noqa: E731
    return Ensemble(
        lambda models: TRAK(models, ctx.task, **attr),
        kind,
        train_fn=train_fn,
        n_models=n_models,
        n_members=n_members,
        seed=ctx.seed,
        verbose=attr.get("verbose", True),
        **options,
    )


ENSEMBLE_FAMILIES = {
    "trak-independent": ("TRAK ensemble of {k} independently trained full-data models", {"kind": "independent"}),
    "trak-half": (
        "TRAK ensemble of {k} models, each trained on its own random half",
        {"kind": "independent", "subset_fraction": 0.5},
    ),
    "trak-dropout": ("TRAK on 1 model × {k} fixed dropout masks (mask='member')", {"kind": "dropout"}),
    "trak-dropout-sample": ("TRAK on 1 model × {k} per-example dropout masks", {"kind": "dropout", "mask": "sample"}),
    "trak-qonly": (
        "TRAK on 1 model, Q-only dropout with {k} masks (forward passes only)",
        {"kind": "dropout", "q_only": True},
    ),
    "trak-lora": ("TRAK on 1 model × {k} LoRA adapters (rank 8, adapter gradients only)", {"kind": "lora"}),
}
for _prefix, (_description, _options) in ENSEMBLE_FAMILIES.items():
    _size = "n_models" if _options["kind"] == "independent" else "n_members"
    register_family(
        _prefix,
        _description + "; costs vs the independent ensemble",
        lambda ctx, k, _o=_options, _s=_size, **o: trak_ensemble(ctx, **_o, **{_s: k}, **o),
    )
register_family(
    "trak-checkpoints",
    "TRAK over the last {k} training checkpoints of one run; costs vs the independent ensemble",
    lambda ctx, k, **o: trak_ensemble(ctx, "checkpoints", n_members=k, **o),
    requires=("checkpoints",),
)
