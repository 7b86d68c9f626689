"""Scores: a lazy (n_query × n_train) attribution matrix.

Sign convention (every attributor): ``score[q, i] > 0`` means training example ``i`` is a *proponent* of query
``q`` — training on it (up-weighting it) lowers the query's measurement (its loss). Negative scores are opponents.

A :class:`Scores` is defined by a function that computes any block of the matrix, so the full matrix never has to
exist: :meth:`Scores.topk` and :meth:`Scores.to_jsonl` stream over blocks of queries and training examples.
Gradient attributors build their scores as a weighted sum of low-rank products with :meth:`Scores.from_factors`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import InputError

BlockFn = Callable[[slice, slice], Tensor]


@dataclass
class Factor:
    """One term ``weight · A @ B[cols]ᵀ · diag(col_scale)`` of a factored score matrix.

    ``A`` is ``(n_query, k)`` and in memory; ``B`` is ``(n_train, k)`` and may be an on-disk memmap; ``col_scale``
    is an optional ``(n_train,)`` per-training-example factor of this term alone.
    """

    A: Tensor
    B: np.ndarray | Tensor
    weight: float = 1.0
    col_scale: np.ndarray | None = None


@dataclass
class Scores:
    """Attribution scores, shape ``(n_query, n_train)``; positive = proponent.

    Attributes:
        shape: ``(n_query, n_train)``.
        metadata: method, every hyperparameter actually used (defaults resolved), sign and normalisation.
        query_chunk, train_chunk: block sizes used when streaming.
    """

    block_fn: BlockFn
    shape: tuple[int, int]
    metadata: dict[str, Any] = field(default_factory=dict)
    query_chunk: int = 1024
    train_chunk: int = 8192

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_array(cls, values: np.ndarray | Tensor, metadata: dict | None = None) -> Scores:
        """Scores from a dense ``(n_query, n_train)`` matrix."""
        values = torch.as_tensor(np.asarray(values, dtype=np.float32))
        if values.ndim != 2:
            raise InputError(f"Scores need a 2-D (n_query, n_train) matrix, got shape {tuple(values.shape)}.")
        return cls(lambda r, c: values[r, c], tuple(values.shape), dict(metadata or {}))

    @classmethod
    def from_factors(
        cls,
        factors: Sequence[Factor],
        col_scale: np.ndarray | Tensor | None = None,
        row_scale: np.ndarray | Tensor | None = None,
        metadata: dict | None = None,
    ) -> Scores:
        """Scores ``diag(row_scale) · (Σ_m w_m A_m B_mᵀ) · diag(col_scale)``, computed block by block."""
        n_query, n_train = len(factors[0].A), len(factors[0].B)
        col = None if col_scale is None else torch.as_tensor(np.asarray(col_scale, dtype=np.float32))
        row = None if row_scale is None else torch.as_tensor(np.asarray(row_scale, dtype=np.float32))

        def block(r: slice, c: slice) -> Tensor:
            out = None
            for f in factors:
                b = torch.from_numpy(np.array(f.B[c], dtype=np.float32))
                term = f.A[r].float() @ b.T
                if f.col_scale is not None:
                    term.mul_(torch.from_numpy(np.array(f.col_scale[c], dtype=np.float32)))
                out = term.mul_(f.weight) if out is None else out.add_(term, alpha=f.weight)
            if col is not None:
                out.mul_(col[c])
            if row is not None:
                out.mul_(row[r, None])
            return out

        return cls(block, (n_query, n_train), dict(metadata or {}))

    @staticmethod
    def mean(members: Sequence[Scores], metadata: dict | None = None) -> Scores:
        """Element-wise mean of score matrices of equal shape (ensembles of any method)."""
        shapes = {s.shape for s in members}
        if len(shapes) != 1:
            raise InputError(f"Cannot average scores of different shapes {sorted(shapes)}.")

        def block(r: slice, c: slice) -> Tensor:
            return sum(s.block_fn(r, c) for s in members) / len(members)

        return Scores(block, members[0].shape, dict(metadata or {}))

    # -- access ---------------------------------------------------------------------------------------------------
    @property
    def n_query(self) -> int:
        return self.shape[0]

    @property
    def n_train(self) -> int:
        return self.shape[1]

    def block(self, rows: slice, cols: slice) -> np.ndarray:
        """Scores of queries ``rows`` against training examples ``cols`` (float32)."""
        return self.block_fn(rows, cols).float().numpy()

    @property
    def values(self) -> np.ndarray:
        """The whole matrix as float32 (materialises ``n_query × n_train``)."""
        out = np.empty(self.shape, dtype=np.float32)
        for r in _chunks(self.n_query, self.query_chunk):
            for c in _chunks(self.n_train, self.train_chunk):
                out[r, c] = self.block(r, c)
        return out

    def diagonal(self) -> np.ndarray:
        """``score[i, i]`` for ``i < min(n_query, n_train)`` (queries that are the training examples themselves)."""
        n = min(self.shape)
        return np.concatenate([self.block(r, r).diagonal() for r in _chunks(n, self.query_chunk)])

    def topk(self, k: int, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` highest (or lowest) scores of every query, streamed over blocks.

        Returns:
            ``(values, indices)``, both ``(n_query, k)``, sorted best first; indices are training-example indices.
        """
        if not 1 <= k <= self.n_train:
            raise InputError(f"topk needs 1 ≤ k ≤ n_train = {self.n_train}, got k={k}.")
        vals = np.empty((self.n_query, k), dtype=np.float32)
        idx = np.empty((self.n_query, k), dtype=np.int64)
        for r in _chunks(self.n_query, self.query_chunk):
            best_v = best_i = None
            for c in _chunks(self.n_train, self.train_chunk):
                v = self.block_fn(r, c).float()
                i = torch.arange(c.start, c.stop).expand_as(v)
                if best_v is not None:
                    v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
                best_v, pos = torch.topk(v, min(k, v.shape[1]), dim=1, largest=largest, sorted=True)
                best_i = i.gather(1, pos)
            vals[r], idx[r] = best_v.numpy(), best_i.numpy()
        return vals, idx

    def to_jsonl(
        self,
        path: str | os.PathLike,
        k: int = 10,
        query_ids: Sequence | None = None,
        train_ids: Sequence | None = None,
    ) -> None:
        """Write one JSON line per query with its top-``k`` proponents and opponents.

        Each line: ``{"query": id, "proponents": [{"train": id, "score": s}, ...], "opponents": [...]}``;
        proponents by decreasing score, opponents by increasing score.
        """
        k = min(k, self.n_train)
        pro_v, pro_i = self.topk(k, largest=True)
        opp_v, opp_i = self.topk(k, largest=False)
        qid = list(range(self.n_query)) if query_ids is None else list(query_ids)
        tid = None if train_ids is None else list(train_ids)

        def entries(vs: np.ndarray, ids: np.ndarray) -> list[dict]:
            return [{"train": int(i) if tid is None else tid[i], "score": float(v)} for v, i in zip(vs, ids)]

        with open(path, "w") as f:
            for q in range(self.n_query):
                line = {
                    "query": qid[q],
                    "proponents": entries(pro_v[q], pro_i[q]),
                    "opponents": entries(opp_v[q], opp_i[q]),
                }
                f.write(json.dumps(line) + "\n")

    def __repr__(self) -> str:
        method = self.metadata.get("method", "?")
        return f"Scores(method={method!r}, shape={self.shape})"


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(lo, min(lo + size, n)) for lo in range(0, n, size)]
