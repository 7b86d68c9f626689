"""Sparse recovery: per-example influence from the K subset responses of a query (STRIDE's last step).

For a query with responses y ∈ R^K (y_k = how much operator k lowers the query's measurement), the additive model
y ≈ M w + b·1 says that each training example j adds w_j to the response of every subset it belongs to. The
estimate is the Lasso

    ŵ = argmin_{w, b} ½‖y − b·1 − M w‖² + λ‖w‖₁,

solved for many queries at once. The intercept b (``fit_intercept=True``) absorbs a response shared by all
operators, which no single example explains. λ is set per query as a fraction ``alpha`` of λ_max = ‖Mᵀ(y − ȳ)‖_∞
(the smallest λ with ŵ = 0), because responses have no natural scale; ``alpha="heldout"`` instead picks, per query,
the fraction that best predicts the responses of a held-out set of subsets (no query LDS involved).

Solvers: ``"fista"`` (torch, on the sparse index form of M: working sets grown from full correlation passes, FISTA
with per-query step 1/‖M_S‖² from power iteration on the working set S, warm starts, CPU or GPU); ``"cd"``
(scikit-learn coordinate descent, one query at a time); ``"omp"`` (orthogonal matching pursuit, adding the most
correlated example until no correlation exceeds λ). ``"auto"`` (the default) takes coordinate descent on the CPU
while its dense ``(Q, n)`` coefficient block fits in ``AUTO_CD_BYTES``, FISTA otherwise (GPU, or large n·Q): when
many coefficients are non-zero (small λ, as ``alpha="heldout"`` often picks), FISTA needs hundreds of working-set
iterations where coordinate descent needs a few passes (``benchmarks/stride_lds.py --bench mnist5k-mlp``, 100
queries, held-out λ: fit + score 175 s with FISTA against 16 s).
Every solver reports the relative duality gap of the Lasso at its solution and warns when it is above ``tol``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import derive_seed, track
from ..errors import DatatraceWarning, InputError, NonFiniteError, check_choice
from .design import Design

SOLVERS = ("auto", "fista", "cd", "omp")
#: ``solver="auto"`` uses coordinate descent on the CPU while its dense (Q, n) float64 coefficients fit in this.
AUTO_CD_BYTES = 256 * 2**20
#: Default λ / λ_max (the best region measured on a small MLP was 0.1–0.3; see stride-spec.md §9).
DEFAULT_ALPHA = 0.1
#: Grid of λ / λ_max tried by ``alpha="heldout"``.
HELDOUT_ALPHAS = (0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01)
#: Training examples per chunk of a full correlation pass Mᵀr.
SCAN_CHUNK = 65536
#: Precision of every recovery computation: float32 floors the relative duality gap near 1e-6 (the residual and
#: the centred correlations lose digits to cancellation), which made tight tolerances unreachable.
DTYPE = torch.float64


@dataclass
class RecoveryInfo:
    """Diagnostics of :func:`recover`, one entry per query.

    Attributes:
        solver: the solver used.
        alpha: λ / λ_max of every query.
        lam: λ of every query (0 when the query's responses are constant).
        lam_max: λ_max = ‖Mᵀ(y − ȳ)‖_∞ of every query.
        intercept: fitted b (0 without an intercept).
        gap: relative duality gap (P − D) / P(0) at the solution, P(0) = ½‖y − ȳ‖².
        n_iter: iterations used (FISTA: inner iterations summed over working-set rounds; CD: epochs; OMP: steps).
        n_nonzero: number of non-zero ŵ_j.
        converged: ``gap <= tol`` (OMP: stopped by its own rule within ``max_iter`` steps).
        heldout_error: with ``alpha="heldout"``, the mean squared prediction error of the held-out subsets'
            responses for every alpha of ``heldout_alphas`` (queries × alphas).
    """

    solver: str
    alpha: np.ndarray
    lam: np.ndarray
    lam_max: np.ndarray
    intercept: np.ndarray
    gap: np.ndarray
    n_iter: np.ndarray
    n_nonzero: np.ndarray
    converged: np.ndarray
    tol: float
    heldout_alphas: tuple[float, ...] = ()
    heldout_error: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def recover(
    M: Design | Any,
    Y: Any,
    *,
    solver: str = "auto",
    alpha: float | str = DEFAULT_ALPHA,
    lam: float | np.ndarray | None = None,
    fit_intercept: bool = True,
    tol: float = 1e-4,
    max_iter: int = 2000,
    heldout: float = 0.2,
    seed: int = 0,
    device: torch.device | str | None = None,
    verbose: bool = True,
    return_info: bool = False,
):
    """Recover per-example influence ``W`` (n × Q) from subset responses ``Y`` (K × Q).

    Args:
        M: the membership design (:class:`~datatrace.stride.design.Design`) or a ``(K, n)`` 0/1 matrix (NumPy,
            SciPy sparse or torch) in which every column has the same number of ones.
        Y: ``(K, Q)`` responses (or ``(K,)`` for one query); ``Y[k, q]`` = decrease of query q's measurement
            under operator k.
        solver: ``"auto"``, ``"fista"``, ``"cd"`` or ``"omp"`` (see the module docstring).
        alpha: λ = alpha · λ_max per query, 0 < alpha (alpha ≥ 1 gives ŵ = 0); or ``"heldout"``: choose alpha per
            query from ``HELDOUT_ALPHAS`` by the prediction error on a held-out fraction ``heldout`` of the subsets,
            then refit on all subsets.
        lam: absolute λ (a scalar or one per query); overrides ``alpha``.
        fit_intercept: fit the shared offset b.
        tol: target relative duality gap.
        max_iter: iteration budget per query (see :attr:`RecoveryInfo.n_iter`).
        heldout: fraction of subsets held out by ``alpha="heldout"``.
        seed: seeds the held-out subsets and the power iteration.
        device: where the FISTA/OMP computations run (default: CUDA when available).
        verbose: progress bar over query blocks and alphas.
        return_info: also return a :class:`RecoveryInfo`.

    Returns:
        ``W`` as a ``scipy.sparse.csc_matrix`` of shape ``(n, Q)``, float32; positive = the example's membership
        raises the response (lowers the query's measurement); or ``(W, info)``.
    """
    solver = check_choice("solver", solver, SOLVERS)
    design = M if isinstance(M, Design) else Design.from_matrix(M)
    Y = _as_responses(Y, design.n_subsets)
    alpha = _check_alpha(alpha, lam)
    if not 0 < heldout < 1:
        raise InputError(f"heldout must be a fraction in (0, 1), got {heldout}.")
    if tol <= 0 or max_iter < 1:
        raise InputError(f"tol must be > 0 and max_iter ≥ 1, got tol={tol}, max_iter={max_iter}.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if solver == "auto":
        small = design.n_train * Y.shape[0] * 8 <= AUTO_CD_BYTES  # Y is (Q, K) here
        solver = "cd" if device.type == "cpu" and small else "fista"
    full = Membership(design, None, fit_intercept, device)
    yc = full.center(Y.to(device))
    lam_max = full.scan(yc)[0]
    info_extra: dict[str, Any] = {}
    heldout_error = None
    if lam is not None:
        lam_q = torch.as_tensor(np.broadcast_to(np.asarray(lam, dtype=np.float64), (Y.shape[0],)).copy())
        if not (lam_q > 0).all():
            raise InputError(f"lam must be > 0, got {lam!r}.")
        lam_q = lam_q.to(device, DTYPE)
        alpha_q = lam_q / lam_max.clamp_min(1e-30)
    elif alpha == "heldout":
        alpha_q, heldout_error, held = _select_alpha(
            design, Y.to(device), solver, fit_intercept, tol, max_iter, heldout, seed, device, verbose
        )
        lam_q = alpha_q * lam_max
        info_extra["heldout_subsets"] = held
    else:
        if alpha >= 1:
            warnings.warn(f"alpha={alpha} ≥ 1 sets λ ≥ λ_max: every ŵ is 0.", DatatraceWarning, stacklevel=2)
        alpha_q = torch.full_like(lam_max, float(alpha))
        lam_q = alpha_q * lam_max
    sol, n_iter = _solve(solver, full, yc, lam_q, None, tol, max_iter, seed, verbose)
    gap = full.gap(yc, sol, lam_q)
    # OMP is a greedy least-squares method, not a Lasso solver: its Lasso gap is reported but it has converged when
    # its own rule stopped it (no correlation above λ), not when the budget ran out.
    converged = n_iter < max_iter if solver == "omp" else gap <= tol
    if not converged.all():
        bad = (~converged).nonzero().flatten().tolist()
        target = "its stopping rule" if solver == "omp" else f"the duality-gap tolerance {tol:g}"
        warnings.warn(
            f"{solver} did not reach {target} for {len(bad)} of {len(gap)} queries "
            f"(queries {bad[:10]}{' ...' if len(bad) > 10 else ''}; largest relative gap {float(gap.max()):.3g} "
            f"after {int(n_iter.max())} iterations). Raise max_iter or use a larger alpha.",
            DatatraceWarning,
            stacklevel=2,
        )
    W = sol.to_scipy(design.n_train)
    if not return_info:
        return W
    info = RecoveryInfo(
        solver=solver,
        alpha=alpha_q.cpu().numpy(),
        lam=lam_q.cpu().numpy(),
        lam_max=lam_max.cpu().numpy(),
        intercept=full.intercept(Y.to(device), sol).cpu().numpy(),
        gap=gap.cpu().numpy(),
        n_iter=n_iter.cpu().numpy(),
        n_nonzero=(sol.values != 0).sum(1).cpu().numpy(),
        converged=converged.cpu().numpy(),
        tol=tol,
        heldout_alphas=HELDOUT_ALPHAS if heldout_error is not None else (),
        heldout_error=heldout_error,
        extra=info_extra,
    )
    return W, info


def backproject(M: Design | Any, Y: Any, fit_intercept: bool = True) -> np.ndarray:
    """The back-projection Mᵀ(y − ȳ)/d: each example's mean response over its d subsets, ``(n, Q)`` float32.

    A dense baseline for :func:`recover` and the tie-breaker among the examples the Lasso leaves at 0.
    """
    design = M if isinstance(M, Design) else Design.from_matrix(M)
    Y = _as_responses(Y, design.n_subsets)
    op = Membership(design, None, fit_intercept, torch.device("cpu"))
    yc = op.center(Y)
    return (torch.cat(list(op.correlations(yc))) / design.degree).float().numpy()


# -- the centred membership operator --------------------------------------------------------------------------------
class Membership:
    """The Lasso's design operator A = ρ ⊙ (M − 1 cᵀ) in index form, on a device.

    ρ ∈ {0,1}^K marks the subsets used (all, or those not held out) and c_j is the mean of column j over them, so
    that A w is centred over the used subsets and the intercept drops out of the Lasso (b = ȳ − cᵀŵ). Without an
    intercept c = 0. Queries are rows: responses are ``(Q, K)`` and coefficients ``(Q, ·)``.
    """

    def __init__(self, design: Design, used: np.ndarray | None, fit_intercept: bool, device: torch.device):
        self.design, self.device, self.fit_intercept = design, device, fit_intercept
        self.n, self.K, self.d = design.n_train, design.n_subsets, design.degree
        self.subsets = torch.from_numpy(design.subsets.astype(np.int64)).to(device)
        used = np.ones(self.K, dtype=bool) if used is None else used
        self.rowmask = torch.as_tensor(used, dtype=DTYPE, device=device)
        self.n_used = int(used.sum())
        if fit_intercept:
            self.colmean = F.embedding_bag(self.subsets, self.rowmask[:, None], mode="sum")[:, 0] / self.n_used
        else:
            self.colmean = torch.zeros(self.n, dtype=DTYPE, device=device)

    def center(self, Y: Tensor) -> Tensor:
        """Responses minus their mean over the used subsets (when fitting an intercept), zero on the others."""
        Y = Y.to(DTYPE) * self.rowmask
        if self.fit_intercept:
            Y = (Y - Y.sum(1, keepdim=True) / self.n_used) * self.rowmask
        return Y

    def correlations(self, R: Tensor):
        """Yield Aᵀr for all training examples in chunks of ``SCAN_CHUNK``, each ``(chunk, Q)``."""
        table = (R * self.rowmask).T.contiguous()
        total = R.sum(1)
        for lo in range(0, self.n, SCAN_CHUNK):
            hi = min(lo + SCAN_CHUNK, self.n)
            g = F.embedding_bag(self.subsets[lo:hi], table, mode="sum")
            yield g - self.colmean[lo:hi, None] * total[None, :]

    def scan(self, R: Tensor, top: int = 0) -> tuple[Tensor, Tensor | None]:
        """‖Aᵀr‖_∞ per query and, if ``top`` > 0, the indices of the ``top`` largest |Aᵀr|, ``(Q, top)``."""
        gmax = torch.zeros(R.shape[0], dtype=DTYPE, device=self.device)
        best_v = best_i = None
        lo = 0
        for g in self.correlations(R):
            a = g.abs().T
            gmax = torch.maximum(gmax, a.amax(1))
            if top:
                i = torch.arange(lo, lo + a.shape[1], device=self.device).expand_as(a)
                if best_v is not None:
                    a, i = torch.cat([best_v, a], 1), torch.cat([best_i, i], 1)
                best_v, pos = torch.topk(a, min(top, a.shape[1]), dim=1)
                best_i = i.gather(1, pos)
            lo += g.shape[0]
        return gmax, best_i

    def columns(self, idx: Tensor) -> Restricted:
        return Restricted(self, idx)

    def residual(self, yc: Tensor, sol: Sparse) -> Tensor:
        return yc - self.columns(sol.index).matvec(sol.values)

    def gap(self, yc: Tensor, sol: Sparse, lam: Tensor) -> Tensor:
        """Relative duality gap (P(w) − D(θ)) / P(0) of the Lasso at ``sol``, θ = r / max(λ, ‖Aᵀr‖_∞)."""
        R = self.residual(yc, sol)
        gmax = self.scan(R)[0]
        return _duality_gap(yc, R, sol.values.abs().sum(1), lam, gmax)

    def intercept(self, Y: Tensor, sol: Sparse) -> Tensor:
        if not self.fit_intercept:
            return torch.zeros(Y.shape[0], dtype=DTYPE, device=self.device)
        mean = (Y.to(DTYPE) * self.rowmask).sum(1) / self.n_used
        return mean - (self.colmean[sol.index] * sol.values).sum(1)

    def predict(self, Y: Tensor, sol: Sparse) -> Tensor:
        """Responses of all K subsets predicted by ``sol`` and its intercept, ``(Q, K)``."""
        raw = Restricted(self, sol.index, centred=False).matvec(sol.values)
        return raw + self.intercept(Y, sol)[:, None]


class Restricted:
    """A restricted to a working set of columns per query: ``idx`` is ``(Q, P)``."""

    def __init__(self, op: Membership, idx: Tensor, centred: bool = True):
        self.op, self.idx = op, idx
        Q, P = idx.shape
        offsets = torch.arange(Q, device=op.device)[:, None, None] * op.K
        self.flat = (op.subsets[idx] + offsets).reshape(-1)  # (Q·P·d) positions in the (Q, K) response grid
        self.cmean = op.colmean[idx] if centred else None
        self.mask = op.rowmask if centred else None
        self.shape = (Q, P)

    def matvec(self, w: Tensor) -> Tensor:
        Q, P = self.shape
        K, d = self.op.K, self.op.d
        out = torch.zeros(Q * K, device=w.device, dtype=w.dtype)
        out.index_add_(0, self.flat, w[:, :, None].expand(Q, P, d).reshape(-1))
        out = out.view(Q, K)
        if self.cmean is None:
            return out
        return (out - (self.cmean * w).sum(1, keepdim=True)) * self.mask

    def rmatvec(self, r: Tensor) -> Tensor:
        Q, P = self.shape
        r = r * self.mask
        g = r.reshape(-1)[self.flat].view(Q, P, self.op.d).sum(-1)
        return g - self.cmean * r.sum(1, keepdim=True)


@dataclass
class Sparse:
    """Per-query sparse coefficients: ``index`` and ``values``, both ``(Q, P)`` (padding has value 0)."""

    index: Tensor
    values: Tensor

    @classmethod
    def empty(cls, Q: int, device: torch.device) -> Sparse:
        return cls(torch.zeros(Q, 0, dtype=torch.long, device=device), torch.zeros(Q, 0, dtype=DTYPE, device=device))

    @classmethod
    def from_dense(cls, W: Tensor) -> Sparse:
        """From ``(Q, n)`` dense coefficients."""
        width = max(int((W != 0).sum(1).max()), 1)
        values, index = torch.topk(W.abs(), width, dim=1)
        return cls(index, W.gather(1, index) * (values > 0))

    def to_scipy(self, n: int) -> scipy.sparse.csc_matrix:
        Q, P = self.index.shape
        keep = (self.values != 0).cpu().numpy()
        rows = self.index.cpu().numpy()[keep]
        cols = np.repeat(np.arange(Q), P).reshape(Q, P)[keep]
        vals = self.values.detach().cpu().numpy().astype(np.float32)[keep]
        return scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(n, Q))


def _duality_gap(yc: Tensor, R: Tensor, l1: Tensor, lam: Tensor, gmax: Tensor) -> Tensor:
    p0 = 0.5 * (yc**2).sum(1)
    primal = 0.5 * (R**2).sum(1) + lam * l1
    theta = R / torch.maximum(lam, gmax).clamp_min(1e-300)[:, None]
    dual = p0 - 0.5 * ((yc - lam[:, None] * theta) ** 2).sum(1)
    return torch.where(p0 > 0, (primal - dual).clamp_min(0) / p0.clamp_min(1e-300), torch.zeros_like(p0))


# -- solvers --------------------------------------------------------------------------------------------------------
def _solve(solver, op, yc, lam, warm, tol, max_iter, seed, verbose) -> tuple[Sparse, Tensor]:
    if solver == "fista":
        return _fista(op, yc, lam, warm, tol, max_iter, seed, verbose)
    if solver == "cd":
        return _coordinate_descent(op, yc, lam, tol, max_iter)
    return _omp(op, yc, lam, max_iter)


def _fista(op: Membership, yc, lam, warm, tol, max_iter, seed, verbose, ws_start: int = 128):
    """Working-set FISTA: solve on the columns with the largest correlations, grow the set until the gap is met.

    Each round makes one full pass Aᵀr (``embedding_bag`` over the n × d index array), which gives the duality gap
    and the next working set: the current support plus the ``size`` most correlated columns, ``size`` doubling every
    round. On the working set, FISTA steps cost O(Q·|S|·d) instead of O(Q·n·d), and the step 1/‖A_S‖² from power
    iteration on A_S is far larger than 1/‖A‖², which is dominated by n·d²/K.
    """
    Q = yc.shape[0]
    sol = warm if warm is not None else Sparse.empty(Q, op.device)
    n_iter = torch.zeros(Q, dtype=torch.long, device=op.device)
    size = min(op.n, ws_start)
    gen = torch.Generator(device=op.device).manual_seed(derive_seed(seed, "stride-power") % 2**62)
    for _ in track(range(64), "STRIDE recovery", verbose=verbose):
        R = op.residual(yc, sol)
        gmax, top = op.scan(R, top=size)
        gap = _duality_gap(yc, R, sol.values.abs().sum(1), lam, gmax)
        if (gap <= tol).all() or int(n_iter.max()) >= max_iter:
            break
        support = torch.where(sol.values != 0, sol.index, top[:, :1])
        index = torch.sort(torch.cat([support, top], 1), dim=1)[0]  # repeats are masked as padding
        values = torch.zeros(index.shape, dtype=DTYPE, device=op.device)
        values.scatter_add_(1, torch.searchsorted(index, support), sol.values)  # warm start on the working set
        sol, used = _fista_restricted(
            op.columns(index), yc, lam, values, gap.clamp_min(tol) * 0.3, gen, max_iter - n_iter
        )
        n_iter += used
        size = min(op.n, max(ws_start, 2 * int((sol.values != 0).sum(1).max())))
    return _compact(sol), n_iter


def _fista_restricted(A: Restricted, yc, lam, w, target, gen, budget) -> tuple[Sparse, Tensor]:
    """FISTA with adaptive restart on a working set, per-query step sizes, until each query's gap ≤ ``target``."""
    Q, P = A.shape
    valid = torch.ones(Q, P, device=w.device, dtype=torch.bool)
    valid[:, 1:] = A.idx[:, 1:] != A.idx[:, :-1]  # working sets are sorted; repeats are padding
    L = _power_iteration(A, valid, gen) * 1.1  # a few power steps underestimate; a rejected step doubles L
    z, t = w.clone(), torch.ones(Q, dtype=w.dtype, device=w.device)
    objective = _objective(A, yc, w, lam)
    used = torch.zeros(Q, dtype=torch.long, device=w.device)
    active = budget > 0
    for it in range(int(budget.max())):
        grad = A.rmatvec(A.matvec(z) - yc)
        step = 1.0 / L[:, None]
        w_new = torch.sign(z - step * grad) * (torch.abs(z - step * grad) - lam[:, None] * step).clamp_min(0) * valid
        new_objective = _objective(A, yc, w_new, lam)
        worse = new_objective > objective * (1 + 1e-6) + 1e-12
        restarted = t == 1
        L = torch.where(worse & restarted, 2 * L, L)  # the power-iteration estimate was too small
        accept = active & ~worse
        t_new = torch.where(accept, (1 + torch.sqrt(1 + 4 * t * t)) / 2, torch.ones_like(t))
        momentum = ((z - w_new) * (w_new - w)).sum(1) > 0  # gradient restart (O'Donoghue & Candès)
        beta = torch.where(accept & ~momentum, (t - 1) / t_new, torch.zeros_like(t))
        t = torch.where(momentum, torch.ones_like(t), t_new)
        w_next = torch.where(accept[:, None], w_new, w)
        z = torch.where(active[:, None], w_next + beta[:, None] * (w_next - w), w)
        w, objective = w_next, torch.where(accept, new_objective, objective)
        used += active.long()
        if it % 10 == 9:
            R = yc - A.matvec(w)
            gmax = (A.rmatvec(R).abs() * valid).amax(1)
            gap = _duality_gap(yc, R, w.abs().sum(1), lam, gmax)
            active &= (gap > target) & (used < budget)
            if not active.any():
                break
    return Sparse(A.idx, w), used


def _objective(A: Restricted, yc: Tensor, w: Tensor, lam: Tensor) -> Tensor:
    return 0.5 * ((yc - A.matvec(w)) ** 2).sum(1) + lam * w.abs().sum(1)


def _power_iteration(A: Restricted, valid: Tensor, gen: torch.Generator, steps: int = 10) -> Tensor:
    """‖A_S‖² per query (largest eigenvalue of A_SᵀA_S), by power iteration from a seeded random start."""
    v = torch.rand(A.shape, generator=gen, dtype=DTYPE, device=valid.device) * valid
    norm = torch.ones(A.shape[0], dtype=DTYPE, device=valid.device)
    for _ in range(steps):
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
        v = A.rmatvec(A.matvec(v)) * valid
        norm = v.norm(dim=1)
    return norm.clamp_min(1e-12)


def _compact(sol: Sparse) -> Sparse:
    """Drop zero coefficients and padding, keeping the width of the widest query."""
    nonzero = sol.values != 0
    width = max(int(nonzero.sum(1).max()), 1)
    order = torch.argsort((~nonzero).to(torch.int8), dim=1, stable=True)[:, :width]
    return Sparse(sol.index.gather(1, order), sol.values.gather(1, order) * nonzero.gather(1, order))


def _coordinate_descent(op: Membership, yc: Tensor, lam: Tensor, tol: float, max_iter: int):
    """scikit-learn's Lasso (coordinate descent on the sparse CSC matrix), one query at a time."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    rows = op.rowmask.cpu().numpy() > 0
    X = op.design.to_scipy()[rows].tocsc().astype(np.float64)  # float32 X would make scikit-learn fit in float32
    Yc = yc.cpu().numpy()[:, rows].astype(np.float64)
    coefs, n_iter = np.zeros((len(Yc), op.n)), np.zeros(len(Yc), dtype=np.int64)
    for q, (y, lam_q) in enumerate(zip(Yc, lam.cpu().numpy())):
        if lam_q <= 0:
            continue
        # scikit-learn minimises ‖y − Xw − b‖²/(2·n_samples) + α‖w‖₁ and stops on a gap of tol·‖y‖².
        model = Lasso(alpha=lam_q / rows.sum(), fit_intercept=op.fit_intercept, tol=tol / 2, max_iter=max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, y)
        coefs[q], n_iter[q] = model.coef_, model.n_iter_
    W = torch.as_tensor(coefs, dtype=DTYPE, device=op.device)
    return Sparse.from_dense(W), torch.as_tensor(n_iter, device=op.device)


def _omp(op: Membership, yc: Tensor, lam: Tensor, max_iter: int):
    """Orthogonal matching pursuit: add the column most correlated with the residual (normalised by its norm), refit
    by least squares on the support, stop when no |A_jᵀr| exceeds λ (the Lasso's optimality threshold)."""
    Q = yc.shape[0]
    norms = (op.design.degree - op.n_used * op.colmean**2).clamp_min(1e-12).sqrt()
    supports: list[list[int]] = [[] for _ in range(Q)]
    coefs: list[Tensor] = [torch.zeros(0, dtype=DTYPE, device=op.device) for _ in range(Q)]
    R = yc.clone()
    active = lam > 0
    n_iter = torch.zeros(Q, dtype=torch.long, device=op.device)
    for _ in range(min(max_iter, op.n_used)):
        if not active.any():
            break
        G = torch.cat(list(op.correlations(R))).T  # (Q, n)
        score = (G.abs() / norms).masked_fill(G.abs() <= lam[:, None], -1.0)
        best = score.argmax(1)
        for q in active.nonzero().flatten().tolist():
            if score[q, best[q]] < 0 or int(best[q]) in supports[q]:
                active[q] = False
                continue
            supports[q].append(int(best[q]))
            idx = torch.tensor(supports[q], device=op.device)
            cols = _dense_columns(op, idx)
            coefs[q] = torch.linalg.lstsq(cols, yc[q][:, None]).solution[:, 0]
            R[q] = yc[q] - cols @ coefs[q]
            n_iter[q] += 1
    width = max(max(len(s) for s in supports), 1)
    index = torch.zeros(Q, width, dtype=torch.long, device=op.device)
    values = torch.zeros(Q, width, dtype=DTYPE, device=op.device)
    for q, (s, c) in enumerate(zip(supports, coefs)):
        index[q, : len(s)], values[q, : len(s)] = torch.tensor(s, dtype=torch.long), c
    return Sparse(index, values), n_iter


def _dense_columns(op: Membership, idx: Tensor) -> Tensor:
    """Columns ``idx`` of A as a dense ``(K, len(idx))`` matrix."""
    cols = torch.zeros(op.K, len(idx), dtype=DTYPE, device=op.device)
    cols[op.subsets[idx].T, torch.arange(len(idx), device=op.device)] = 1.0
    return (cols - op.colmean[idx]) * op.rowmask[:, None] if op.fit_intercept else cols * op.rowmask[:, None]


# -- λ selection ----------------------------------------------------------------------------------------------------
def _select_alpha(design, Y, solver, fit_intercept, tol, max_iter, heldout, seed, device, verbose):
    """Per query, the alpha of ``HELDOUT_ALPHAS`` whose fit on the other subsets best predicts held-out subsets."""
    K = design.n_subsets
    rng = np.random.default_rng(derive_seed(seed, "stride-heldout"))
    held = np.sort(rng.choice(K, max(1, round(heldout * K)), replace=False))
    used = np.ones(K, dtype=bool)
    used[held] = False
    op = Membership(design, used, fit_intercept, device)
    yc = op.center(Y)
    lam_max = op.scan(yc)[0]
    errors, sol = [], None
    for a in track(HELDOUT_ALPHAS, "STRIDE λ selection", verbose=verbose):
        sol, _ = _solve(solver, op, yc, a * lam_max, sol, tol, max_iter, seed, False)
        pred = op.predict(Y, sol)[:, held]
        errors.append(((pred - Y[:, held].to(DTYPE)) ** 2).mean(1))
    errors = torch.stack(errors, 1)
    best = torch.as_tensor(HELDOUT_ALPHAS, dtype=DTYPE, device=device)[errors.argmin(1)]
    return best, errors.cpu().numpy(), held


# -- validation -----------------------------------------------------------------------------------------------------
def _as_responses(Y: Any, n_subsets: int) -> Tensor:
    """``(Q, K)`` ``DTYPE`` tensor from a ``(K, Q)`` or ``(K,)`` array."""
    Y = torch.as_tensor(np.asarray(Y) if not isinstance(Y, Tensor) else Y).detach()
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[0] != n_subsets:
        raise InputError(f"Y must have shape (n_subsets, n_queries) = ({n_subsets}, Q), got {tuple(Y.shape)}.")
    Y = Y.T.to(DTYPE).contiguous()
    bad = ~torch.isfinite(Y).all(1)
    if bad.any():
        raise NonFiniteError(f"Responses of query {int(bad.nonzero()[0, 0])} contain NaN or inf.")
    return Y


def _check_alpha(alpha: float | str, lam) -> float | str:
    if isinstance(alpha, str):
        check_choice("alpha", alpha, ("heldout",))
        if lam is not None:
            raise InputError("Pass either lam (absolute λ) or alpha='heldout', not both.")
        return alpha
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise InputError(
            f"alpha must be a number > 0 (λ = alpha·λ_max) or 'heldout', got {alpha!r}; λ ≤ 0 is not a Lasso."
        )
    return float(alpha)
