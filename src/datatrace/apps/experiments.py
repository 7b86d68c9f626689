"""End-to-end experiments behind ``datatrace select CONFIG.yaml`` and ``datatrace contamination CONFIG.yaml``.

Each command reads a YAML file into a config dataclass (unknown keys are refused, naming the valid ones), runs on a
built-in benchmark with methods from the method registry (:mod:`~datatrace.benchmarks.methods`), and writes into
``out``: ``config.yaml`` (the resolved config), ``results.json`` and ``run/`` — a saved attribution run
(:mod:`~datatrace.apps.runs`) that ``datatrace report out/run`` renders.

- Selection: the target domain is the benchmark's queries of one class (or all queries); they are split (seeded)
  into a half that attributes (the selection target) and a half that evaluates. The pool is the training set. Each
  method × strategy selects ``budget`` examples; a fresh model is trained on each selection for every seed and its
  loss and accuracy on the evaluation half are compared with random selection and the oracle (in-domain examples
  first) at the same budget, as mean and 95% t-interval over seeds.
- Contamination: ``n_items`` queries are planted (``copies`` each, verbatim or with Gaussian pixel noise) into the
  training set; the benchmark's model is trained on the contaminated data, each method scores the planted items
  against it, and Recall@k / MRR of the copies are reported per method and per fused pair.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from scipy import stats

from .._utils import derive_seed
from ..benchmarks import Benchmark, MethodContext, get
from ..benchmarks.methods import parse_methods
from ..data import Data
from ..errors import InputError, check_choice
from ..scores import Scores
from .cleaning import accuracy
from .contamination import ContaminationResult, contamination, plant_copies
from .report import plain
from .runs import save_run
from .select import STRATEGIES, select, select_oracle, select_random


@dataclass
class SelectConfig:
    """``datatrace select`` settings (YAML keys of the same names)."""

    benchmark: str
    methods: list[str] = field(default_factory=lambda: ["graddot", "trak"])
    budget: int = 100
    target_class: int | None = None
    strategies: list[str] = field(default_factory=lambda: ["sum", "balanced"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    seed: int = 0
    out: str = "datatrace-select"


@dataclass
class ContaminationConfig:
    """``datatrace contamination`` settings (YAML keys of the same names)."""

    benchmark: str
    methods: list[str] = field(default_factory=lambda: ["graddot", "trak"])
    n_items: int = 20
    copies: int = 1
    noise: float = 0.0
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    fusions: list[list[str]] = field(default_factory=list)
    fusion: str = "rank"
    seed: int = 0
    out: str = "datatrace-contamination"


def load_config(path: str | Path, cls: type) -> Any:
    """Read YAML ``path`` into the config dataclass ``cls``; unknown or missing keys raise :class:`InputError`."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise InputError(f"{path} must hold a YAML mapping of settings.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise InputError(f"{path}: unknown keys {unknown}; valid keys: {sorted(names)}.")
    try:
        return cls(**raw)
    except TypeError as e:
        raise InputError(f"{path}: {e}") from e


def run_select(config: SelectConfig, verbose: bool = True) -> dict[str, Any]:
    """Run the selection experiment (module docstring); returns and writes ``results.json``."""
    bench = get(config.benchmark)
    for s in config.strategies:
        check_choice("selection strategy", s, STRATEGIES)
    methods = _methods(config.methods, bench)
    train, query = bench.data()
    labels = train.tensors()[-1].numpy()
    target = _target_split(query, config.target_class, config.seed)
    chosen, evaluate = query.subset(target[0]), query.subset(target[1])
    ctx = MethodContext(bench, train, config.seed)
    selections, scores = {}, {}
    for method in methods:
        scores[method.name] = method.build(ctx, verbose=verbose).fit(train).score(chosen)
        for strategy in config.strategies:
            selections[f"{method.name}/{strategy}"] = select(scores[method.name], config.budget, strategy)
    in_domain = np.ones(len(train)) if config.target_class is None else (labels == config.target_class) * 1.0
    selections["oracle"] = select_oracle(in_domain, config.budget)
    rows = []
    for name, selection in selections.items():
        rows.append(_evaluate_selection(name, lambda s, sel=selection: sel, bench, train, evaluate, config))
    rows.append(
        _evaluate_selection(
            "random", lambda s: select_random(len(train), config.budget, s), bench, train, evaluate, config
        )
    )
    results = {"config": dataclasses.asdict(config), "n_target": len(chosen), "n_evaluate": len(evaluate)}
    results["rows"] = rows
    _write(config.out, config, results, scores, train, chosen, None)
    return results


