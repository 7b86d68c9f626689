"""Newton refinement of the steering matrices in logit mode (the last part of STRIDE's operator training).

In logit mode operator k moves the outputs linearly in its matrix: s = o + φ·a_k with φ = B_ψ(h). With the shared
basis fixed, the training objective of one operator,

    J_k(a) = mean_{j ∈ A_k} loss_j(o_j + φ_j a) + stability · ½ aᵀ G_k a,

depends on a_k alone, is convex, and has only r·C unknowns. The stability term is the second-order expansion at
a = 0 of the mean divergence over all non-members of subset k: G_k = mean_{i ∉ A_k} φ_iφ_iᵀ ⊗ D_i, with D_i the
Hessian of div(o_i, ·) at o_i (the softmax Fisher for the KL, 2I for the squared difference). The expansion is
exact to third order in the shift, which the stability weight keeps small, and it lets every operator see *all* its
non-members instead of a few sampled ones. The Adam phase of :func:`~datatrace.stride.training.train_operators`
visits each operator a few dozen times with a handful of members, so it leaves the a_k far from the minimum of this
objective; :func:`refine_operators` solves every J_k to its minimum (fidelity on all members) with damped Newton
steps and a backtracking line search, a chunk of subsets at a time.

The r-dimensional null space of softmax losses (adding the same number to every logit changes nothing) makes each
Hessian singular; a ridge of ``RIDGE`` times its mean diagonal keeps the steps out of it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._utils import model_device, track
from ..data import Data, to_device
from ..errors import DatatraceWarning
from ..task import Task
from .design import Design
from .operators import Outputs, SteeredModel

#: Largest r·C (unknowns per operator) refined by default: each subset's Hessian is (r·C)², solved densely.
MAX_UNKNOWNS = 1024
#: Newton steps per chunk of subsets at most, and the stopping rule: half the Newton decrement ≤ TOL·(1 + |J_k|).
MAX_STEPS, TOL = 30, 1e-10
#: Ridge added to every Hessian, relative to its mean diagonal (see the module docstring).
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
    batch_size: int = 256,
    verbose: bool = True,
) -> RefineLog:
    """Replace every a_k of ``steered.operators`` (logit mode) by the minimiser of J_k; returns the log."""
    ops = steered.operators
    device = model_device(steered.model)
    n = design.n_train
    total = None  # Σ_i φ_iφ_iᵀ ⊗ D_i over the whole training set
    for lo in track(range(0, n, batch_size), "STRIDE stability curvature", verbose=verbose):
        _, phi, out = _features(steered, data, np.arange(lo, min(lo + batch_size, n)), device)
        part = _curvature(phi, _output_hessians(lambda s, o=out: divergence(o, s), out))
        total = part if total is None else total + part
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
        inside = _curvature(phi.view(len(ks), width, -1), own.view(len(ks), width, *own.shape[1:]))
        outside = (total - inside) / torch.as_tensor(n - sizes, dtype=torch.float64, device=device).clamp_min(1)[
            :, None, None
        ]
        problem = _Problem(
            task, batch, phi.view(len(ks), width, -1), out.view(len(ks), width, -1), weight, stability * outside
        )
        start = ops.matrices(torch.as_tensor(ks, device=device)).detach().double()
        solution, j0, j1, used = _newton(problem, start)
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
    """Σ_e φ_eφ_eᵀ ⊗ H_e as ``(..., r·C, r·C)`` (unknowns ordered like a_k: rank-major, then output)."""
    r, n_out = phi.shape[-1], hess.shape[-1]
    out = torch.einsum("...ea,...eb,...eij->...aibj", phi, phi, hess)
    return out.reshape(*out.shape[:-4], r * n_out, r * n_out)


@dataclass
class _Problem:
    """J_k for a chunk of c subsets: members padded to a common width m (weight 0), stability curvature per subset."""

    task: Task
    batch: tuple
    phi: Tensor  # (c, m, r)
    out: Tensor  # (c, m, C)
    weight: Tensor  # (c, m)
    curvature: Tensor  # (c, r·C, r·C): stability · G_k

    def outputs(self, a: Tensor) -> Tensor:
        return self.out + torch.einsum("cmr,cro->cmo", self.phi, a)

    def fidelity(self, steered: Tensor) -> Tensor:
        c, m, n_out = steered.shape
        losses = self.task.loss(Outputs(steered.reshape(c * m, n_out)), self.batch).view(c, m)
        return (losses * self.weight).sum(1) / self.weight.sum(1).clamp_min(1.0)

    def objective(self, a: Tensor) -> Tensor:
        """J_k(a_k) for every subset of the chunk, ``a`` is ``(c, r, C)``; returns ``(c,)``."""
        flat = a.reshape(len(a), -1)
        return self.fidelity(self.outputs(a)) + 0.5 * torch.einsum("cp,cpq,cq->c", flat, self.curvature, flat)

    def hessian(self, a: Tensor) -> Tensor:
        """∇²J_k ``(c, r·C, r·C)``: the members' loss curvature (exact: outputs are linear in a) + stability."""
        steered = self.outputs(a)
        c, m, n_out = steered.shape
        per_example = _output_hessians(
            lambda s: self.task.loss(Outputs(s), self.batch), steered.reshape(c * m, n_out).detach()
        )
        scale = (self.weight / self.weight.sum(1, keepdim=True).clamp_min(1.0)).reshape(-1, 1, 1)
        return _curvature(self.phi, (per_example * scale).view(c, m, n_out, n_out)) + self.curvature


def _newton(problem: _Problem, a: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """Damped Newton on every J_k of the chunk from ``a``; returns ``(a*, J(a), J(a*), steps)``."""
    c, r, n_out = a.shape
    unknowns = r * n_out
    eye = torch.eye(unknowns, dtype=a.dtype, device=a.device)
    grad_fn = torch.func.grad(lambda x: problem.objective(x).sum())  # J_k independent: each row is its own ∇J_k
    with torch.no_grad():
        value = problem.objective(a)
    first = value.clone()
    converged = torch.zeros(c, dtype=torch.bool, device=a.device)
    for step in range(1, MAX_STEPS + 1):
        g = grad_fn(a).reshape(c, unknowns)
        hessian = problem.hessian(a)
        hessian = hessian + RIDGE * hessian.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)[:, None, None] * eye
        direction = torch.cholesky_solve(g.unsqueeze(-1), torch.linalg.cholesky(hessian)).squeeze(-1)
        decrement = (g * direction).sum(1)  # ≥ 0
        converged |= decrement / 2 <= TOL * (1 + value.abs())
        if converged.all():
            return a, first, value, step - 1
        a, value = _line_search(problem, a, value, direction.view(c, r, n_out), decrement, ~converged)
    warnings.warn(
        f"STRIDE Newton refinement: {int((~converged).sum())} of {c} operators not converged after {MAX_STEPS} "
        "steps; they keep their last iterate.",
        DatatraceWarning,
        stacklevel=4,
    )
    return a, first, value, MAX_STEPS


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
