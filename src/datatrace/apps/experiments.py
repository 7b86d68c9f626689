"""End-to-end experiments behind ``datatrace select CONFIG.yaml`` and ``datatrace contamination CONFIG.yaml``.

Each command reads a YAML file into a config dataclass (unknown keys are refused, naming the valid ones), runs on a
built-in benchmark with methods from the method registry (:mod:`~datatrace.benchmarks.methods`), and writes into
``out``: ``config.yaml`` (the resolved config), ``results.json`` and ``run/`` — a saved attribution run
(:mod:`~datatrace.apps.runs`) that ``datatrace report out/run`` renders (a text run on language-model benchmarks:
query texts with the tokens their loss measures, proponent and opponent documents).

- Selection: the target domain is one class (``target_class``, classifier benchmarks) or one topic
  (``target_topic``, language-model benchmarks: a document's topic is its id up to the first ``:``, e.g.
  ``computers`` of the fortune ``computers:12``, ``t3`` of the synthetic document ``t3:41``), or everything when
  neither is set. Target examples come from the benchmark's ``held_out`` documents when it has them (tinylm-fortunes:
  the ≈ 11,000 fortunes outside its 2,200, so target sets of hundreds of documents exist), else from its queries; at
  most ``n_target`` of them are split (seeded) into a half that attributes (the selection target) and a half that
  evaluates. The pool is the training set. Each method × strategy selects ``budget`` examples; a fresh model is
  trained (the benchmark's ``train_fn``) on each selection for every seed, and its loss on the evaluation half (for
  language models the mean next-token NLL per loss token, averaged over documents) and accuracy (label accuracy;
  for language models the arg-max next-token accuracy) are compared with random selection (a fresh draw per seed)
  and the oracle (in-domain examples first) at the same budget, as mean and 95% t-interval over seeds.
- Contamination: ``n_items`` queries are planted, ``copies`` each, into the training set; the items are dealt round
  robin to the ``kinds`` of copy: ``verbatim``; ``noise`` (Gaussian noise of standard deviation ``noise`` on inputs,
  or for text each character replaced with probability ``noise``); ``prefix`` (text: the first ``fragment`` of the
  characters). Planted documents get the id ``"{item id}~{kind}{copy}"``. The benchmark's model is trained on the
  contaminated data, each method scores the items against it, and Recall@k / MRR of the copies are reported per kind
  (and over all kinds), per method and per fused pair.
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

from .._utils import derive_seed, model_device
from ..benchmarks import Benchmark, MethodContext, get
from ..benchmarks.methods import parse_methods
from ..data import Data, to_device
from ..errors import InputError, check_choice
from ..lm.corpus import Corpus, corpus
from ..lm.task import CausalLMTask, token_hits, token_mean
from ..scores import Scores
from .cleaning import accuracy
from .contamination import (
    FUSIONS,
    ContaminationResult,
    contamination,
    fuse,
    plant_copies,
    plant_documents,
    text_noise,
    text_prefix,
)
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
    target_topic: str | None = None
    n_target: int | None = None
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
    kinds: list[str] = field(default_factory=lambda: ["verbatim"])
    noise: float = 0.1
    fragment: float = 0.5
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    fusions: list[list[str]] = field(default_factory=list)
    fusion: str | list[str] = "rank"
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


#: Kinds of planted copy for tensor data and for text (see the module docstring).
TENSOR_KINDS = ("verbatim", "noise")
TEXT_KINDS = ("verbatim", "noise", "prefix")


def run_select(config: SelectConfig, verbose: bool = True) -> dict[str, Any]:
    """Run the selection experiment (module docstring); returns and writes ``results.json``."""
    bench = get(config.benchmark)
    for s in config.strategies:
        check_choice("selection strategy", s, STRATEGIES)
    methods = _methods(config.methods, bench)
    train, query = bench.data()
    if not isinstance(config.budget, int) or not 1 <= config.budget <= len(train):
        raise InputError(
            f"budget must be an integer in [1, {len(train)}] (the training examples of {bench.name}), got "
            f"{config.budget!r}; lower the budget."
        )
    chosen, evaluate, in_domain, source = _target(bench, train, query, config)
    ctx = MethodContext(bench, train, config.seed)
    selections, scores = {}, {}
    for method in methods:
        scores[method.name] = method.build(ctx, verbose=verbose).fit(train).score(chosen)
        for strategy in config.strategies:
            selections[f"{method.name}/{strategy}"] = select(scores[method.name], config.budget, strategy)
    if in_domain is not None:
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
    results["target_source"] = source
    results["n_in_domain_pool"] = None if in_domain is None else int(in_domain.sum())
    results["accuracy"] = "next-token" if isinstance(bench.task, CausalLMTask) else "label"
    results["rows"] = rows
    _write(config.out, config, results, scores, train, chosen, None)
    return results


def run_contamination(config: ContaminationConfig, verbose: bool = True) -> tuple[dict[str, ContaminationResult], dict]:
    """Run the contamination experiment (module docstring).

    Returns:
        ``({kind: result}, results)``: one :class:`ContaminationResult` per kind of copy (plus ``"all"`` when there
        are several kinds) and the written ``results.json``.
    """
    bench = get(config.benchmark)
    methods = _methods(config.methods, bench)
    train, query = bench.data()
    text = isinstance(train, Corpus)
    for kind in config.kinds:
        check_choice("kind of planted copy", kind, TEXT_KINDS if text else TENSOR_KINDS)
    kinds = list(dict.fromkeys(config.kinds))
    if not len(kinds) <= config.n_items <= len(query):
        raise InputError(
            f"n_items must be in [{len(kinds)}, {len(query)}] (one item per kind at least; the benchmark's queries), "
            f"got {config.n_items}."
        )
    if config.copies < 1:
        raise InputError(f"copies must be ≥ 1, got {config.copies}.")
    _fusion_kinds(config, [m.name for m in methods])
    if "noise" in kinds and not config.noise > 0:
        raise InputError(f"Copies of kind 'noise' need noise > 0, got {config.noise}.")
    rng = np.random.default_rng(derive_seed(config.seed, "contamination-items"))
    items = query.subset(np.sort(rng.choice(len(query), config.n_items, replace=False)))
    item_kinds = [kinds[j % len(kinds)] for j in range(config.n_items)]
    plant = _plant_text if text else _plant_tensors
    contaminated, planted = plant(train, items, item_kinds, config)
    ctx = MethodContext(bench, contaminated, config.seed)
    scores = {m.name: m.build(ctx, verbose=verbose).fit(contaminated).score(items) for m in methods}
    ranked = {**scores, **_fused(scores, config)}
    overall = contamination(ranked, planted, config.ks, seed=config.seed)
    by_kind = {kinds[0]: overall} if len(kinds) == 1 else {"all": overall}
    if len(kinds) > 1:
        for kind in kinds:
            only = [p if k == kind else p[:0] for p, k in zip(planted, item_kinds)]
            by_kind[kind] = contamination(ranked, only, config.ks, seed=config.seed)
    results = {"config": dataclasses.asdict(config), "item_kinds": item_kinds, "planted": plain(planted)}
    if text:
        results["planted_ids"] = [[contaminated.ids[i] for i in p] for p in planted]
    results["rows"] = [{"kind": kind, **row} for kind, r in by_kind.items() for row in r.rows()]
    evaluation = {name: {"retrieval": r} for name, r in overall.methods.items() if name in scores}
    _write(config.out, config, results, scores, contaminated, items, evaluation)
    return by_kind, results


def _fused(scores: dict[str, Scores], config: ContaminationConfig) -> dict[str, Scores]:
    """The fused pairs, named ``"a+b"`` (one fusion method) or ``"a+b (rank)"`` (several)."""
    kinds = _fusion_kinds(config, list(scores))
    out = {}
    for pair in config.fusions:
        for kind in kinds:
            name = "+".join(pair) + ("" if len(kinds) == 1 else f" ({kind})")
            out[name] = fuse([scores[pair[0]], scores[pair[1]]], kind)
    return out


def _fusion_kinds(config: ContaminationConfig, methods: list[str]) -> list[str]:
    """The fusion methods of the config, after checking them and that every fusion pairs two of ``methods``."""
    kinds = [config.fusion] if isinstance(config.fusion, str) else list(config.fusion)
    for kind in kinds:
        check_choice("fusion", kind, FUSIONS)
    for pair in config.fusions:
        if len(pair) != 2 or any(name not in methods for name in pair):
            raise InputError(f"Each fusion is a pair of names from methods {methods}; got {pair}.")
    return kinds


def _plant_tensors(train: Data, items: Data, item_kinds: list[str], config) -> tuple[Data, list[np.ndarray]]:
    """``copies`` copies of each item (Gaussian input noise for kind ``noise``) at seeded positions of ``train``."""
    rng = np.random.default_rng(derive_seed(config.seed, "contamination-copies"))
    source = np.repeat(np.arange(len(items)), config.copies)
    tensors = [t[torch.from_numpy(source)].clone() for t in items.tensors()]
    for c, j in enumerate(source):
        if item_kinds[j] == "noise":
            x = tensors[0][c]
            tensors[0][c] = x + config.noise * torch.from_numpy(rng.normal(size=tuple(x.shape))).to(x.dtype)
    contaminated, positions = plant_copies(train, tuple(tensors), 1, None, config.seed)
    return contaminated, [
        np.concatenate([positions[c] for c in np.flatnonzero(source == j)]) for j in range(len(items))
    ]


def _plant_text(train: Corpus, items: Corpus, item_kinds: list[str], config) -> tuple[Corpus, list[np.ndarray]]:
    """``copies`` documents per item, id ``"{item id}~{kind}{copy}"``: verbatim copies keep the item's exact tokens
    (cut to the corpus's length), edited ones (``noise``, ``prefix``) are tokenised like the corpus."""
    rng = np.random.default_rng(derive_seed(config.seed, "contamination-copies"))
    source = np.repeat(np.arange(len(items)), config.copies)
    texts = [_edit(item_kinds[j], items.texts[j], config, rng) for j in source]
    ids = [f"{items.ids[j]}~{item_kinds[j]}{c % config.copies}" for c, j in enumerate(source)]
    width = train.tensors()[0].shape[1]
    edited = corpus(texts, train.tokenizer, ids=ids, max_length=width, on_overflow="truncate", name="planted")
    input_ids = torch.full((len(source), width), int(train.tokenizer.pad_id), dtype=torch.long)
    loss_mask = torch.zeros((len(source), width))
    input_ids[:, : edited.tensors()[0].shape[1]], loss_mask[:, : edited.tensors()[1].shape[1]] = edited.tensors()
    verbatim = np.flatnonzero([item_kinds[j] == "verbatim" for j in source])
    if len(verbatim):
        item_ids, item_mask = items.batch(source[verbatim])
        cut = min(width, item_ids.shape[1])
        input_ids[verbatim], loss_mask[verbatim] = train.tokenizer.pad_id, 0.0
        input_ids[verbatim, :cut], loss_mask[verbatim, :cut] = item_ids[:, :cut], item_mask[:, :cut].float()
    texts = [train.tokenizer.decode(row.tolist()) for row in input_ids]
    copies = Corpus(input_ids, loss_mask, ids, texts, train.tokenizer, "planted")
    contaminated, positions = plant_documents(train, copies, config.seed)
    return contaminated, [positions[source == j] for j in range(len(items))]


def _edit(kind: str, text: str, config, rng: np.random.Generator) -> str:
    if kind == "noise":
        return text_noise(text, config.noise, rng)
    if kind == "prefix":
        return text_prefix(text, config.fragment)
    return text


def _evaluate_selection(name, pick, bench: Benchmark, train: Data, evaluate: Data, config) -> dict[str, Any]:
    """Train a fresh model on the selection for each seed; target loss and accuracy as mean and 95% t-interval."""
    loss, acc = [], []
    score_accuracy = next_token_accuracy if isinstance(bench.task, CausalLMTask) else accuracy
    for seed in config.seeds:
        selection = pick(seed)
        model = bench.train_fn(train.subset(np.sort(selection.indices)), seed)
        with torch.no_grad():
            loss.append(float(bench.task.loss(model, evaluate.tensors()).mean()))
            acc.append(score_accuracy(model, evaluate))
    return {"selection": name, **mean_ci("loss", loss), **mean_ci("accuracy", acc)}


def next_token_accuracy(model: torch.nn.Module, data: Data, batch_size: int = 256) -> float:
    """Arg-max next-token accuracy of a causal LM on ``(input_ids, loss_mask)`` data: per document the loss-weighted
    share of loss tokens predicted exactly, averaged over documents (as the loss is)."""
    total = 0.0
    with torch.no_grad():
        for _, batch in data.batches(batch_size):
            total += float(token_mean(*token_hits(model, to_device(batch, model_device(model)))).sum())
    return total / len(data)


def mean_ci(name: str, values: Sequence[float]) -> dict[str, Any]:
    """``{name: mean, name_ci: 95% t-interval over the values (NaN for one value), name_seeds: the values}``."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return {name: mean, f"{name}_ci": [math.nan, math.nan], f"{name}_seeds": values.tolist()}
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return {name: mean, f"{name}_ci": [mean - half, mean + half], f"{name}_seeds": values.tolist()}


def topic_of(document_id: str) -> str:
    """A document's topic: its id up to the first ``:`` (``"computers:12"`` → ``"computers"``)."""
    return str(document_id).split(":", 1)[0]


def _target(bench: Benchmark, train: Data, query: Data, config: SelectConfig):
    """``(attributing half, evaluating half, in-domain indicator of the pool or None, source)`` of the target."""
    if isinstance(train, Corpus):
        held_out = getattr(bench, "held_out", None)
        source, where = (held_out(), "held-out documents") if held_out else (query, "queries")
        topics = np.array([topic_of(i) for i in source.ids])
        if config.target_class is not None:
            raise InputError(
                f"{bench.name} is a language-model benchmark: its domains are topics, not classes. Replace "
                f"target_class by target_topic (one of {_counts(topics)})."
            )
        domain, wanted = topics, config.target_topic
        in_domain = None if wanted is None else np.array([topic_of(i) == wanted for i in train.ids], dtype=np.float64)
    else:
        if config.target_topic is not None:
            raise InputError(
                f"target_topic is for language-model benchmarks; {bench.name} is a classifier benchmark: use "
                "target_class."
            )
        source, where = query, "queries"
        domain, wanted = query.tensors()[-1].numpy(), config.target_class
        labels = train.tensors()[-1].numpy()
        in_domain = None if wanted is None else (labels == wanted).astype(np.float64)
    pool = np.arange(len(source)) if wanted is None else np.flatnonzero(domain == wanted)
    what = "target_topic" if isinstance(train, Corpus) else "target_class"
    if len(pool) < 2:
        raise InputError(
            f"{what} {wanted!r} has {len(pool)} of {bench.name}'s {where}; need at least 2 (attribute + evaluate). "
            f"Available: {_counts(domain)}."
        )
    n_target = len(pool) if config.n_target is None else config.n_target
    if not 2 <= n_target <= len(pool):
        raise InputError(f"n_target must be in [2, {len(pool)}] (the {where} of the target domain), got {n_target}.")
    order = np.random.default_rng(derive_seed(config.seed, "target-split")).permutation(pool)[:n_target]
    half = n_target // 2
    return source.subset(np.sort(order[:half])), source.subset(np.sort(order[half:])), in_domain, where


def _counts(values: np.ndarray) -> str:
    names, counts = np.unique(values, return_counts=True)
    return ", ".join(f"{n} ({c})" for n, c in sorted(zip(names.tolist(), counts.tolist()), key=lambda nc: -nc[1]))


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
    save_run(out / "run", scores, train, query, evaluation=evaluation, **render_hints(train, query))


def render_hints(train: Data, query: Data) -> dict[str, Any]:
    """How the report draws the inputs: text for corpora (training documents as they are, queries split by
    :func:`text_entries`), images for (C, H, W) inputs and square pixel vectors of ≥ 64, else rows."""
    if isinstance(train, Corpus) and isinstance(query, Corpus):
        train_entries = [{"id": i, "text": t} for i, t in zip(train.ids, train.texts)]
        return {"texts": {"train": train_entries, "query": text_entries(query)}}
    x = train.tensors()[0]
    if x.ndim == 4:
        return {"image_shape": list(x.shape[1:])}
    side = math.isqrt(x.shape[1]) if x.ndim == 2 else 0
    if x.ndim == 2 and side * side == x.shape[1] and side >= 8:
        return {"image_shape": [side, side]}
    return {}


def text_entries(docs: Corpus) -> list[dict[str, str]]:
    """What a text run shows of each example: its id, the context its loss does not measure (``text``: a prompt, or
    nothing for a plain document) and the tokens the loss measures (``continuation``)."""
    entries = []
    for i, (input_ids, loss_mask) in enumerate(zip(*docs.tensors())):
        measured = loss_mask.nonzero().flatten()
        first, last = (int(measured[0]), int(measured[-1]) + 1) if len(measured) else (len(input_ids), len(input_ids))
        entries.append(
            {
                "id": docs.ids[i],
                "text": docs.tokenizer.decode(input_ids[:first].tolist()),
                "continuation": docs.tokenizer.decode(input_ids[first:last].tolist()),
            }
        )
    return entries
