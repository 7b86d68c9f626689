"""Saved attribution runs: what ``datatrace report DIR`` reads.

A run directory holds the summary of one or more attributors' scores of the same queries against the same training
data, and what is needed to show those examples::

    run.json                      format "datatrace-run" v1: n_query, n_train, train/query data fingerprints,
                                  modality ("image" | "tabular" | "text"), render hints (image_shape,
                                  feature_names, class_names), k, bins, data source, method names
    data/train.safetensors        the data tensors (keys "0", "1", ...; labels last) — unless run.json names a
    data/query.safetensors        built-in benchmark whose data are loaded instead (and fingerprint-checked)
    data/train.jsonl, query.jsonl text runs: one {"text": ..., "continuation": ..., "tokens": [...]} per example
    scores/<method>/              a :class:`~datatrace.store.Store` (resumable, header-checked) with one row per
                                  query: proponents (k highest) and opponents (k lowest) as indices and scores,
                                  a histogram of the query's scores over all training examples (``bins`` counts and
                                  ``bins + 1`` edges), optionally the full score row (``dense=True``) and per-token
                                  scores of the proponents (text runs)
    evaluation.json               optional: per method {"lds": ..., "retrieval": ...} as plain JSON

Only the summary is stored by default, so a run of any size fits; it is computed by streaming over the scores
(:meth:`~datatrace.scores.Scores.topk` and blocks). Loading checks every fingerprint: scores of another dataset, or
data files that changed, are refused naming both fingerprints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..data import Data, as_data
from ..errors import InputError, StoreMismatchError, check_choice
from ..eval.metrics import ScoresLike, as_scores, query_rows, score_blocks
from ..scores import Scores
from ..store import Store
from .report import plain

FORMAT, FORMAT_VERSION = "datatrace-run", 1
MODALITIES = ("image", "tabular", "text")
#: Per-token scores of a query's top proponents: ``token_scores(query_index, train_indices) -> [per-token array]``.
TokenScores = Callable[[int, np.ndarray], Sequence[np.ndarray]]


@dataclass
class MethodSummary:
    """One method's stored summary, arrays indexed by query."""

    name: str
    metadata: dict[str, Any]
    pro_idx: np.ndarray
    pro_val: np.ndarray
    opp_idx: np.ndarray
    opp_val: np.ndarray
    hist: np.ndarray
    hist_edges: np.ndarray
    values: np.ndarray | None = None
    pro_tokens: np.ndarray | None = None


@dataclass
class Run:
    """A loaded attribution run (see the module docstring)."""

    path: Path
    info: dict[str, Any]
    train: Data
    query: Data
    methods: dict[str, MethodSummary]
    evaluation: dict[str, Any] = field(default_factory=dict)
    train_text: list[dict] | None = None
    query_text: list[dict] | None = None


