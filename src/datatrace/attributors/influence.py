"""Influence functions (Koh & Liang, 2017) with six ways to apply the inverse Hessian.

Training on the mean loss R(θ) = (1/n) Σ_j L_j(θ), up-weighting example i by ε moves the optimum by
dθ/dε = −H⁻¹∇L_i (H = ∇²R), so the query measurement m changes by −∇m(q)ᵀ H⁻¹ ∇L_i · ε. Removing i is ε = −1/n:

    score[q, i] = (1/n) · ∇m(q)ᵀ (H + λI)⁻¹ ∇L(i)  ≈  m(q; θ₋ᵢ) − m(q; θ)

— the first-order change of the query's measurement when example i is left out of training. Positive = proponent
(removing it would raise the query's loss). H is always the Hessian of the *mean* training loss over the whole
training set (or over ``hessian_samples`` examples of it), computed once in ``fit``; ``n`` is the number of
training examples. The damping λ regularises H where the loss is flat or non-convex.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._utils import derive_seed
from ..data import Data, as_data
from ..errors import InputError, check_choice
from ..grads import num_parameters, per_example_gradients, select_parameters
from ..scores import Factor, Scores
from .base import Attributor, Batch
from .hessian import (
    HessianOperator,
    SolveInfo,
    arnoldi,
    conjugate_gradient,
    estimate_trace,
    hessian_matrix,
    lissa,
    top_eigenvalue,
)
from .kfac import KroneckerFactors, fit_factors, kronecker_layers

SOLVERS = ("explicit", "cg", "lissa", "arnoldi", "kfac", "ekfac")
KRONECKER = ("kfac", "ekfac")
HESSIANS = ("gn", "exact")
#: Default relative damping per solver, λ = damping · trace(H)/P (chosen by benchmarks/influence_lds.py: within
#: 0.05 LDS of the best swept value on digits-logreg and digits-mlp for every solver).
DEFAULT_DAMPING = {"explicit": 0.5, "cg": 0.5, "lissa": 0.5, "arnoldi": 0.5, "kfac": 0.1, "ekfac": 0.1}
#: The explicit solver refuses Hessians larger than this (float64, P × P).
MAX_EXPLICIT_BYTES = 4 * 2**30
#: LiSSA's automatic scale: this factor times the largest eigenvalue of H + λI. Above 1 it keeps minibatch Hessians
#: (whose top eigenvalue exceeds H's) stable and damps the minibatch noise, at the price of slower convergence: on
#: the digits benchmarks 3 gave 2–5x smaller errors than 1.5 in the same 5,000 steps.
LISSA_SCALE_SAFETY = 3.0


class InfluenceFunction(Attributor):
    """Influence functions: ``score[q, i] = (1/n) ∇m(q)ᵀ (H + λI)⁻¹ ∇L(i)`` ≈ the change of the query's measurement
    when example i is removed from training (positive = proponent). See the module docstring for the derivation.

    Args:
        model: a trained model in ``eval()`` mode, or a list of them (each gets its own Hessian; scores are averaged).
        task: the task (training loss and measurement).
        solver: how ``(H + λI)⁻¹`` is applied to the query gradients:

            - ``"explicit"``: builds H (P × P, float64) and factors it by Cholesky; up to ~20k parameters (the size
              is checked before anything is computed);
            - ``"cg"``: conjugate gradient on Hessian-vector products, all queries at once, each stopping when
              its relative residual ≤ ``tol`` (at most ``max_iter`` iterations; a warning reports the residual);
            - ``"lissa"``: LiSSA's stochastic Neumann series (``lissa_depth`` steps, ``lissa_repeats`` averaged runs,
              scale ``lissa_scale``, minibatches of ``lissa_batch_size``), stopping when the relative residual
              ≤ ``tol``; its minibatch noise usually keeps the residual above ``tol`` (a warning says so);
            - ``"arnoldi"``: the top-``rank`` eigenpairs of H (Arnoldi/Lanczos iteration in ``fit``); exact when
              ``rank ≥ P``;
            - ``"kfac"`` / ``"ekfac"``: Kronecker-factored Gauss–Newton Hessian per ``nn.Linear``/``nn.Conv2d`` layer
              (see :mod:`datatrace.attributors.kfac`).
        hessian: ``"gn"`` (Gauss–Newton: positive semi-definite for losses convex in the model output; default) or
            ``"exact"`` (may be indefinite for non-convex models; refused by the Kronecker solvers).
        damping: λ relative to the mean eigenvalue of H: λ = ``damping`` · trace(H)/P, so the same value suits any
            model and loss scale; ``None`` takes the solver's default from ``DEFAULT_DAMPING`` (0.5 for the HVP
            solvers, 0.1 for the Kronecker ones). trace(H) is a seeded Hutchinson estimate, the same for all HVP
            solvers (so they solve the same system), and exact for ``"kfac"``/``"ekfac"``. The absolute λ used is
            in ``damping_abs_`` and the scores' metadata.
        damping_abs: an absolute λ that overrides ``damping`` (e.g. the L2 coefficient of the training objective,
            which makes H + λI its exact Hessian).
        hessian_samples: estimate H on this many training examples (seeded random sample) instead of all.
        rank: eigenpairs kept by ``"arnoldi"`` (from a Krylov space of 2·``rank`` vectors, held in float64); the
            other eigenvalues of H are taken equal to the smallest kept one (an upper bound, as they are smaller),
            so ``(H + λI)⁻¹`` stays full rank.
        tol: relative residual ‖(H + λI)x − b‖/‖b‖ at which ``"cg"`` and ``"lissa"`` stop.
        max_iter: iteration cap of ``"cg"``.
        lissa_depth, lissa_repeats: steps per LiSSA run and runs averaged.
        lissa_batch_size: examples per LiSSA step (its noise: smaller is cheaper per step and noisier).
        lissa_scale: LiSSA's s (must exceed the largest eigenvalue of the minibatch H + λI); ``"auto"`` uses
            ``LISSA_SCALE_SAFETY`` × the largest eigenvalue of H + λI, found by power iteration (the value used is
            in the scores' metadata, ``lissa_scale_used``).
        batch_size: examples per Hessian-vector product over the Hessian data (and per gradient batch); a
            throughput setting, it never changes the scores.
        **kwargs: shared arguments of :class:`~datatrace.attributors.base.Attributor`. ``proj_dim`` compresses the
            *stored training gradients* only (a JL estimate of the same scores); H and the query side stay exact.
    """

    method = "influence"
    score_only_params = (
        "solver",
        "hessian",
        "damping",
        "damping_abs",
        "hessian_samples",
        "rank",
        "tol",
        "max_iter",
        "lissa_depth",
        "lissa_repeats",
        "lissa_scale",
        "lissa_batch_size",
    )

    def __init__(
        self,
        model,
        task,
        *,
        solver: str = "cg",
        hessian: str = "gn",
        damping: float | None = None,
        damping_abs: float | None = None,
        hessian_samples: int | None = None,
        rank: int = 128,
        tol: float = 1e-5,
        max_iter: int = 1000,
        lissa_depth: int = 5000,
        lissa_repeats: int = 1,
        lissa_scale: float | str = "auto",
        lissa_batch_size: int = 64,
        batch_size: int = 512,
        **kwargs,
    ):
        super().__init__(model, task, batch_size=batch_size, **kwargs)
        self.solver = check_choice("solver", solver, SOLVERS)
        self.hessian = check_choice("hessian", hessian, HESSIANS)
        if solver in KRONECKER and hessian != "gn":
            raise InputError(f"solver={solver!r} approximates the Gauss–Newton Hessian; use hessian='gn'.")
        check_damping(damping, damping_abs)
        self.damping = damping
        self.damping_abs = None if damping_abs is None else float(damping_abs)
        positive = {"rank": rank, "max_iter": max_iter, "lissa_depth": lissa_depth, "lissa_repeats": lissa_repeats}
        for name, value in (positive | {"lissa_batch_size": lissa_batch_size}).items():
            if not (isinstance(value, int) and value >= 1):
                raise InputError(f"{name} must be a positive int, got {value!r}.")
        if not tol > 0:
            raise InputError(f"tol must be > 0, got {tol!r}.")
        if not (lissa_scale == "auto" or (isinstance(lissa_scale, (int, float)) and lissa_scale > 0)):
            raise InputError(f"lissa_scale must be 'auto' or > 0, got {lissa_scale!r}.")
        check_hessian_samples(hessian_samples)
        self.hessian_samples = hessian_samples
        self.rank, self.tol, self.max_iter = rank, float(tol), max_iter
        self.lissa_depth, self.lissa_repeats, self.lissa_scale = lissa_depth, lissa_repeats, lissa_scale
        self.lissa_batch_size = lissa_batch_size

    def fit(self, train) -> InfluenceFunction:
        """Store the training gradients and factor / prepare the Hessian of the mean training loss; returns ``self``."""
        data = as_data(train, "train")
        self.check_supported()
        self.hessian_data_ = hessian_sample(data, self.hessian_samples, self.seed)
        return super().fit(data)

    def check_supported(self) -> None:
        """Refuse, before any work, models the solver cannot handle (``fit`` calls it first).

        Raises:
            InputError: for ``"explicit"``, a Hessian over ``MAX_EXPLICIT_BYTES`` (naming the parameters and bytes);
                for ``"kfac"``/``"ekfac"``, selected parameters outside ``nn.Linear``/``nn.Conv2d`` layers (naming the
                modules and the fallback).
        """
        for model in self.models:
            names = select_parameters(model, self.params)
            if self.solver == "explicit":
                check_explicit_size(num_parameters(model, names))
            if self.solver in KRONECKER:
                kronecker_layers(model, names, self.solver)

    # -- Attributor hooks -----------------------------------------------------------------------------------------
    def _train_arrays(self):
        return {"grad": ((self.feature_dim_,), "float32")}

    def _train_batch(self, model, batch: Batch, offset: int) -> dict[str, Tensor]:
        return {"grad": self._gradient_features(model, self.task.loss, batch, offset)[0]}

    def _query_batch(self, model, batch: Batch, offset: int, fn) -> Tensor:
        # Full gradients: H⁻¹ acts in parameter space; the projection (if any) is applied after it.
        return per_example_gradients(model, fn, batch, self.param_names_, offset=offset)[0]

    def _finalize(self) -> None:
        self.inverse_hessians_, self.damping_abs_, self.mean_eigenvalue_ = [], [], []
        for i, model in enumerate(self.models):
            if self.solver in KRONECKER:
                layers = kronecker_layers(model, self.param_names_, self.solver)
                cache = None if self.cache_dir is None else f"{self.cache_dir}/{self.method}-{self.solver}-member{i}"
                factors = fit_factors(
                    model, self.task, self.hessian_data_, layers, self.solver, self.batch_size,
                    cache_dir=cache, verbose=self.verbose,
                )  # fmt: skip
                mean_eigenvalue = factors.trace / factors.dim
                lam = self._absolute_damping(mean_eigenvalue)
                inverse = KroneckerInverse(factors, layers, self.param_names_, model, lam)
            else:
                op = HessianOperator(
                    model, self.task, self.hessian_data_, self.param_names_, self.hessian, self.batch_size, self.verbose
                )
                mean_eigenvalue = estimate_trace(op, self.seed) / op.dim
                lam = self._absolute_damping(mean_eigenvalue)
                inverse = self._hvp_inverse(op, lam)
            self.inverse_hessians_.append(inverse)
            self.damping_abs_.append(lam)
            self.mean_eigenvalue_.append(mean_eigenvalue)

    def _absolute_damping(self, mean_eigenvalue: float) -> float:
        lam = self.damping_abs if self.damping_abs is not None else self.damping_relative * mean_eigenvalue
        if not lam > 0:
            raise InputError(
                f"The Hessian of the mean training loss has mean eigenvalue {mean_eigenvalue:.3g}, so the relative "
                f"damping gives λ = {lam:.3g}; pass damping_abs > 0."
            )
        return lam

    def _hvp_inverse(self, op: HessianOperator, lam: float):
        if self.solver == "explicit":
            return ExplicitInverse(hessian_matrix(op), lam)
        if self.solver == "arnoldi":
            values, vectors = arnoldi(op, self.rank, self.seed)
            return ArnoldiInverse(values, vectors, lam)
        if self.solver == "cg":
            return CGInverse(op, lam, self.tol, self.max_iter)
        scale = self.lissa_scale
        if scale == "auto":
            scale = LISSA_SCALE_SAFETY * (top_eigenvalue(op, self.seed) + lam)
        return LissaInverse(
            op, lam, float(scale), self.lissa_depth, self.lissa_repeats, self.lissa_batch_size, self.tol, self.seed
        )

    @property
    def damping_relative(self) -> float:
        """The relative damping in effect (``damping``, or the solver's default)."""
        return DEFAULT_DAMPING[self.solver] if self.damping is None else float(self.damping)

    def _scores(self, query_features: list[Tensor], train) -> Scores:
        weight = 1.0 / (self.n_train_ * len(self.models))
        factors, solves = [], []
        for g, inverse, t in zip(query_features, self.inverse_hessians_, train):
            x, info = inverse.apply(g)
            x = x.float()
            factors.append(Factor(x if self.projector_ is None else self.projector_(x), t["grad"], weight))
            if info is not None:
                solves.append(info.as_dict())
                if not info.converged:
                    self._warn(
                        f"{self.solver} stopped after {info.iterations} iterations with relative residual "
                        f"{info.relative_residual:.3g} > tol={self.tol:g}; the scores are approximate. Increase the "
                        f"damping (relative {self.damping_relative:g}, λ={inverse.damping:.3g}) or "
                        + ("max_iter." if self.solver == "cg" else "lissa_depth / lissa_repeats, or use solver='cg'.")
                    )
        meta = self._metadata(
            solver=self.solver,
            hessian=self.hessian,
            damping_relative=None if self.damping_abs is not None else self.damping_relative,
            damping_abs=self.damping_abs_,
            mean_eigenvalue=self.mean_eigenvalue_,
            hessian_samples=len(self.hessian_data_),
            solve=solves,
            **({"lissa_scale_used": [inv.scale for inv in self.inverse_hessians_]} if self.solver == "lissa" else {}),
            normalisation="(1/n)·∇m(q)ᵀ(H+λI)⁻¹∇L(i), H of the mean training loss: ≈ change of the query measurement "
            "when example i is removed; mean over models",
        )
        return Scores.from_factors(factors, metadata=meta)


class ExplicitInverse:
    """``(H + λI)⁻¹`` by Cholesky factorisation of the explicit Hessian."""

    def __init__(self, hessian: Tensor, damping: float):
        self.damping = damping
        hessian.diagonal().add_(damping)
        self.cholesky, info = torch.linalg.cholesky_ex(hessian)
        if info != 0:
            lowest = float(torch.linalg.eigvalsh(hessian)[0]) - damping
            raise InputError(
                f"H + λI is not positive definite (lowest eigenvalue of H {lowest:.3g}, λ={damping:.3g}); "
                f"use hessian='gn' or damping_abs > {-lowest:.3g}."
            )

    def apply(self, g: Tensor) -> tuple[Tensor, None]:
        return torch.cholesky_solve(g.double().T, self.cholesky).T, None


class ArnoldiInverse:
    """``(H + λI)⁻¹`` from the top eigenpairs (μ, V): ``V diag(1/(μ + λ)) Vᵀ + (I − VVᵀ)/(μ_r + λ)``.

    The eigenvalues outside the top eigenspace are at most μ_r, the smallest kept; taking them equal to it keeps the
    inverse full rank. (Dropping that complement, as some implementations do, loses the directions of low curvature,
    which carry most of the influence: on digits-logreg with rank 64 the LDS falls from 0.90 to 0.69.)
    """

    def __init__(self, eigenvalues: Tensor, eigenvectors: Tensor, damping: float):
        if (eigenvalues + damping <= 0).any():
            raise InputError(
                f"H has eigenvalue {float(eigenvalues.min()):.3g} ≤ −λ = {-damping:.3g} in its top eigenspace; "
                "use hessian='gn' or a larger damping."
            )
        self.eigenvalues, self.eigenvectors, self.damping = eigenvalues, eigenvectors, damping

    def apply(self, g: Tensor) -> tuple[Tensor, None]:
        g = g.double()
        coords = g @ self.eigenvectors
        top = (coords / (self.eigenvalues + self.damping)) @ self.eigenvectors.T
        rest = (g - coords @ self.eigenvectors.T) / (self.eigenvalues[-1] + self.damping)
        return top + rest, None


class CGInverse:
    """``(H + λI)⁻¹`` by conjugate gradient on Hessian-vector products at scoring time."""

    def __init__(self, op: HessianOperator, damping: float, tol: float, max_iter: int):
        self.op, self.damping, self.tol, self.max_iter = op, damping, tol, max_iter

    def apply(self, g: Tensor) -> tuple[Tensor, SolveInfo]:
        return conjugate_gradient(self.op, g, self.damping, self.tol, self.max_iter)


class LissaInverse:
    """``(H + λI)⁻¹`` by LiSSA at scoring time."""

    def __init__(self, op: HessianOperator, damping: float, scale: float, depth, repeats, batch_size, tol, seed):
        self.op, self.damping, self.scale, self.tol, self.seed = op, damping, scale, tol, seed
        self.depth, self.repeats, self.batch_size = depth, repeats, batch_size

    def apply(self, g: Tensor) -> tuple[Tensor, SolveInfo]:
        return lissa(
            self.op, g, self.damping, self.scale, self.depth, self.repeats, self.batch_size, self.tol, self.seed
        )


class KroneckerInverse:
    """``(H + λI)⁻¹`` with H the KFAC / EK-FAC Gauss–Newton Hessian, applied layer block by layer block."""

    def __init__(self, factors: KroneckerFactors, layers, names, model, damping: float):
        self.factors, self.layers, self.damping = factors, layers, damping
        sizes = dict(model.named_parameters())
        offsets = np.cumsum([0] + [sizes[n].numel() for n in names])
        self.slices = {n: slice(int(lo), int(hi)) for n, lo, hi in zip(names, offsets[:-1], offsets[1:])}

    def apply(self, g: Tensor) -> tuple[Tensor, None]:
        m = len(g)
        blocks = {}
        for layer in self.layers:
            parts = [g[:, self.slices[layer.weight]].reshape(m, layer.out_dim, -1)] if layer.weight else []
            parts += [g[:, self.slices[layer.bias]].reshape(m, layer.out_dim, 1)] if layer.bias else []
            blocks[layer.name] = torch.cat(parts, dim=2)
        solved = self.factors.precondition(blocks, self.damping)
        out = torch.empty(g.shape, dtype=torch.float64)
        for layer in self.layers:
            block = solved[layer.name]
            if layer.weight:
                out[:, self.slices[layer.weight]] = block[:, :, : block.shape[2] - bool(layer.bias)].reshape(m, -1)
            if layer.bias:
                out[:, self.slices[layer.bias]] = block[:, :, -1]
        return out, None


def check_damping(damping: float | None, damping_abs: float | None) -> None:
    """Refuse damping ≤ 0 (relative, or absolute when given)."""
    if damping_abs is not None:
        if not damping_abs > 0:
            raise InputError(f"damping_abs must be > 0, got {damping_abs!r}: H + λI must be positive definite.")
    elif damping is not None and not damping > 0:
        raise InputError(
            f"damping must be > 0, got {damping!r}: λ = damping·trace(H)/P regularises flat and non-convex "
            "directions (default: 0.5 for the HVP solvers, 0.1 for KFAC/EK-FAC)."
        )


def check_explicit_size(n_params: int) -> None:
    """Refuse an explicit Hessian over ``MAX_EXPLICIT_BYTES`` before computing anything."""
    need = 8 * n_params**2
    if need > MAX_EXPLICIT_BYTES:
        raise InputError(
            f"The explicit Hessian of {n_params:,} parameters needs {need / 2**30:.1f} GiB ({n_params:,}² float64 "
            f"entries, {need:,} bytes), over the {MAX_EXPLICIT_BYTES / 2**30:.0f} GiB limit. Use solver='cg' or "
            "'ekfac', or restrict params=..."
        )


def check_hessian_samples(size: int | None) -> None:
    """Refuse a ``hessian_samples`` that is neither ``None`` nor a positive int."""
    if size is not None and not (isinstance(size, int) and size >= 1):
        raise InputError(f"hessian_samples must be a positive int or None, got {size!r}.")


def hessian_sample(data: Data, size: int | None, seed: int) -> Data:
    """The data H is estimated on: all of ``data``, or ``size`` examples drawn without replacement (seeded)."""
    if size is None or size >= len(data):
        return data
    rng = np.random.default_rng(derive_seed(seed, "hessian-sample"))
    return data.subset(np.sort(rng.choice(len(data), size, replace=False)))
