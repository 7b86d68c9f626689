"""The Hessian of the mean training loss as a batched linear operator, and the solvers that invert it.

``H = (1/N) Σ_i ∇²_θ L_i`` over the N examples of the Hessian data (the training set or a stated sample of it), either
exactly (``kind="exact"``: forward-over-reverse ``jvp(grad)``) or as its Gauss–Newton part (``kind="gn"``:
``H_GN = (1/N) Σ_i J_iᵀ Λ_i J_i`` with J_i the Jacobian of the model output and Λ_i = ∇²_z L_i the Hessian of the
loss w.r.t. that output; positive semi-definite whenever the loss is convex in the output, as cross-entropy and
squared error are). Products are taken with many vectors at once (``vmap`` over the vectors), and summed over data
batches in float64.

Solvers of ``(H + λI) X = B`` for many right-hand sides at once: :func:`hessian_matrix` (explicit),
:func:`conjugate_gradient`, :func:`lissa`, and :func:`arnoldi` (top eigenpairs).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from .._utils import derive_seed, model_device, output_tensor, track
from ..data import Data, to_device
from ..errors import InputError, NonFiniteError
from ..grads import _Bound
from ..task import Task

Batch = tuple[Tensor, ...]

#: Example–vector pairs per vmapped Hessian-vector product (bounds the memory of the batched tangents).
PAIRS_PER_CALL = 2**14
#: Rademacher probes of the Hutchinson estimate of trace(H), which scales the default damping.
TRACE_PROBES = 64
#: Vectors per block of the block Arnoldi iteration (one batched Hessian-vector product each).
ARNOLDI_BLOCK = 32
#: Largest model output per example (O) whose loss Hessian Λ (O × O) KFAC/EK-FAC factor exactly.
MAX_OUTPUT_DIM = 1024
#: Bytes of identity columns multiplied by H at once when building the explicit Hessian.
EXPLICIT_COLUMN_BYTES = 2**26


class OutputSplit:
    """A task's loss on one batch, split into the model output z(θ) and the loss as a function of z.

    The Gauss–Newton Hessian and the KFAC factors need both halves. The split records the arguments of the single
    call ``model(...)`` that ``task.loss`` makes and replays the loss with a stand-in model that returns a given z.
    """

    def __init__(self, model: nn.Module, task: Task, batch: Batch, check: bool = False):
        recorder = _Recorder(model)
        with torch.no_grad():
            loss = task.loss(recorder, batch)
        if len(recorder.calls) != 1:
            raise InputError(
                f"The Gauss–Newton Hessian needs a task loss that calls the model exactly once; "
                f"{type(task).__name__}.loss called it {len(recorder.calls)} times. Use hessian='exact'."
            )
        self.model, self.task, self.batch = model, task, batch
        self.args, self.kwargs = recorder.calls[0]
        if check and not torch.allclose(self.loss_of_output(recorder.output), loss, rtol=1e-5, atol=1e-6):
            raise InputError(
                f"{type(task).__name__}.loss depends on the model other than through its output; "
                "the Gauss–Newton Hessian cannot be formed. Use hessian='exact'."
            )

    def forward(self) -> Tensor:
        """The model output on the batch (with autograd, hooks and all)."""
        return output_tensor(self.model(*self.args, **self.kwargs))

    def output(self, state: dict[str, Tensor]) -> Tensor:
        """The model output with parameters and buffers ``state`` (a ``functional_call``)."""
        return output_tensor(functional_call(self.model, state, self.args, self.kwargs))

    def loss_of_output(self, z: Tensor) -> Tensor:
        """Per-example losses ``(B,)`` of the batch if the model had output ``z``."""
        return self.task.loss(_Fixed(z), self.batch)

    def output_hessian_factors(self, z: Tensor) -> Tensor:
        """``(B, O, O)`` factors L_i with L_i L_iᵀ = Λ_i = ∇²_z L_i, O = z[i].numel() (negative curvature clipped).

        A task that defines ``sampled_output_hessian_factors(z, batch) -> (B, O, C)`` (e.g.
        :class:`~datatrace.lm.CausalLMTask`, whose O = tokens × vocabulary is far too large) supplies C random columns
        with E[L_i L_iᵀ] = Λ_i instead: KFAC/EK-FAC then estimate the Gauss–Newton Hessian without bias.

        Raises:
            InputError: if O exceeds ``MAX_OUTPUT_DIM`` (each column of L_i costs one backward pass downstream).
        """
        sampled = getattr(self.task, "sampled_output_hessian_factors", None)
        if sampled is not None:  # outputs too large to factor exactly (language models): an unbiased sample
            return sampled(z.detach(), self.batch)
        size = z[0].numel()
        if size > MAX_OUTPUT_DIM:
            raise InputError(
                f"KFAC/EK-FAC factor the Gauss–Newton Hessian exactly, with one backward pass per model output; this "
                f"model has {size:,} outputs per example (limit {MAX_OUTPUT_DIM:,}). Use solver='cg' or 'arnoldi', "
                "or LoGra with precondition='identity'."
            )
        task = self.task

        def loss_one(flat: Tensor, example: Batch) -> Tensor:
            z_i = flat.reshape(z.shape[1:]).unsqueeze(0)
            return task.loss(_Fixed(z_i), tuple(t.unsqueeze(0) for t in example)).sum()

        # float64: for confident predictions Λ = diag(p) − ppᵀ cancels to ~1e-5 and float32 would lose 1% of it.
        lam = vmap(torch.func.hessian(loss_one))(z.detach().double().reshape(len(z), -1), self.batch)
        if not torch.isfinite(lam).all():
            raise NonFiniteError(
                "Non-finite Hessian of the loss w.r.t. the model output in a batch of the Hessian data; check those "
                "examples' losses."
            )
        eigval, eigvec = torch.linalg.eigh(lam)
        return (eigvec * eigval.clamp_min(0).sqrt().unsqueeze(1)).to(z.dtype)


class _Recorder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls, self.output = model, [], None

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        self.output = self.model(*args, **kwargs)
        return self.output


class _Fixed(nn.Module):
    def __init__(self, output: Tensor):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs) -> Tensor:
        return self.output


class HessianOperator:
    """``V ↦ V H`` for the (Gauss–Newton or exact) Hessian H of the mean loss over ``data``, rows of V batched.

    Args:
        model: the model (parameters are read, never modified).
        task: defines the per-example loss.
        data: the Hessian data (N examples); H is the mean over them.
        names: parameter names (the order of the flattened vectors).
        kind: ``"gn"`` or ``"exact"``.
        batch_size: examples per Hessian-vector product.
        verbose: progress bars.
    """

    def __init__(
        self, model: nn.Module, task: Task, data: Data, names: Sequence[str], kind: str, batch_size: int, verbose: bool
    ):
        self.model, self.task, self.data, self.kind = model, task, data, kind
        self.batch_size, self.verbose = batch_size, verbose
        self.names = list(names)
        params = dict(model.named_parameters())
        self.shapes = [params[n].shape for n in self.names]
        self.sizes = [params[n].numel() for n in self.names]
        self.dim = sum(self.sizes)
        self.device = model_device(model)
        self.params = {n: params[n].detach() for n in self.names}
        state = list(model.named_parameters()) + list(model.named_buffers())
        self.frozen = {k: v.detach() for k, v in state if k not in self.params}
        if kind == "gn":
            OutputSplit(model, task, to_device(data.batch(slice(0, min(2, len(data)))), self.device), check=True)

    def __len__(self) -> int:
        return len(self.data)

    def matvec(self, vectors: Tensor, indices: np.ndarray | None = None) -> Tensor:
        """``(m, P)`` float64 products of each row with H (mean over ``indices`` of the data, default all)."""
        n = len(self.data) if indices is None else len(indices)
        out = torch.zeros(vectors.shape, dtype=torch.float64)
        if indices is None:
            batches = self.data.batches(self.batch_size)
        else:
            batches = ((lo, self.data.batch(indices[lo : lo + self.batch_size])) for lo in range(0, n, self.batch_size))
        v = vectors.to(self.device, next(iter(self.params.values())).dtype)
        for lo, batch in batches:
            out += self.batch_matvec(to_device(batch, self.device), v, lo).cpu().double()
        return out.div_(n)

    def batch_matvec(self, batch: Batch, vectors: Tensor, offset: int = 0) -> Tensor:
        """``Σ_{i ∈ batch} V ∇²L_i`` (or its Gauss–Newton part), one row per vector."""
        product = self._gn_product(batch) if self.kind == "gn" else self._exact_product(batch)
        chunk = max(1, PAIRS_PER_CALL // len(batch[0]))
        parts = [
            self._flat(vmap(product)(self._unflat(vectors[lo : lo + chunk]))) for lo in range(0, len(vectors), chunk)
        ]
        out = torch.cat(parts)
        if not torch.isfinite(out).all():
            raise NonFiniteError(
                f"Non-finite Hessian-vector product on training examples {offset}–{offset + len(batch[0]) - 1}; "
                "check their losses, or use hessian='gn' with a numerically stable loss."
            )
        return out

    def _exact_product(self, batch: Batch):
        bound = _Bound(self.model, self.task.loss)
        frozen = {f"model.{k}": v for k, v in self.frozen.items()}

        def total_loss(p: dict[str, Tensor]) -> Tensor:
            return functional_call(bound, {**frozen, **{f"model.{k}": v for k, v in p.items()}}, (batch,)).sum()

        gradient = grad(total_loss)

        def product(v: dict[str, Tensor]) -> dict[str, Tensor]:
            return jvp(gradient, (self.params,), (v,))[1]

        return product

    def _gn_product(self, batch: Batch):
        split = OutputSplit(self.model, self.task, batch)

        def output(p: dict[str, Tensor]) -> Tensor:
            return split.output({**self.frozen, **p})

        z, pullback = vjp(output, self.params)
        loss_gradient = grad(lambda out: split.loss_of_output(out).sum())

        def product(v: dict[str, Tensor]) -> dict[str, Tensor]:
            jv = jvp(output, (self.params,), (v,))[1]
            return pullback(jvp(loss_gradient, (z,), (jv,))[1])[0]

        return product

    def _unflat(self, vectors: Tensor) -> dict[str, Tensor]:
        parts = torch.split(vectors, self.sizes, dim=1)
        return {n: p.reshape(len(vectors), *s) for n, p, s in zip(self.names, parts, self.shapes)}

    def _flat(self, tree: dict[str, Tensor]) -> Tensor:
        return torch.cat([tree[n].reshape(tree[n].shape[0], -1) for n in self.names], dim=1)


def estimate_trace(op: HessianOperator, seed: int) -> float:
    """Hutchinson estimate of trace(H) with ``TRACE_PROBES`` seeded Rademacher probes (one batched pass)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "hessian-trace"))
    probes = torch.randint(0, 2, (TRACE_PROBES, op.dim), generator=gen).double().mul_(2).sub_(1)
    return float((probes * op.matvec(probes)).sum() / TRACE_PROBES)


