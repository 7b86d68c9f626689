"""Text → tokenised training/query examples with stable ids: :func:`corpus` and the :class:`Corpus` it returns.

Two ways to cut text into examples:

- ``mode="documents"``: one example per document, ``[bos] + tokens + [eos]`` (specials the tokenizer defines),
  cut to ``max_length`` tokens. Ids are the documents' ids (given, or ``"0"``, ``"1"``, … / file names).
- ``mode="chunks"``: documents are concatenated (each wrapped in bos/eos) into one token stream cut into chunks of
  exactly ``max_length`` tokens (the last one shorter, right-padded). A chunk's id is ``"{doc_id}@{offset}"``: the
  document it starts in and the token offset there, so ids do not move when later documents change.

With ``prompts``, each example is ``prompt + text`` and only the text's tokens (and the final eos) are loss tokens:
supervised fine-tuning data, or prompt + continuation queries.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Data
from ..errors import DatatraceWarning, InputError, check_choice
from .tokenizers import ByteTokenizer, HFTokenizer, as_tokenizer

MODES = ("documents", "chunks")
ON_OVERFLOW = ("warn", "truncate", "error")


class Corpus(Data):
    """Tokenised examples as :class:`~datatrace.data.Data` ``(input_ids, loss_mask)`` plus what they came from.

    Attributes:
        ids: stable string id of every example.
        texts: the text of every example as the model sees it (truncated documents are truncated here too; the
            decoded chunk in chunks mode). Surface-similarity baselines use it.
        tokenizer: the tokenizer that produced the ids.
    """

    def __init__(
        self,
        input_ids: torch.Tensor,
        loss_mask: torch.Tensor,
        ids: Sequence[str],
        texts: Sequence[str],
        tokenizer: ByteTokenizer | HFTokenizer,
        name: str = "corpus",
    ):
        super().__init__((input_ids, loss_mask), name=name)
        if not len(ids) == len(texts) == len(self):
            raise InputError(f"{name}: {len(self)} examples but {len(ids)} ids and {len(texts)} texts.")
        if len(set(ids)) != len(ids):
            raise InputError(f"{name}: example ids are not unique.")
        self.ids, self.texts, self.tokenizer = list(ids), list(texts), tokenizer

    def subset(self, indices: Sequence[int] | np.ndarray) -> Corpus:
        idx = np.asarray(indices, dtype=np.int64)
        input_ids, loss_mask = self.batch(idx)
        ids, texts = [self.ids[i] for i in idx], [self.texts[i] for i in idx]
        out = Corpus(input_ids, loss_mask, ids, texts, self.tokenizer, self.name)
        out.indices = idx if self.indices is None else self.indices[idx]
        return out

    def __repr__(self) -> str:
        t = self.tensors()[0].shape[1]
        return f"Corpus({self.name!r}, {len(self)} examples × {t} tokens, {self.tokenizer!r})"


def token_queries(query: Corpus, example: int = 0) -> Corpus:
    """Token-level attribution: one query per loss token of ``query[example]``, that token alone in its loss mask.

    Row k measures the NLL of the example's k-th loss token given the tokens before it, so ``attr.score(rows)``
    says which tokens of the query each training example influences most (row k, column i). Ids are
    ``"{id}#{position}"``; the texts are the example's text up to and including that token. Because
    :class:`~datatrace.lm.CausalLMTask` takes the weighted mean over loss tokens, the example's own scores from any
    attributor that is linear in the query's gradient (Grad-Dot, TRAK, influence functions) are the
    ω-weighted mean of these rows.
    """
    if not 0 <= example < len(query):
        raise InputError(f"example {example} is out of range for a query corpus of {len(query)} examples.")
    input_ids, loss_mask = query.batch([example])
    positions = loss_mask[0].nonzero().flatten()
    rows = len(positions)
    one_hot = torch.zeros(rows, loss_mask.shape[1])
    one_hot[torch.arange(rows), positions] = 1.0
    ids = [f"{query.ids[example]}#{int(t)}" for t in positions]
    texts = [query.tokenizer.decode(input_ids[0, : int(t) + 1].tolist()) for t in positions]
    return Corpus(input_ids.expand(rows, -1).clone(), one_hot, ids, texts, query.tokenizer, f"{query.name}-tokens")


def corpus(
    source: Sequence[str] | str | os.PathLike | Sequence[os.PathLike] | Any,
    tokenizer: Any,
    *,
    mode: str = "documents",
    max_length: int | None = None,
    prompts: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    text_column: str = "text",
    on_overflow: str = "warn",
    name: str = "corpus",
) -> Corpus:
    """Tokenise texts into a :class:`Corpus` of ``(input_ids, loss_mask)`` examples.

    Args:
        source: a list of strings (one document each); a path or list of paths (``pathlib.Path``; one document per
            file, id = file name); or an HF ``datasets.Dataset`` (column ``text_column``, ids from its ``"id"``
            column when present).
        tokenizer: :class:`~datatrace.lm.ByteTokenizer` or a ``transformers`` tokenizer.
        mode: ``"documents"`` or ``"chunks"`` (see module docs).
        max_length: tokens per example (the chunk length in chunks mode, where it is required). Use the model's
            context length.
        prompts: one prompt per document; prompt tokens are context only (loss weight 0). Documents mode only.
        ids: one id per document (default: as described for ``source``).
        text_column: the text column of an HF dataset.
        on_overflow: documents longer than ``max_length``: ``"warn"`` (truncate and warn once with the count),
            ``"truncate"`` (silently) or ``"error"``.
        name: name used in messages.

    Empty documents (no text after tokenisation) are dropped with a warning naming them; ids of the others are kept.
    """
    tok = as_tokenizer(tokenizer)
    check_choice("mode", mode, MODES)
    check_choice("on_overflow", on_overflow, ON_OVERFLOW)
    texts, doc_ids = _texts_and_ids(source, ids, text_column)
    if prompts is not None and (mode != "documents" or len(prompts) != len(texts)):
        raise InputError(f"prompts need mode='documents' and one prompt per document ({len(texts)}).")
    if max_length is not None and max_length < 2:
        raise InputError(f"max_length must be ≥ 2 tokens, got {max_length}.")
    if mode == "chunks" and max_length is None:
        raise InputError("mode='chunks' needs max_length (the chunk length in tokens).")
    encoded = [tok.encode(t) for t in texts]
    empty = [i for i, e in enumerate(encoded) if not e]
    if len(empty) == len(encoded):
        raise InputError(f"{name}: every document is empty.")
    if empty:
        shown = ", ".join(repr(doc_ids[i]) for i in empty[:5]) + (" …" if len(empty) > 5 else "")
        warnings.warn(f"{name}: dropped {len(empty)} empty document(s): {shown}.", DatatraceWarning, stacklevel=2)
    keep = [i for i in range(len(encoded)) if encoded[i]]
    pre = [int(tok.bos_id)] if tok.bos_id is not None else []
    post = [int(tok.eos_id)] if tok.eos_id is not None else []
    if mode == "chunks":
        rows, weights, out_ids = _chunks(
            [pre + encoded[i] + post for i in keep], [doc_ids[i] for i in keep], max_length
        )
    else:
        prompt_tokens = [tok.encode(prompts[i]) if prompts is not None else [] for i in keep]
        rows = [pre + p + encoded[i] + post for p, i in zip(prompt_tokens, keep)]
        weights = [
            [0.0] * (len(pre) + len(p)) + [1.0] * (len(r) - len(pre) - len(p)) for p, r in zip(prompt_tokens, rows)
        ]
        out_ids = [doc_ids[i] for i in keep]
        if max_length is not None:
            rows, weights = _truncate(rows, weights, out_ids, max_length, on_overflow, name)
        no_loss = [out_ids[i] for i, w in enumerate(weights) if sum(w[1:]) == 0]
        if no_loss:
            raise InputError(
                f"{name}: {len(no_loss)} example(s) have no token to predict (a one-token document without bos/eos, "
                f"or a prompt filling max_length), e.g. {no_loss[:3]}; shorten the prompts or raise max_length."
            )
    return _pack(rows, weights, out_ids, tok, name)


def _texts_and_ids(source: Any, ids: Sequence[str] | None, text_column: str) -> tuple[list[str], list[str]]:
    if isinstance(source, str):
        raise InputError("source is a single string: pass a list of texts, or a pathlib.Path for a file.")
    if hasattr(source, "column_names"):  # an HF datasets.Dataset
        if text_column not in source.column_names:
            raise InputError(f"The dataset has no column {text_column!r}; columns: {source.column_names}.")
        texts = list(source[text_column])
        default_ids = [str(i) for i in source["id"]] if "id" in source.column_names else None
    elif isinstance(source, os.PathLike) or (
        isinstance(source, (list, tuple)) and source and all(isinstance(s, os.PathLike) for s in source)
    ):
        paths = [Path(source)] if isinstance(source, os.PathLike) else [Path(s) for s in source]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise InputError(f"Text files not found: {missing[:5]}.")
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in paths]
        default_ids = [p.name for p in paths] if len({p.name for p in paths}) == len(paths) else [str(p) for p in paths]
    elif isinstance(source, (list, tuple)) and all(isinstance(s, str) for s in source):
        texts, default_ids = list(source), None
    else:
        raise InputError(
            f"source must be a list of strings, pathlib.Path(s) or an HF datasets.Dataset, got {type(source).__name__}."
        )
    if not texts:
        raise InputError("source has no documents.")
    if ids is not None and len(ids) != len(texts):
        raise InputError(f"{len(ids)} ids for {len(texts)} documents.")
    doc_ids = [str(i) for i in ids] if ids is not None else default_ids or [str(i) for i in range(len(texts))]
    return texts, doc_ids


def _truncate(rows, weights, ids, max_length, on_overflow, name):
    long = [i for i, r in enumerate(rows) if len(r) > max_length]
    if long and on_overflow == "error":
        shown = ", ".join(f"{ids[i]!r} ({len(rows[i])})" for i in long[:5])
        raise InputError(
            f"{name}: {len(long)} document(s) exceed max_length={max_length} tokens, e.g. {shown}; "
            "use on_overflow='warn' to truncate them or mode='chunks' to keep all their text."
        )
    if long and on_overflow == "warn":
        warnings.warn(
            f"{name}: truncated {len(long)} of {len(rows)} documents to max_length={max_length} tokens.",
            DatatraceWarning,
            stacklevel=3,
        )
    return [r[:max_length] for r in rows], [w[:max_length] for w in weights]


def _chunks(streams: list[list[int]], doc_ids: list[str], length: int):
    """Cut the concatenated token streams into ``length``-token chunks, each id'd by where it starts."""
    flat = [t for s in streams for t in s]
    owner = np.repeat(np.arange(len(streams)), [len(s) for s in streams])
    starts = np.concatenate([[0], np.cumsum([len(s) for s in streams])[:-1]])
    rows, weights, ids = [], [], []
    for lo in range(0, len(flat), length):
        row = flat[lo : lo + length]
        if len(row) < 2:
            break
        d = int(owner[lo])
        rows.append(row)
        weights.append([0.0] + [1.0] * (len(row) - 1))
        ids.append(f"{doc_ids[d]}@{lo - int(starts[d])}")
    return rows, weights, ids


def _pack(rows, weights, ids, tok, name) -> Corpus:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), int(tok.pad_id), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, (r, w) in enumerate(zip(rows, weights)):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        loss_mask[i, : len(w)] = torch.tensor(w, dtype=torch.float32)
    loss_mask[:, 0] = 0.0  # the first token has no prediction
    texts = [tok.decode(r) for r in rows]
    return Corpus(input_ids, loss_mask, ids, texts, tok, name)