def run_contamination(config: ContaminationConfig, verbose: bool = True) -> tuple[ContaminationResult, dict]:
    """Run the contamination experiment (module docstring); returns the result and the written ``results.json``."""
    bench = get(config.benchmark)
    methods = _methods(config.methods, bench)
    train, query = bench.data()
    if not 1 <= config.n_items <= len(query):
        raise InputError(f"n_items must be in [1, {len(query)}] (the benchmark's queries), got {config.n_items}.")
    rng = np.random.default_rng(derive_seed(config.seed, "contamination-items"))
    items = query.subset(np.sort(rng.choice(len(query), config.n_items, replace=False)))
    perturb = None
    if config.noise > 0:

        def perturb(x: torch.Tensor, gen: np.random.Generator) -> torch.Tensor:
            return x + config.noise * torch.from_numpy(gen.normal(size=tuple(x.shape))).to(x.dtype)

    contaminated, planted = plant_copies(train, items, config.copies, perturb, config.seed)
    ctx = MethodContext(bench, contaminated, config.seed)
    scores = {m.name: m.build(ctx, verbose=verbose).fit(contaminated).score(items) for m in methods}
    result = contamination(
        scores, planted, config.ks, fusions=[tuple(f) for f in config.fusions], fusion=config.fusion, seed=config.seed
    )
    results = {"config": dataclasses.asdict(config), "rows": result.rows(), "planted": plain(planted)}
    evaluation = {name: {"retrieval": r} for name, r in result.methods.items() if name in scores}
    _write(config.out, config, results, scores, contaminated, items, evaluation)
    return result, results


def _evaluate_selection(name, pick, bench: Benchmark, train: Data, evaluate: Data, config) -> dict[str, Any]:
    """Train a fresh model on the selection for each seed; target loss and accuracy as mean and 95% t-interval."""
    loss, acc = [], []
    for seed in config.seeds:
        selection = pick(seed)
        model = bench.train_fn(train.subset(np.sort(selection.indices)), seed)
        with torch.no_grad():
            loss.append(float(bench.task.loss(model, evaluate.tensors()).mean()))
        acc.append(accuracy(model, evaluate))
    return {"selection": name, **_mean_ci("loss", loss), **_mean_ci("accuracy", acc)}


def _mean_ci(name: str, values: Sequence[float]) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return {name: mean, f"{name}_ci": [math.nan, math.nan], f"{name}_seeds": values.tolist()}
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return {name: mean, f"{name}_ci": [mean - half, mean + half], f"{name}_seeds": values.tolist()}


def _target_split(query: Data, target_class: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    labels = query.tensors()[-1].numpy()
    pool = np.arange(len(query)) if target_class is None else np.flatnonzero(labels == target_class)
    if len(pool) < 2:
        raise InputError(f"target_class {target_class} has {len(pool)} queries; need at least 2 (select + evaluate).")
    order = np.random.default_rng(derive_seed(seed, "target-split")).permutation(pool)
    half = len(order) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def _methods(names: Sequence[str], bench: Benchmark):
    methods = parse_methods(list(names))
    for method in methods:
        method.check_available(bench)
    return methods


def _write(out, config, results, scores: dict[str, Scores], train: Data, query: Data, evaluation) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(plain(dataclasses.asdict(config)), sort_keys=False))
    (out / "results.json").write_text(json.dumps(plain(results), indent=2))
    save_run(out / "run", scores, train, query, evaluation=evaluation, **render_hints(train))


def render_hints(train: Data) -> dict[str, Any]:
    """How the report draws the inputs: images for (C, H, W) inputs and square pixel vectors of ≥ 64, else rows."""
    x = train.tensors()[0]
    if x.ndim == 4:
        return {"image_shape": list(x.shape[1:])}
    side = math.isqrt(x.shape[1]) if x.ndim == 2 else 0
    if x.ndim == 2 and side * side == x.shape[1] and side >= 8:
        return {"image_shape": [side, side]}
    return {}
