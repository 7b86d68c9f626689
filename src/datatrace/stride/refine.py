"""Newton refinement of the steering matrices in logit mode (the last part of STRIDE's operator training).

In logit mode operator k moves the outputs linearly in its matrix: s = o + φ·a_k with φ = B_ψ(h). With the shared
basis fixed, the training objective of one operator,

    J_k(a) = mean_{j ∈ A_k} loss_j(o_j + φ_j a) + stability · ½ aᵀ G_k a + ½ ρ ‖a‖²,

depends on a_k alone, is convex, and has only P = r·C unknowns. The stability term is the second-order expansion at
a = 0 of the mean divergence over all non-members of subset k: G_k = mean_{i ∉ A_k} φ_iφ_iᵀ ⊗ D_i, with D_i the
Hessian of div(o_i, ·) at o_i (the softmax Fisher for the KL, 2I for the squared difference). The expansion is
exact to third order in the shift, which the stability weight keeps small, and it lets every operator see *all* its
non-members instead of a few sampled ones. The ridge ρ = damping · stability · trace(Ḡ)/P (Ḡ the mean of φφᵀ ⊗ D over
the whole training set) is the damping of an influence function, relative to the mean eigenvalue of the stability
curvature as everywhere in datatrace: it keeps each a_k to the directions the data pins down, where its effect on a
query is close to linear in the membership (what the sparse recovery assumes).

The Adam phase of :func:`~datatrace.stride.training.train_operators` visits each operator a few dozen times with a
handful of members, so it leaves the a_k far from the minimum of J_k; :func:`refine_operators` solves every J_k to
its minimum with damped Newton steps and a backtracking line search, a chunk of subsets at a time. No P × P matrix is
formed per subset: the Newton systems are solved by conjugate gradients preconditioned with one Cholesky factor of
stability·Ḡ + ρI, which differs from each Hessian only by the members' share (a small, low-rank part), so a few
iterations suffice; a Hessian-vector product costs O(|A_k|·P + P²).

The r-dimensional null space of softmax losses (adding the same number to every logit changes nothing) makes Ḡ
singular; a ridge of ``RIDGE`` times its mean diagonal, in every Newton system, keeps the steps out of it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._utils import model_device, track
from ..attributors.hessian import conjugate_gradient_rows
from ..data import Data, to_device
from ..errors import DatatraceWarning
from ..task import Task
from .design import Design
from .operators import Outputs, SteeredModel

#: Largest P = r·C (unknowns per operator) refined by default: the preconditioner is one dense P × P factor.
MAX_UNKNOWNS = 4096
#: Newton steps per chunk of subsets at most, and the stopping rule: half the Newton decrement ≤ TOL·(1 + |J_k|).
MAX_STEPS, TOL = 30, 1e-10
#: Conjugate-gradient iterations per Newton step at most, and their relative residual target.
CG_STEPS, CG_TOL = 200, 1e-8
#: Ridge added to every Newton system, relative to the mean diagonal of Ḡ (see the module docstring).
RIDGE = 1e-6
#: Subsets refined together.
CHUNK = 64

Divergence = Callable[[Tensor, Tensor], Tensor]


@dataclass
class RefineLog:
    """Mean over subsets of J_k before and after refinement, and the most Newton steps any chunk needed."""

    objective_before: float
    objective_after: float
    steps: int


def refine_operators(
    steered: SteeredModel,
    task: Task,
    data: Data,
    design: Design,
    stability: float,
    divergence: Divergence,
    damping: float,
    batch_size: int = 256,
    verbose: bool = True,
) -> RefineLog:
    """Replace every a_k of ``steered.operators`` (logit mode) by the minimiser of J_k; returns the log."""
    ops = steered.operators
    device = model_device(steered.model)
    n = design.n_train
    total = None  # Σ_i φ_iφ_iᵀ ⊗ D_i over the whole training set, (P, P)
    for lo in track(range(0, n, batch_size), "STRIDE stability curvature", verbose=verbose):
        _, phi, out = _features(steered, data, np.arange(lo, min(lo + batch_size, n)), device)
        hess = _output_hessians(lambda s, o=out: divergence(o, s), out)
        part = _curvature(phi, hess)
        total = part if total is None else total + part
    mean_eigenvalue = float(total.diagonal().mean()) / n
    eye = torch.eye(len(total), dtype=total.dtype, device=device)
    ridge = damping * stability * mean_eigenvalue
    shift = RIDGE * mean_eigenvalue
    preconditioner = torch.linalg.cholesky(stability * total / n + (ridge + shift) * eye)
    indptr, members = design.member_lists()
    before, after, steps = [], [], 0
    for lo in track(range(0, design.n_subsets, CHUNK), "STRIDE Newton refinement", verbose=verbose):
        ks = np.arange(lo, min(lo + CHUNK, design.n_subsets))
        sizes = indptr[ks + 1] - indptr[ks]
        width = max(int(sizes.max()), 1)
        slot = np.arange(width)
        idx = members[np.minimum(indptr[ks, None] + slot, indptr[ks + 1, None] - 1).clip(0)].ravel()
        weight = torch.as_tensor(slot < sizes[:, None], dtype=torch.float64, device=device)
        batch, phi, out = _features(steered, data, idx, device)
        own = _output_hessians(lambda s, o=out: divergence(o, s), out) * weight.reshape(-1, 1, 1)
        shape = (len(ks), width)
        problem = _Problem(
            task,
            batch,
            phi.view(*shape, -1),
            out.view(*shape, -1),
            weight,
            total,
            own.view(*shape, *own.shape[1:]),
            torch.as_tensor(stability / np.maximum(n - sizes, 1), dtype=torch.float64, device=device),
            ridge,
        )
        start = ops.matrices(torch.as_tensor(ks, device=device)).detach().double()
        solution, j0, j1, used = _newton(problem, start, preconditioner, shift)
        with torch.no_grad():
            ops.steer.weight[torch.as_tensor(ks, device=device)] = solution.reshape(len(ks), -1).to(ops.steer.weight)
        before.append(j0)
        after.append(j1)
        steps = max(steps, used)
    return RefineLog(float(torch.cat(before).mean()), float(torch.cat(after).mean()), steps)


def _features(steered: SteeredModel, data: Data, idx: np.ndarray, device) -> tuple[tuple, Tensor, Tensor]:
    """``(batch, φ, o)`` of training examples ``idx``: the batch, basis coordinates ``(N, r)`` and outputs
    ``(N, C)`` in float64."""
    batch = to_device(data.batch(idx), device)
    h, o = steered.features(batch[:-1])
    with torch.no_grad():
        phi = h @ steered.operators.basis
    return batch, phi.double(), o.double()


def _output_hessians(fn: Callable[[Tensor], Tensor], s: Tensor) -> Tensor:
    """Hessians ``(N, C, C)`` of the per-example function ``fn`` (``(N, C)`` → ``(N,)``) with respect to each row
    of ``s``: C Hessian-vector products of the summed function, since row i only affects value i."""
    grad_fn = torch.func.grad(lambda x: fn(x).sum())
    _, hvp = torch.func.vjp(grad_fn, s)
    n_out = s.shape[-1]
    tangents = torch.eye(n_out, dtype=s.dtype, device=s.device)[:, None, :].expand(n_out, *s.shape)
    return torch.vmap(hvp)(tangents)[0].permute(1, 0, 2)


def _curvature(phi: Tensor, hess: Tensor) -> Tensor:
    """Σ_e φ_eφ_eᵀ ⊗ H_e as a ``(r·C, r·C)`` matrix (unknowns ordered like a_k: rank-major, then output)."""
    r, n_out = phi.shape[-1], hess.shape[-1]
    return torch.einsum("ea,eb,eij->aibj", phi, phi, hess).reshape(r * n_out, r * n_out)


def _kron_times(phi: Tensor, hess: Tensor, v: Tensor) -> Tensor:
    """Σ_e (φ_eφ_eᵀ ⊗ H_e) v for every subset of a chunk without forming the matrix: ``phi`` ``(c, m, r)``, ``hess``
    ``(c, m, C, C)``, ``v`` ``(c, r, C)``; returns ``(c, r, C)``."""
    moved = torch.einsum("cmr,cro->cmo", phi, v)
    return torch.einsum("cmr,cmo->cro", phi, torch.einsum("cmop,cmp->cmo", hess, moved))


@dataclass
class _Problem:
    """J_k for a chunk of c subsets: members padded to a common width m (weight 0); the stability curvature
    stability·G_k = scale_k·(total − Σ_{members} φφᵀ ⊗ D) is applied, never formed."""

    task: Task
    batch: tuple
    phi: Tensor  # (c, m, r)
    out: Tensor  # (c, m, C)
    weight: Tensor  # (c, m)
    total: Tensor  # (P, P): Σ over the training set of φφᵀ ⊗ D
    own: Tensor  # (c, m, C, C): the members' D (0 for padding)
    scale: Tensor  # (c,): stability / number of non-members
    ridge: float

    def outputs(self, a: Tensor) -> Tensor:
        return self.out + torch.einsum("cmr,cro->cmo", self.phi, a)

    def penalty_times(self, v: Tensor, rows: Tensor | slice = slice(None)) -> Tensor:
        """(stability·G_k + ρI) v for ``v`` ``(len(rows), r, C)``, one v per subset of ``rows`` (default: all)."""
        outside = (v.reshape(len(v), -1) @ self.total).view_as(v) - _kron_times(self.phi[rows], self.own[rows], v)
        return self.scale[rows][:, None, None] * outside + self.ridge * v

    def member_weights(self) -> Tensor:
        return self.weight / self.weight.sum(1, keepdim=True).clamp_min(1.0)

    def objective(self, a: Tensor) -> Tensor:
        """J_k(a_k) for every subset of the chunk, ``a`` is ``(c, r, C)``; returns ``(c,)``."""
        c, m, n_out = self.out.shape
        losses = self.task.loss(Outputs(self.outputs(a).reshape(c * m, n_out)), self.batch).view(c, m)
        quadratic = 0.5 * (a * self.penalty_times(a)).sum((1, 2))
        return (losses * self.member_weights()).sum(1) + quadratic

    def hessian_times(self, a: Tensor, shift: float) -> Callable[[Tensor, Tensor], Tensor]:
        """``(v, rows)`` ↦ (∇²J_k(a) + shift·I) v for the subsets ``rows``, ``v`` ``(len(rows), r, C)``: the members'
        loss curvature (exact: outputs are linear in a) + the penalty."""
        c, m, n_out = self.out.shape
        steered = self.outputs(a).reshape(c * m, n_out).detach()
        loss_hessians = _output_hessians(lambda s: self.task.loss(Outputs(s), self.batch), steered)
        loss_hessians = loss_hessians.view(c, m, n_out, n_out) * self.member_weights()[:, :, None, None]
        return lambda v, rows: (
            _kron_times(self.phi[rows], loss_hessians[rows], v) + self.penalty_times(v, rows) + shift * v
        )


def _newton(problem: _Problem, a: Tensor, preconditioner: Tensor, shift: float) -> tuple[Tensor, Tensor, Tensor, int]:
    """Damped Newton on every J_k of the chunk from ``a``; returns ``(a*, J(a), J(a*), steps)``."""
    grad_fn = torch.func.grad(lambda x: problem.objective(x).sum())  # J_k independent: each row is its own ∇J_k
    with torch.no_grad():
        value = problem.objective(a)
    first = value.clone()
    converged = torch.zeros(len(a), dtype=torch.bool, device=a.device)
    for step in range(1, MAX_STEPS + 1):
        g = grad_fn(a)
        with torch.no_grad():
            direction = _newton_direction(problem.hessian_times(a, shift), g, preconditioner)
        decrement = (g * direction).sum((1, 2))  # ≥ 0
        converged |= decrement / 2 <= TOL * (1 + value.abs())
        if converged.all():
            return a, first, value, step - 1
        a, value = _line_search(problem, a, value, direction, decrement, ~converged)
    warnings.warn(
        f"STRIDE Newton refinement: {int((~converged).sum())} of {len(a)} operators not converged after "
        f"{MAX_STEPS} steps; they keep their last iterate.",
        DatatraceWarning,
        stacklevel=4,
    )
    return a, first, value, MAX_STEPS


def _newton_direction(hessian_times: Callable[[Tensor, Tensor], Tensor], g: Tensor, factor: Tensor) -> Tensor:
    """(∇²J_k)⁻¹ ∇J_k for every subset (``g`` is ``(c, r, C)``) by conjugate gradients preconditioned with the
    Cholesky ``factor`` of a shared approximation of the Hessians, to relative residual ``CG_TOL``."""
    shape = g.shape[1:]
    direction, _ = conjugate_gradient_rows(
        lambda p, rows: hessian_times(p.view(-1, *shape), rows).flatten(1),
        g.flatten(1),
        CG_TOL,
        CG_STEPS,
        lambda curvature: f"STRIDE Newton refinement: a Hessian has curvature {curvature:.3g}; it must be positive.",
        precondition=lambda r: torch.cholesky_solve(r.T, factor).T,
    )
    return direction.view_as(g)


def _line_search(problem: _Problem, a, value, direction, decrement, active, halvings: int = 30):
    """Backtracking (Armijo, factor ½) along ``−direction`` for the ``active`` subsets; the others stay put."""
    t = torch.where(active, 1.0, 0.0).to(a)
    accepted = ~active
    new_a, new_value = a, value
    with torch.no_grad():
        for _ in range(halvings):
            trial = a - t[:, None, None] * direction
            trial_value = problem.objective(trial)
            ok = ~accepted & (trial_value <= value - 1e-4 * t * decrement)
            new_a = torch.where(ok[:, None, None], trial, new_a)
            new_value = torch.where(ok, trial_value, new_value)
            accepted |= ok
            if accepted.all():
                break
            t = torch.where(accepted, t, t / 2)
    return new_a, new_value
