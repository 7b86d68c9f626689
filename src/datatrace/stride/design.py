"""Subset design: which training examples belong to which of the K subsets (STRIDE's measurement matrix).

Every training example joins exactly ``degree`` = d of the ``n_subsets`` = K subsets, drawn without replacement,
so the membership matrix M ∈ {0,1}^{K×n} is the adjacency matrix of a left-d-regular bipartite graph; with random
draws it is an expander with high probability, which is what makes k-sparse influence vectors recoverable from
K = O(k log(n/k)) subset responses. The design here is also *balanced*: subset sizes differ by at most one
(⌊n·d/K⌋ or ⌈n·d/K⌉ members), so no operator is trained on a much smaller or larger subset than another, and with
K = n, d = 1 every subset holds exactly one example.

M is stored compactly as an ``(n, d)`` integer array of subset ids per example (int16 when K ≤ 32767) and converted
on demand to ``scipy.sparse`` or ``torch.sparse``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch

from .._utils import derive_seed
from ..errors import DatatraceWarning, InputError

#: Default number of subsets and subsets per example (the paper's released operators use K = 1000, d = 10).
DEFAULT_SUBSETS, DEFAULT_DEGREE = 1000, 10
#: Largest K stored as int16.
INT16_MAX = np.iinfo(np.int16).max


@dataclass(frozen=True, eq=False)
class Design:
    """A left-d-regular membership design.

    Attributes:
        subsets: ``(n_train, degree)`` subset ids of each example, sorted within each row.
        n_subsets: K, the number of subsets (rows of M).
        seed: the seed it was drawn with (``None`` for a design built from a user's matrix).
    """

    subsets: np.ndarray
    n_subsets: int
    seed: int | None = None

    @property
    def n_train(self) -> int:
        return self.subsets.shape[0]

    @property
    def degree(self) -> int:
        return self.subsets.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of M: ``(n_subsets, n_train)``."""
        return (self.n_subsets, self.n_train)

    def sizes(self) -> np.ndarray:
        """``(K,)`` number of members of every subset."""
        return np.bincount(self.subsets.ravel(), minlength=self.n_subsets)

    def balance(self) -> dict[str, float]:
        """Subset-size summary: ``min``, ``max``, ``mean`` and ``std`` of the subset sizes."""
        sizes = self.sizes()
        return {
            "min": int(sizes.min()),
            "max": int(sizes.max()),
            "mean": float(sizes.mean()),
            "std": float(sizes.std()),
        }

    def member_lists(self) -> tuple[np.ndarray, np.ndarray]:
        """Members of every subset in CSR form: subset k holds ``members[indptr[k]:indptr[k + 1]]`` (ascending)."""
        order = np.argsort(self.subsets.ravel(), kind="stable")
        indptr = np.concatenate([[0], np.cumsum(self.sizes())])
        return indptr, order // self.degree

    def members(self, k: int) -> np.ndarray:
        """Indices of the training examples in subset ``k``."""
        return np.flatnonzero((self.subsets == k).any(axis=1))

    def to_scipy(self) -> scipy.sparse.csr_matrix:
        """M as a ``(K, n)`` float32 CSR matrix of ones."""
        rows = self.subsets.ravel().astype(np.int64)
        cols = np.repeat(np.arange(self.n_train), self.degree)
        ones = np.ones(len(rows), dtype=np.float32)
        return scipy.sparse.csr_matrix((ones, (rows, cols)), shape=self.shape)

    def to_torch(self, device: torch.device | str | None = None) -> torch.Tensor:
        """M as a ``(K, n)`` float32 sparse COO tensor."""
        rows = torch.from_numpy(self.subsets.astype(np.int64).ravel())
        cols = torch.arange(self.n_train).repeat_interleave(self.degree)
        values = torch.ones(len(rows), dtype=torch.float32)
        return torch.sparse_coo_tensor(
            torch.stack([rows, cols]), values, self.shape, device=device, check_invariants=True
        ).coalesce()

    def __repr__(self) -> str:
        return f"Design(n_subsets={self.n_subsets}, n_train={self.n_train}, degree={self.degree}, seed={self.seed})"

    @classmethod
    def from_matrix(cls, matrix) -> Design:
        """A design from a ``(K, n)`` 0/1 matrix (dense or sparse, NumPy, SciPy or torch) with equal column sums."""
        if isinstance(matrix, torch.Tensor):
            matrix = matrix.to_dense() if matrix.is_sparse or matrix.layout != torch.strided else matrix
            matrix = matrix.detach().cpu().numpy()
        coo = scipy.sparse.coo_matrix(matrix)
        coo.sum_duplicates()
        coo.eliminate_zeros()
        if coo.ndim != 2 or coo.nnz == 0 or not np.all(coo.data == 1):
            raise InputError("The membership matrix must be a non-empty (n_subsets, n_train) matrix of zeros and ones.")
        counts = np.bincount(coo.col, minlength=coo.shape[1])
        if counts.min() != counts.max():
            raise InputError(
                f"Every training example must belong to the same number of subsets (a left-regular design, as "
                f"dt.stride.design makes); column sums range from {counts.min()} to {counts.max()}."
            )
        order = np.lexsort((coo.row, coo.col))
        subsets = coo.row[order].reshape(coo.shape[1], counts[0])
        return cls(subsets.astype(_id_dtype(coo.shape[0])), coo.shape[0])


def auto_size(n_train: int) -> tuple[int, int]:
    """Default ``(n_subsets, degree)`` for ``n_train`` examples.

    K = min(1000, n) and d = min(10, max(1, K // 4)): the paper's K = 1000, d = 10 whenever n ≥ 1000, and for smaller
    training sets as many subsets as examples, each example in at most a quarter of them. Subsets then hold about
    n·d/K ≥ 1 examples: 10 for n from 40 to 1000, and 1% of the data for n ≥ 1000 as in the paper.
    """
    k = min(DEFAULT_SUBSETS, n_train)
    return k, min(DEFAULT_DEGREE, max(1, k // 4))


def design(n_train: int, n_subsets: int = DEFAULT_SUBSETS, degree: int = DEFAULT_DEGREE, seed: int = 0) -> Design:
    """Draw a balanced left-d-regular membership design.

    Args:
        n_train: number of training examples n.
        n_subsets: number of subsets K (= number of steering operators).
        degree: subsets per example d, 1 ≤ d ≤ K.
        seed: the same seed gives the same design.

    Warns:
        DatatraceWarning: when n·d < K, so that some subsets are empty (their operators learn nothing).
    """
    for name, value in (("n_train", n_train), ("n_subsets", n_subsets), ("degree", degree)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive int, got {value!r}.")
    if degree > n_subsets:
        raise InputError(
            f"degree d={degree} exceeds n_subsets K={n_subsets}: an example cannot join d distinct subsets out of "
            "fewer than d; use degree ≤ n_subsets."
        )
    rng = np.random.default_rng(derive_seed(seed, "stride-design"))
    rows = _balanced_rows(int(n_train), int(n_subsets), int(degree), rng)
    out = Design(rows.astype(_id_dtype(n_subsets)), int(n_subsets), seed)
    smallest = (n_train * degree) // n_subsets
    if smallest == 0:
        empty = int((out.sizes() == 0).sum())
        warnings.warn(
            f"n_train·degree = {n_train * degree} < n_subsets = {n_subsets}: {empty} subsets are empty (smallest "
            f"subset size 0) and their operators carry no information; use n_subsets ≤ {n_train * degree}.",
            DatatraceWarning,
            stacklevel=2,
        )
    return out


def _id_dtype(n_subsets: int) -> type:
    return np.int16 if n_subsets <= INT16_MAX else np.int32


def _balanced_rows(n: int, k: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, d)`` distinct subset ids per row, every id used ⌊nd/k⌋ or ⌈nd/k⌉ times, sorted within rows.

    A shuffled list of balanced "stubs" is cut into rows (a configuration model); rows that drew an id twice are
    repaired by reshuffling them together with random valid rows while that helps, then by single swaps that remove
    a repeat without creating one. Swaps keep every id's count, so the balance is exact.
    """
    if d == k:
        return np.tile(np.arange(k), (n, 1))
    sizes = np.full(k, (n * d) // k)
    sizes[rng.choice(k, (n * d) % k, replace=False)] += 1
    stubs = np.repeat(np.arange(k), sizes)
    rng.shuffle(stubs)
    rows = stubs.reshape(n, d)
    bad = _rows_with_repeats(rows)
    while len(bad):
        good = np.setdiff1d(np.arange(n), bad, assume_unique=True)
        pool = np.concatenate([bad, rng.choice(good, min(len(good), 3 * len(bad)), replace=False)])
        trial = rows[pool].ravel()
        rng.shuffle(trial)
        trial = trial.reshape(-1, d)
        if len(_rows_with_repeats(trial)) > len(bad) // 2:
            break  # reshuffling no longer converges quickly (dense designs): finish with swaps
        rows[pool] = trial
        bad = _rows_with_repeats(rows)
    for i in _rows_with_repeats(rows):
        _swap_out_repeats(rows, i, rng)
    rows.sort(axis=1)
    return rows


def _rows_with_repeats(rows: np.ndarray) -> np.ndarray:
    s = np.sort(rows, axis=1)
    return np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))


def _swap_out_repeats(rows: np.ndarray, i: int, rng: np.random.Generator, tries: int = 256) -> None:
    """Swap each repeated id of row ``i`` with an id of another row, so that neither row holds an id twice."""
    n, d = rows.shape
    while True:
        _, first = np.unique(rows[i], return_index=True)
        repeats = np.setdiff1d(np.arange(d), first)
        if not len(repeats):
            return
        p, v = repeats[0], rows[i, repeats[0]]
        for _ in range(1000):
            j = rng.integers(0, n, tries)
            q = rng.integers(0, d, tries)
            u = rows[j, q]
            ok = ~np.isin(u, rows[i]) & ~(rows[j] == v).any(axis=1)
            if ok.any():
                c = int(np.argmax(ok))
                rows[i, p], rows[j[c], q[c]] = u[c], v
                break
        else:  # pragma: no cover - a valid swap always exists when d < K
            raise RuntimeError("Could not balance the subset design; please report this with n, K, d and seed.")