def save_run(
    path: str | os.PathLike,
    scores: Mapping[str, ScoresLike] | ScoresLike,
    train: Sequence[Tensor] | Data,
    query: Sequence[Tensor] | Data,
    *,
    modality: str | None = None,
    image_shape: Sequence[int] | None = None,
    feature_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    texts: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    evaluation: Mapping[str, Mapping[str, Any]] | None = None,
    benchmark: str | None = None,
    k: int = 8,
    bins: int = 30,
    dense: bool = False,
    token_scores: Mapping[str, TokenScores] | None = None,
    shard_size: int = 64,
) -> Path:
    """Save scores and what is needed to render them as a run directory (see the module docstring).

    Args:
        path: the run directory (created; an existing run of the same data gets these methods added, resuming
            unfinished ones; one of other data is refused).
        scores: ``{method name: (n_query, n_train) scores}`` or one matrix (named by its metadata's method).
        train, query: the data the scores are about (tensors ``(X, ..., y)``; for text, token ids or anything).
        modality: ``"image"``, ``"tabular"`` or ``"text"``; default: text if ``texts``, image if ``image_shape``,
            else tabular.
        image_shape: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` of one input (images).
        feature_names, class_names: labels for tabular features and class indices.
        texts: ``{"train": [...], "query": [...]}`` of ``{"text": str, "continuation": str, "tokens": [str],
            "id": str}`` (only ``text`` required; the report labels an example by its ``id``).
        evaluation: ``{method: {"lds": LDSResult | dict, "retrieval": RetrievalResult | dict}}``.
        benchmark: name of the built-in benchmark whose ``data()`` are ``train, query``; the data files are then
            not written (the fingerprints are still recorded and checked on load).
        k, bins: proponents/opponents kept per query and histogram bins.
        dense: also store the full score matrix.
        token_scores: ``{method: fn(query_index, proponent_indices) -> [per-token scores]}`` for text runs.
        shard_size: queries per resumable shard.
    """
    path = Path(path)
    train, query = as_data(train, "train"), as_data(query, "query")
    if not isinstance(scores, Mapping):
        scores = as_scores(scores)
        scores = {str(scores.metadata.get("method", "scores")): scores}
    scores = {name: as_scores(s) for name, s in scores.items()}
    if not scores:
        raise InputError("save_run needs at least one score matrix.")
    for name, s in scores.items():
        if s.shape != (len(query), len(train)):
            raise InputError(
                f"Scores {name!r} have shape {s.shape}; the data have {len(query)} queries × {len(train)}."
            )
    modality = modality or ("text" if texts else "image" if image_shape else "tabular")
    check_choice("modality", modality, MODALITIES)
    if modality == "text" and not (texts and "train" in texts and "query" in texts):
        raise InputError('A text run needs texts={"train": [...], "query": [...]} to show its examples.')
    k = min(k, len(train))
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "n_query": len(query),
        "n_train": len(train),
        "train_fingerprint": train.fingerprint(),
        "query_fingerprint": query.fingerprint(),
        "modality": modality,
        "image_shape": list(image_shape) if image_shape else None,
        "feature_names": list(feature_names) if feature_names else None,
        "class_names": list(class_names) if class_names else None,
        "k": k,
        "bins": bins,
        "data": {"benchmark": benchmark} if benchmark else {"files": "data/"},
    }
    previous = _read_info(path) if (path / "run.json").exists() else None
    if previous is not None:
        _check_same_data(previous, info, path)
        info["methods"] = previous["methods"]
    else:
        info["methods"] = []
    path.mkdir(parents=True, exist_ok=True)
    if benchmark is None:
        (path / "data").mkdir(exist_ok=True)
        for name, data in (("train", train), ("query", query)):
            save_file(
                {str(i): t.contiguous() for i, t in enumerate(data.tensors())}, path / "data" / f"{name}.safetensors"
            )
    if texts:
        for name in ("train", "query"):
            _write_jsonl(path / "data" / f"{name}.jsonl", texts[name], len(train if name == "train" else query))
    for name, s in scores.items():
        fn = (token_scores or {}).get(name)
        _save_method(path / "scores" / name, name, s, info, k, bins, dense, fn, texts, shard_size)
        if name not in info["methods"]:
            info["methods"].append(name)
    (path / "run.json").write_text(json.dumps(plain(info), indent=2))
    if evaluation:
        old = json.loads((path / "evaluation.json").read_text()) if (path / "evaluation.json").exists() else {}
        old.update(plain({m: {kind: _as_dict(r) for kind, r in ev.items()} for m, ev in evaluation.items()}))
        (path / "evaluation.json").write_text(json.dumps(old, indent=2))
    return path


def load_run(path: str | os.PathLike) -> Run:
    """Load a run directory, refusing one without scores or whose fingerprints do not match its data."""
    path = Path(path)
    if not (path / "run.json").exists():
        raise InputError(
            f"{path} is not an attribution run: run.json is missing. Save one with datatrace.apps.runs.save_run "
            "(or the --save option of datatrace select / contamination)."
        )
    info = _read_info(path)
    methods = [m for m in info["methods"] if (path / "scores" / m / "header.json").exists()]
    if not methods:
        raise InputError(f"{path} holds no scores: no scores/<method>/header.json for methods {info['methods']}.")
    train, query = _load_data(path, info)
    for name, data in (("train", train), ("query", query)):
        found, recorded = data.fingerprint(), info[f"{name}_fingerprint"]
        if found != recorded:
            raise StoreMismatchError(
                f"The {name} data of {path} have fingerprint {found}, but the scores were computed on data with "
                f"fingerprint {recorded}: these scores belong to another dataset."
            )
    summaries = {}
    for name in methods:
        header = json.loads((path / "scores" / name / "header.json").read_text())
        meta = header["meta"]
        for key in ("train_fingerprint", "query_fingerprint"):
            if meta[key] != info[key]:
                raise StoreMismatchError(
                    f"scores/{name} were computed on data with {key.replace('_', ' ')} {meta[key]}, but the run's "
                    f"data have {info[key]}: remove that directory or save the run again."
                )
        complete = np.load(path / "scores" / name / "complete.npy")
        if not complete.all():
            raise InputError(f"scores/{name} in {path} is incomplete ({int((~complete).sum())} shards missing).")
        arrays = {a: np.load(path / "scores" / name / f"{a}.npy", mmap_mode="r") for a in header["arrays"]}
        summaries[name] = MethodSummary(
            name,
            meta["method_metadata"],
            *(arrays[a] for a in ("pro_idx", "pro_val", "opp_idx", "opp_val", "hist", "hist_edges")),
            values=arrays.get("values"),
            pro_tokens=arrays.get("pro_tokens"),
        )
    evaluation = json.loads((path / "evaluation.json").read_text()) if (path / "evaluation.json").exists() else {}
    texts = {n: _read_jsonl(path / "data" / f"{n}.jsonl") for n in ("train", "query")}
    return Run(path, info, train, query, summaries, evaluation, texts["train"], texts["query"])


