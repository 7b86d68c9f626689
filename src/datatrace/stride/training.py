"""Joint training of the steering operators (STRIDE step 2).

All a_k and the shared basis ψ are trained together, the base model frozen. Each step draws ``subsets_per_step``
subsets (cycling through all of them in a seeded random order) and, for each subset k, ``examples_per_subset``
members and as many non-members, so the cost of a step does not depend on K or n. The loss is

    fidelity + stability_weight · stability + linearity_weight · linearity

- fidelity: the task's training loss of subset k's members under operator k (operator k learns to fit A_k, standing
  in for a model trained more on A_k);
- stability: KL(base ‖ steered) of the outputs of non-members under operator k (squared difference for
  regression), so that an operator changes only what its own subset explains, not the model as a whole;
- linearity (off by default): ‖(I − H) y‖² for the responses y ∈ R^K of a few probe examples to all operators,
  H = M̃(M̃ᵀM̃ + γI)⁻¹M̃ᵀ the ridge hat matrix of a JL sketch M̃ = M R (K × q) of the membership matrix.

Optimiser: Adam on ψ and sparse ("lazy") Adam on the a_k, so an operator only moves when its subset is drawn. In
logit mode the a_k are then solved to the minimum of their own objective with the basis fixed
(:mod:`~datatrace.stride.refine`, ``refine="newton"``, the default there).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import derive_seed, model_device, show_progress
from ..data import Data, to_device
from ..errors import InputError, NonFiniteError, check_choice
from ..projection import RandomProjector
from ..store import load_tensors, save_tensors
from ..task import RegressionTask, Task
from .design import Design
from .operators import Outputs, SteeredModel, SteeringOperators
from .refine import MAX_UNKNOWNS, RefineLog, refine_operators

REFINE = ("auto", "newton", "none")


@dataclass(frozen=True)
class TrainingConfig:
    """Operator-training hyperparameters (defaults: stride-spec.md §9, re-checked in benchmarks/stride_lds.py).

    Attributes:
        steps: optimiser steps.
        subsets_per_step: subsets drawn per step.
        examples_per_subset: members (fidelity) and non-members (stability) drawn per subset and step.
        lr: Adam learning rate of the a_k.
        basis_lr: Adam learning rate of the shared basis ψ.
        stability: weight of the stability loss.
        linearity: weight of the linearity loss (0 = off).
        probes: probe examples per step for the linearity loss.
        sketch_dim: q, columns of the JL sketch of M for the linearity loss (default K // 4).
        patience: early stopping (0 = off): one member of every subset (with ≥ 2 members) is held out of the
            fidelity draws; every ``validate_every`` steps the loss (fidelity + stability·KL) of the held-out members
            and of one non-member per subset under their operators is computed, and training stops after
            ``patience`` checks without improvement, restoring the best operators. Uses no query or LDS.
        validate_every: steps between early-stopping checks.
        refine: ``"newton"`` solves each a_k to the minimum of fidelity (all members) + stability (second order,
            all non-members) after the Adam phase, basis fixed (logit mode only; :mod:`~datatrace.stride.refine`);
            ``"none"`` keeps the Adam iterate; ``"auto"`` = newton in logit mode when r·C ≤
            :data:`~datatrace.stride.refine.MAX_UNKNOWNS`, the stability weight is > 0 and the linearity loss (which
            couples the operators) is off.
        damping: ridge ½ρ‖a_k‖² added to each operator's objective in the refinement, ρ = damping · stability ·
            (mean eigenvalue of the stability curvature), the relative damping of an influence function; unused
            without refinement.
    """

    steps: int = 300
    subsets_per_step: int = 64
    examples_per_subset: int = 8
    lr: float = 1e-2
    basis_lr: float = 1e-3
    stability: float = 10.0
    linearity: float = 0.0
    probes: int = 4
    sketch_dim: int | None = None
    patience: int = 0
    validate_every: int = 25
    refine: str = "auto"
    damping: float = 1.0

    def __post_init__(self):
        check_choice("refine", self.refine, REFINE)
        if not self.damping >= 0:
            raise InputError(f"damping must be ≥ 0, got {self.damping}.")
        for name in ("steps", "subsets_per_step", "examples_per_subset", "probes", "validate_every"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be ≥ 1, got {getattr(self, name)}.")
        for name in ("lr", "basis_lr"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}.")
        for name in ("stability", "linearity"):
            if not getattr(self, name) >= 0:
                raise InputError(f"the {name} weight must be ≥ 0, got {getattr(self, name)}.")
        if self.patience < 0:
            raise InputError(f"patience must be ≥ 0 (0 = no early stopping), got {self.patience}.")
        if self.sketch_dim is not None and self.sketch_dim < 1:
            raise InputError(f"sketch_dim must be ≥ 1, got {self.sketch_dim}.")

    def as_dict(self) -> dict:
        return asdict(self)

    def refines(self, steered: SteeredModel) -> bool:
        """Whether the Newton refinement runs for these operators (resolves ``"auto"``; refuses impossible asks)."""
        if self.refine == "none":
            return False
        ops = steered.operators
        if self.refine == "auto":
            small = ops.rank * ops.out_dim <= MAX_UNKNOWNS
            return steered.mode == "logit" and small and self.linearity == 0 and self.stability > 0
        if steered.mode != "logit":
            raise InputError("refine='newton' needs logit mode (in activation mode a_k is not linear in the outputs).")
        if self.stability == 0:
            raise InputError(
                "refine='newton' needs stability > 0: without it (and its damping) nothing bounds an operator that "
                "fits its members, and the minimum it solves for may not exist."
            )
        if self.linearity > 0:
            raise InputError(
                "refine='newton' solves each operator alone and would drop the linearity loss, which "
                "couples them: set linearity=0 or refine='none'."
            )
        return True


@dataclass
class TrainingLog:
    """Loss terms per step (means over the step's batch); with early stopping, the held-out loss per check and the
    step whose operators were kept; with refinement, its log (objective before and after)."""

    fidelity: list[float] = field(default_factory=list)
    stability: list[float] = field(default_factory=list)
    linearity: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    best_step: int | None = None
    refine: RefineLog | None = None


def train_operators(
    steered: SteeredModel,
    task: Task,
    data: Data,
    design: Design,
    config: TrainingConfig,
    seed: int = 0,
    verbose: bool = True,
) -> TrainingLog:
    """Train ``steered.operators`` in place on ``data`` with subsets ``design``; returns the loss log."""
    ops = steered.operators
    device = model_device(steered.model)
    refine = config.refines(steered)  # before the Adam phase: an impossible refine request fails fast
    sampler = SubsetSampler(design, derive_seed(seed, "stride-sampler"))
    optimisers = [
        torch.optim.Adam([ops.basis], lr=config.basis_lr),
        torch.optim.SparseAdam(list(ops.steer.parameters()), lr=config.lr),
    ]
    residual = _linearity_residual(design, config, seed).to(device) if config.linearity > 0 else None
    divergence = _squared_difference if isinstance(task, RegressionTask) else _kl_to_base
    log = TrainingLog()
    held = sampler.hold_out() if config.patience else None
    best, best_state, checks_without_gain = float("inf"), None, 0

    def terms(ks: np.ndarray, members: np.ndarray, others: np.ndarray) -> tuple[Tensor, Tensor]:
        k_each = torch.as_tensor(np.repeat(ks, len(members) // len(ks)), device=device)
        fidelity = steered.per_example(task.loss, to_device(data.batch(members), device), k_each).mean()
        base, moved = steered.outputs(to_device(data.batch(others)[:-1], device), k_each)
        return fidelity, divergence(base, moved).mean()

    with _progress(config.steps, verbose) as advance:
        for step in range(config.steps):
            fidelity, stability = terms(*sampler.draw(config.subsets_per_step, config.examples_per_subset))
            loss = fidelity + config.stability * stability
            linearity = torch.zeros(())
            if residual is not None:
                probe = to_device(data.batch(sampler.probes(config.probes)), device)
                linearity = _linearity_loss(steered, task, probe, residual)
                loss = loss + config.linearity * linearity
            if not torch.isfinite(loss):
                raise NonFiniteError(
                    f"STRIDE operator training diverged at step {step} (fidelity {float(fidelity):.3g}, stability "
                    f"{float(stability):.3g}); lower lr / basis_lr."
                )
            for opt in optimisers:
                opt.zero_grad(set_to_none=True)
            loss.backward(inputs=[ops.basis, ops.steer.weight])
            for opt in optimisers:
                opt.step()
            log.fidelity.append(float(fidelity.detach()))
            log.stability.append(float(stability.detach()))
            log.linearity.append(float(linearity.detach()))
            advance(fidelity=log.fidelity[-1], stability=log.stability[-1], linearity=log.linearity[-1])
            if held is not None and (step + 1) % config.validate_every == 0:
                with torch.no_grad():
                    fid, stab = terms(*held)
                log.validation.append(float(fid + config.stability * stab))
                if log.validation[-1] < best:
                    best, checks_without_gain, log.best_step = log.validation[-1], 0, step + 1
                    best_state = [t.detach().clone() for t in (ops.basis, ops.steer.weight)]
                else:
                    checks_without_gain += 1
                    if checks_without_gain >= config.patience:
                        break
    if best_state is not None:
        with torch.no_grad():
            ops.basis.copy_(best_state[0])
            ops.steer.weight.copy_(best_state[1])
    if refine:
        log.refine = refine_operators(
            steered, task, data, design, config.stability, divergence, config.damping, verbose=verbose
        )
    return log


class SubsetSampler:
    """Seeded draws of subsets (each once per round, in a fresh random order), their members and non-members."""

    def __init__(self, design: Design, seed: int):
        self.design = design
        self.rng = np.random.default_rng(seed)
        self.indptr, self.members = design.member_lists()
        self.sizes = np.diff(self.indptr)
        self.nonempty = np.flatnonzero(self.sizes > 0)
        self.queue = np.empty(0, dtype=np.int64)

    def draw(self, n_subsets: int, per_subset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(subsets, members, non_members)``: member and non-member indices are grouped by subset."""
        while len(self.queue) < n_subsets:
            self.queue = np.concatenate([self.queue, self.rng.permutation(self.nonempty)])
        ks, self.queue = self.queue[:n_subsets], self.queue[n_subsets:]
        k_each = np.repeat(ks, per_subset)
        pick = self.rng.random(len(k_each))
        members = self.members[self.indptr[k_each] + (pick * self.sizes[k_each]).astype(np.int64)]
        return ks, members, self._non_members(k_each)

    def hold_out(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Withhold one member of every subset with ≥ 2 members from later draws; returns ``(subsets, those
        members, one non-member each)`` for validation."""
        ks = np.flatnonzero(self.sizes >= 2)
        pick = self.indptr[ks] + self.rng.integers(0, self.sizes[ks])
        held = self.members[pick]
        keep = np.ones(len(self.members), dtype=bool)
        keep[pick] = False
        self.members = self.members[keep]
        self.sizes = self.sizes.copy()
        self.sizes[ks] -= 1
        self.indptr = np.concatenate([[0], np.cumsum(self.sizes)])
        return ks, held, self._non_members(ks)

    def _non_members(self, k_each: np.ndarray) -> np.ndarray:
        """One random training example outside subset ``k`` for every ``k`` in ``k_each``."""
        others = self.rng.integers(0, self.design.n_train, len(k_each))
        inside = (self.design.subsets[others] == k_each[:, None]).any(axis=1)
        while inside.any():  # resample the (rare) non-members that are members
            others[inside] = self.rng.integers(0, self.design.n_train, int(inside.sum()))
            inside = (self.design.subsets[others] == k_each[:, None]).any(axis=1)
        return others

    def probes(self, n: int) -> np.ndarray:
        return self.rng.integers(0, self.design.n_train, n)


def _kl_to_base(base: Tensor, moved: Tensor) -> Tensor:
    """KL(softmax(base) ‖ softmax(moved)) over the last dimension, averaged over the others, per example."""
    kl = F.kl_div(F.log_softmax(moved, -1), F.log_softmax(base, -1), log_target=True, reduction="none").sum(-1)
    return kl.reshape(len(kl), -1).mean(1)


def _squared_difference(base: Tensor, moved: Tensor) -> Tensor:
    return ((moved - base) ** 2).reshape(len(base), -1).sum(1)


def _linearity_residual(design: Design, config: TrainingConfig, seed: int) -> Tensor:
    """I − H with H = M̃(M̃ᵀM̃ + γI)⁻¹M̃ᵀ, M̃ = M R (R: seeded n × q Gaussian JL matrix), γ = 1e-3·trace(M̃ᵀM̃)/q."""
    K, q = design.n_subsets, config.sketch_dim or max(1, design.n_subsets // 4)
    projector = RandomProjector(design.n_train, q, kind="gaussian", seed=derive_seed(seed, "stride-sketch"))
    sketch = torch.zeros(K, q, dtype=torch.float64)
    subsets = torch.from_numpy(design.subsets.astype(np.int64))
    for b in range(projector.n_blocks):
        rows = slice(b * projector.block_rows, (b + 1) * projector.block_rows)
        block = projector.block(b).double()
        for t in range(design.degree):
            sketch.index_add_(0, subsets[rows, t], block)
    gram = sketch.T @ sketch
    gram.diagonal().add_(1e-3 * float(gram.diagonal().sum()) / q)
    hat = sketch @ torch.linalg.solve(gram, sketch.T)
    return (torch.eye(K, dtype=torch.float64) - hat).float()


def _linearity_loss(steered: SteeredModel, task: Task, probe, residual: Tensor) -> Tensor:
    """Mean over probes of ‖(I − H) y‖², y = the probes' loss decrease under every operator (differentiable)."""
    features, outputs = steered.features(probe[:-1])
    base = task.loss(Outputs(outputs), probe).detach()
    ks = torch.arange(steered.operators.n_operators, device=outputs.device)
    y = base[None] - steered.all_operators(task.loss, probe, ks, features, outputs)  # (K, P)
    return ((residual @ y) ** 2).sum(0).mean()


class _progress:
    """A progress bar whose text shows the latest loss terms (silent when :func:`show_progress` says so)."""

    def __init__(self, total: int, verbose: bool):
        self.total, self.enabled = total, show_progress(verbose)

    def __enter__(self) -> Callable[..., None]:
        if not self.enabled:
            return lambda **losses: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.start()
        task = self.bar.add_task("STRIDE operators", total=self.total)

        def advance(**losses: float) -> None:
            text = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
            self.bar.update(task, advance=1, description=f"STRIDE operators: {text}")

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()


# -- persistence ----------------------------------------------------------------------------------------------------
def save_operators(path: str | os.PathLike, ops: SteeringOperators, design: Design, meta: dict) -> None:
    """Write operators and membership as safetensors with a JSON header (see :func:`datatrace.store.save_tensors`)."""
    tensors = {
        "basis": ops.basis.detach().cpu(),
        "steer": ops.steer.weight.detach().cpu(),
        "subsets": torch.from_numpy(design.subsets),
    }
    save_tensors(Path(path), tensors, meta)


def load_operators(path: str | os.PathLike, ops: SteeringOperators, design: Design, meta: dict) -> bool:
    """Load saved operators into ``ops`` if ``path`` holds a run with exactly this ``meta``; ``False`` if none.

    Raises:
        StoreMismatchError: the directory holds operators of another run (naming every difference).
    """
    tensors = load_tensors(Path(path), meta)
    if tensors is None:
        return False
    if not np.array_equal(tensors["subsets"].numpy(), design.subsets):
        raise InputError(f"The subset design stored at {path} differs from the one drawn with the same seed.")
    with torch.no_grad():
        ops.basis.copy_(tensors["basis"])
        ops.steer.weight.copy_(tensors["steer"])
    return True
