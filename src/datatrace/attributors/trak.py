"""TRAK (Park et al., 2023): projected gradients of the model output, a ridge-regularised kernel, out-to-loss term.

For each model θ_m (independently trained models or checkpoints), with P a seeded JL projection:

- φ_{m,i} = Pᵀ ∇f(z_i; θ_m), the projected gradient of the task's model output f (for classification the margin);
- Q_{m,i} = −∂L_i/∂f_i ≥ 0, the out-to-loss term (1 − p(correct) for classification), so ∇L_i = −Q_{m,i} ∇f_i;
- K_m = Φ_mᵀ Φ_m (a sum over the n training examples), λ_m = ``ridge`` · trace(K_m) / n = ``ridge`` · mean_i ‖φ_{m,i}‖².

``score[q, i] = mean_m[ γ_{m,q}ᵀ (K_m + λ_m I)⁻¹ φ_{m,i} ] · mean_m Q_{m,i}``, with γ_{m,q} = −Pᵀ∇m(q; θ_m) the
projected descent direction of the query measurement. For one model this is the Gauss–Newton influence
∇m(q)ᵀ (ΦᵀΦ + λI)⁻¹ ∇L(i) in the projected space: positive = proponent. Because K is a sum over training
examples (not a mean), scores scale as 1/n.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError, NonFiniteError
from ..scores import Factor, Scores
from .base import Attributor, Batch, stored_chunks

#: Default relative ridge: λ = DEFAULT_RIDGE · trace(ΦᵀΦ) / n (chosen by the sweep in benchmarks/trak_sweep.py).
DEFAULT_RIDGE = 0.5
#: Warn when k ≥ NEAR_SINGULAR · n_train (ΦᵀΦ has rank ≤ n) and the relative ridge is below TINY_RIDGE.
NEAR_SINGULAR, TINY_RIDGE = 0.8, 1e-3


class TRAK(Attributor):
    """TRAK attributor.

    Args:
        model: a trained model, or a list of independently trained models / checkpoints (averaged as in TRAK).
        task: the task; its :meth:`~datatrace.task.Task.output` and :meth:`~datatrace.task.Task.output_to_loss`
            define f and Q.
        proj_dim: projection dimension k; ``"auto"`` (default) projects to 2048 dimensions, and not at all when the
            model has at most 2048 parameters; an int always projects; ``None`` never does.
        ridge: λ relative to the mean squared feature norm, λ = ridge · trace(ΦᵀΦ)/n — like adding ``ridge``
            isotropic pseudo-examples of average norm. Scale-aware: the best value barely moves with k or the model
            (0.3–1 on the digits benchmarks for k from 256 to 4096), and the kernel stays invertible when
            k ≥ n_train, where ΦᵀΦ is singular. The value used per model is in ``ridge_abs_`` and the scores'
            metadata.
        **kwargs: shared arguments of :class:`~datatrace.attributors.base.Attributor`.
    """

    method = "trak"

    def __init__(self, model, task, *, proj_dim="auto", ridge=DEFAULT_RIDGE, **kwargs):
        super().__init__(model, task, proj_dim=proj_dim, **kwargs)
        if not ridge >= 0:
            raise InputError(f"ridge must be ≥ 0, got {ridge!r}.")
        self.ridge = float(ridge)

    def _train_arrays(self):
        return {"phi": ((self.feature_dim_,), "float32"), "q": ((), "float32")}

    def _train_batch(self, model: nn.Module, batch: Batch, offset: int) -> dict[str, Tensor]:
        phi, _ = self._gradient_features(model, self.task.output, batch, offset)
        with torch.no_grad():
            q = self.task.output_to_loss(model, batch)
        if not torch.isfinite(q).all():
            raise NonFiniteError(
                f"Non-finite out-to-loss term for example {offset + int((~torch.isfinite(q)).nonzero()[0, 0])}."
            )
        return {"phi": phi, "q": q}

    def _query_batch(self, model: nn.Module, batch: Batch, offset: int, fn) -> Tensor:
        return -self._gradient_features(model, fn, batch, offset)[0]

    def _finalize(self) -> None:
        k, n = self.feature_dim_, self.n_train_
        if k >= NEAR_SINGULAR * n and self.ridge < TINY_RIDGE:
            self._warn(
                f"TRAK feature dimension k={k} is close to or above n_train={n}, so ΦᵀΦ is (nearly) singular, and the "
                f"relative ridge {self.ridge} barely regularises it: scores will be noisy. Use ridge ≈ {DEFAULT_RIDGE}."
            )
        self.kernel_chol_, self.ridge_abs_ = [], []
        for store in self.stores_:
            kernel = torch.zeros(k, k, dtype=torch.float64)
            for _, chunk in stored_chunks(store["phi"]):
                chunk = chunk.double()
                kernel.addmm_(chunk.T, chunk)
            lam = self.ridge * float(kernel.diagonal().sum()) / n
            kernel.diagonal().add_(lam)
            chol, info = torch.linalg.cholesky_ex(kernel)
            if info != 0:
                raise InputError(
                    f"TRAK kernel ΦᵀΦ + λI is not positive definite (λ={lam:.3g}); use ridge > 0 "
                    f"(current relative ridge {self.ridge})."
                )
            self.kernel_chol_.append(chol)
            self.ridge_abs_.append(lam)

    def _scores(self, query_features: list[Tensor], train) -> Scores:
        weight = 1.0 / len(self.models)
        factors = []
        for gamma, chol, t in zip(query_features, self.kernel_chol_, train):
            a = torch.cholesky_solve(gamma.double().T, chol).T.float()  # γᵀ (K + λI)⁻¹
            factors.append(Factor(a, t["phi"], weight))
        q_mean = np.mean([np.asarray(t["q"]) for t in train], axis=0).astype(np.float32)
        meta = self._metadata(
            ridge_abs=self.ridge_abs_,
            proj_dim_used=self.feature_dim_,
            normalisation="kernel ΦᵀΦ summed over training examples (scores scale as 1/n); mean over models",
        )
        return Scores.from_factors(factors, col_scale=q_mean, metadata=meta)