def hessian_matrix(op: HessianOperator, what: str = "explicit Hessian") -> Tensor:
    """The ``(P, P)`` float64 Hessian, built from products with identity columns (symmetrised)."""
    chunk = max(1, min(op.dim, EXPLICIT_COLUMN_BYTES // (8 * op.dim)))
    cols = []
    for lo in track(range(0, op.dim, chunk), what, -(-op.dim // chunk), op.verbose):
        eye = torch.zeros(min(chunk, op.dim - lo), op.dim, dtype=torch.float64)
        eye[:, lo : lo + len(eye)] = torch.eye(len(eye), dtype=torch.float64)
        cols.append(op.matvec(eye))
    h = torch.cat(cols)
    return (h + h.T) / 2


@dataclass
class SolveInfo:
    """How an iterative solve ended: iterations used and the worst relative residual ‖(H+λI)x − b‖/‖b‖."""

    iterations: int
    relative_residual: float
    converged: bool

    def as_dict(self) -> dict:
        return {"iterations": self.iterations, "relative_residual": self.relative_residual, "converged": self.converged}


def conjugate_gradient(
    op: HessianOperator, rhs: Tensor, damping: float, tol: float, max_iter: int
) -> tuple[Tensor, SolveInfo]:
    """Solve ``(H + λI) x_j = b_j`` for every row b_j of ``rhs`` by conjugate gradient, all rows at once.

    Each row stops when its relative residual ‖r‖/‖b‖ ≤ ``tol``; only unconverged rows are multiplied by H.

    Raises:
        InputError: if H + λI has non-positive curvature along a search direction (not positive definite).
    """
    return conjugate_gradient_rows(
        lambda p, rows: op.matvec(p) + damping * p,
        rhs,
        tol,
        max_iter,
        lambda curvature: (
            f"H + λI is not positive definite (curvature {curvature:.3g} along a CG direction, "
            f"λ={damping:.3g}); use hessian='gn' or a larger damping."
        ),
        verbose=op.verbose,
    )


def conjugate_gradient_rows(
    matvec: Callable[[Tensor, Tensor], Tensor],
    rhs: Tensor,
    tol: float,
    max_iter: int,
    indefinite: Callable[[float], str],
    precondition: Callable[[Tensor], Tensor] | None = None,
    verbose: bool = False,
) -> tuple[Tensor, SolveInfo]:
    """Solve A_j x_j = b_j for every row b_j of ``rhs`` ``(N, D)`` by (preconditioned) conjugate gradient, all rows
    at once; each row may have its own positive definite A_j.

    ``matvec(p, rows)`` returns A_j p_j for the search directions ``p`` ``(len(rows), D)`` of the rows ``rows``
    (indices into ``rhs``); ``precondition`` applies an approximation of A_j⁻¹ to such rows (none: identity). Each row
    stops when its relative residual ‖r‖/‖b‖ ≤ ``tol``; only unconverged rows are multiplied.

    Raises:
        InputError: with message ``indefinite(curvature)`` if some A_j has non-positive curvature along a search
            direction (not positive definite).
    """
    b = rhs.double()
    x = torch.zeros_like(b)
    r = b.clone()
    z = r if precondition is None else precondition(r)
    p = z.clone()
    b_norm = b.norm(dim=1).clamp_min(1e-300)
    rz = (r * z).sum(1)
    active = (r.norm(dim=1) / b_norm > tol).nonzero().squeeze(1)
    it = 0
    for _ in track(range(max_iter), "conjugate gradient", max_iter, verbose):
        if not len(active):
            break
        it += 1
        hp = matvec(p[active], active)
        curvature = (p[active] * hp).sum(1)
        if (curvature <= 0).any():
            raise InputError(indefinite(float(curvature.min())))
        alpha = rz[active] / curvature
        x[active] += alpha[:, None] * p[active]
        r[active] -= alpha[:, None] * hp
        z = r[active] if precondition is None else precondition(r[active])
        rz_new = (r[active] * z).sum(1)
        p[active] = z + (rz_new / rz[active])[:, None] * p[active]
        rz[active] = rz_new
        active = active[r[active].norm(dim=1) / b_norm[active] > tol]
    residual = float((r.norm(dim=1) / b_norm).max())
    return x, SolveInfo(it, residual, residual <= tol)


def top_eigenvalue(op: HessianOperator, seed: int, iters: int = 20) -> float:
    """Largest eigenvalue of H by power iteration (seeded start)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "power-iteration"))
    v = torch.randn(1, op.dim, generator=gen, dtype=torch.float64)
    value = 0.0
    for _ in track(range(iters), "power iteration", iters, op.verbose):
        v = v / v.norm()
        hv = op.matvec(v)
        value = float((v * hv).sum())
        v = hv
    return value


def lissa(
    op: HessianOperator,
    rhs: Tensor,
    damping: float,
    scale: float,
    depth: int,
    repeats: int,
    batch_size: int,
    tol: float,
    seed: int,
) -> tuple[Tensor, SolveInfo]:
    """LiSSA (Agarwal et al., 2017): stochastic Neumann series for ``(H + λI)⁻¹ b``, all rows at once.

    Each of ``repeats`` runs iterates ``x ← b + x − (H_B + λI) x / s`` with H_B the Hessian of a fresh minibatch
    (``batch_size`` examples drawn without replacement, reshuffled every epoch; seeded) for at most ``depth``
    steps, and returns ``x / s``; the runs are averaged. The true relative residual (full Hessian) is checked about
    20 times per run and a run stops once it is ≤ ``tol``. ``s`` must exceed the largest eigenvalue of H_B + λI
    for the series to converge.

    Raises:
        InputError: if the iterates diverge (``scale`` too small for the minibatch Hessians).
    """
    b = rhs.double()
    n = len(op)
    epoch = -(-n // batch_size)
    check_every = max(epoch, depth // 20)
    total, steps, residual = torch.zeros_like(b), 0, math.inf
    bound = b.norm(dim=1).max() / damping  # ‖(H + λI)⁻¹ b‖ ≤ ‖b‖ / λ
    for r in range(repeats):
        rng = np.random.default_rng(derive_seed(seed, "lissa", r))
        x = b.clone()
        order = rng.permutation(n)
        for step in track(range(1, depth + 1), f"LiSSA run {r + 1}/{repeats}", depth, op.verbose):
            pos = (step - 1) % epoch
            if pos == 0 and step > 1:
                order = rng.permutation(n)
            idx = order[pos * batch_size : (pos + 1) * batch_size]
            x = b + x - (op.matvec(x, idx) + damping * x) / scale
            steps += 1
            if not x.norm(dim=1).max() / scale <= 10 * bound:  # also catches NaN
                raise InputError(
                    f"LiSSA diverged after {step} steps with scale s={scale:.3g}: s must exceed the largest "
                    "eigenvalue of the minibatch Hessians; pass a larger lissa_scale or lissa_batch_size."
                )
            if step % check_every == 0 or step == depth:
                residual = _relative_residual(op, x / scale, b, damping)
                if residual <= tol:
                    break
        total += x / scale
    x = total / repeats
    residual = _relative_residual(op, x, b, damping) if repeats > 1 else residual
    return x, SolveInfo(steps, residual, residual <= tol)


def _relative_residual(op: HessianOperator, x: Tensor, b: Tensor, damping: float) -> float:
    r = op.matvec(x) + damping * x - b
    return float((r.norm(dim=1) / b.norm(dim=1).clamp_min(1e-300)).max())


def arnoldi(op: HessianOperator, rank: int, seed: int) -> tuple[Tensor, Tensor]:
    """Top-``rank`` eigenpairs of H from a block Krylov space (block Arnoldi with full orthogonalisation; as H = Hᵀ
    this is block Lanczos).

    Builds an orthonormal basis V of ``min(P, 2·rank)`` vectors spanning [Ω, HΩ, H²Ω, …] for a seeded random block Ω
    of ``ARNOLDI_BLOCK`` vectors — one batched Hessian-vector product per block; if the space becomes invariant, it
    continues from fresh random vectors — forms T = VᵀHV and returns its top Ritz pairs. With ``rank ≥ P`` the basis
    is complete and the decomposition exact.

    Returns:
        ``(eigenvalues (r,), eigenvectors (P, r))``, float64, largest eigenvalue first.
    """
    size = min(op.dim, 2 * rank)
    width = min(ARNOLDI_BLOCK, size)
    gen = torch.Generator().manual_seed(derive_seed(seed, "arnoldi"))
    basis = torch.zeros(size, op.dim, dtype=torch.float64)
    projected = torch.zeros(size, size, dtype=torch.float64)
    block = torch.randn(width, op.dim, generator=gen, dtype=torch.float64)
    dim = 0
    for _ in track(itertools.count(), "Arnoldi", -(-size // width), op.verbose):
        if dim == size:
            break
        start = dim
        for v in block:
            v = _orthonormalise(v, basis[:dim])
            if v is not None and dim < size:
                basis[dim] = v
                dim += 1
        if dim == start:  # invariant subspace: continue from fresh random vectors
            block = torch.randn(width, op.dim, generator=gen, dtype=torch.float64)
            continue
        block = op.matvec(basis[start:dim])
        projected[:dim, start:dim] = basis[:dim] @ block.T
        projected[start:dim, :start] = projected[:start, start:dim].T
    values, vectors = torch.linalg.eigh(projected)
    top = torch.argsort(values, descending=True)[:rank]
    return values[top], basis.T @ vectors[:, top]


def _orthonormalise(v: Tensor, basis: Tensor) -> Tensor | None:
    """``v`` made orthogonal to the rows of ``basis`` (Gram–Schmidt twice) and unit-norm; ``None`` if it vanishes."""
    norm0 = float(v.norm())
    for _ in range(2):
        v = v - basis.T @ (basis @ v)
    norm = float(v.norm())
    return None if norm <= 1e-10 * max(norm0, 1e-300) else v / norm