def _save_method(path, name, scores: Scores, info, k, bins, dense, token_fn, texts, shard_size) -> None:
    arrays = {
        "pro_idx": ((k,), "int64"),
        "pro_val": ((k,), "float32"),
        "opp_idx": ((k,), "int64"),
        "opp_val": ((k,), "float32"),
        "hist": ((bins,), "int64"),
        "hist_edges": ((bins + 1,), "float64"),
    }
    if dense:
        arrays["values"] = ((scores.n_train,), "float32")
    max_tokens = 0
    if token_fn is not None:
        max_tokens = max(len(t.get("tokens", ())) for t in texts["train"])
        if max_tokens == 0:
            raise InputError(f"token_scores for {name!r} need the training texts' 'tokens'.")
        arrays["pro_tokens"] = ((k, max_tokens), "float32")
    meta = {
        "method": name,
        "method_metadata": plain(scores.metadata),
        "train_fingerprint": info["train_fingerprint"],
        "query_fingerprint": info["query_fingerprint"],
    }
    store = Store(path, scores.n_query, arrays, meta, shard_size)
    for shard in store.missing_shards():
        rows = store.shard_rows(shard)
        part = query_rows(scores, rows)
        pro_val, pro_idx = part.topk(k)
        opp_val, opp_idx = part.topk(k, largest=False)
        values = {"pro_idx": pro_idx, "pro_val": pro_val, "opp_idx": opp_idx, "opp_val": opp_val}
        values["hist"], values["hist_edges"] = _histograms(part, bins)
        if dense:
            values["values"] = part.values
        if token_fn is not None:
            tokens = np.full((part.n_query, k, max_tokens), np.nan, dtype=np.float32)
            for j in range(part.n_query):
                for p, per_token in enumerate(token_fn(rows.start + j, pro_idx[j])):
                    per_token = np.asarray(per_token, dtype=np.float32)[:max_tokens]
                    tokens[j, p, : len(per_token)] = per_token
            values["pro_tokens"] = tokens
        store.write_shard(shard, values)


def _histograms(scores: Scores, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query histogram of all its scores on ``bins`` equal bins over [min, max], in two streaming passes."""
    lo = np.full(scores.n_query, np.inf)
    hi = np.full(scores.n_query, -np.inf)
    for rows, _, block in score_blocks(scores):
        lo[rows] = np.minimum(lo[rows], block.min(axis=1))
        hi[rows] = np.maximum(hi[rows], block.max(axis=1))
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise InputError("Scores contain NaN or infinite values; a run can only be saved from finite scores.")
    hi = np.where(hi > lo, hi, lo + 1.0)
    edges = lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, bins + 1)[None, :]
    counts = np.zeros((scores.n_query, bins), dtype=np.int64)
    for rows, _, block in score_blocks(scores):
        r = np.arange(rows.start, rows.stop)
        position = (block - lo[r, None]) / (hi - lo)[r, None] * bins
        which = np.clip(position.astype(np.int64), 0, bins - 1)
        for j, q in enumerate(r):
            counts[q] += np.bincount(which[j], minlength=bins)
    return counts, edges


def _load_data(path: Path, info: dict) -> tuple[Data, Data]:
    source = info["data"]
    if "benchmark" in source:
        from ..benchmarks import get

        return get(source["benchmark"]).data()
    out = []
    for name in ("train", "query"):
        file = path / "data" / f"{name}.safetensors"
        if not file.exists():
            raise InputError(f"{path} has no {name} data: {file} is missing.")
        tensors = load_file(file)
        out.append(Data(tuple(tensors[str(i)] for i in range(len(tensors))), name))
    return out[0], out[1]


def _check_same_data(previous: dict, info: dict, path: Path) -> None:
    for key in ("train_fingerprint", "query_fingerprint", "n_query", "n_train"):
        if previous[key] != info[key]:
            raise StoreMismatchError(
                f"{path} holds a run on other data ({key} {previous[key]}, now {info[key]}); use another directory."
            )


def _read_info(path: Path) -> dict:
    info = json.loads((path / "run.json").read_text())
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path / 'run.json'} is not a {FORMAT} v{FORMAT_VERSION} file "
            f"(format {info.get('format')!r} v{info.get('format_version')!r})."
        )
    return info


def _as_dict(result: Any) -> Any:
    if hasattr(result, "__dataclass_fields__"):
        return {f: getattr(result, f) for f in result.__dataclass_fields__}
    return result


def _write_jsonl(file: Path, rows: Sequence[Mapping[str, Any]], n: int) -> None:
    if len(rows) != n:
        raise InputError(f"{file.stem} texts have {len(rows)} entries for {n} examples.")
    file.parent.mkdir(exist_ok=True)
    with open(file, "w") as f:
        for row in rows:
            f.write(json.dumps(plain(dict(row))) + "\n")


def _read_jsonl(file: Path) -> list[dict] | None:
    if not file.exists():
        return None
    with open(file) as f:
        return [json.loads(line) for line in f]
