"""Gradient-similarity attributors: Grad-Dot, Grad-Cos and TracIn.

With g_q = ∇m(q) the gradient of the query's measurement and g_i = ∇L(i) the gradient of training example i's loss
(both optionally projected to ``proj_dim`` dimensions), one gradient step on example i with learning rate η changes
the query measurement by about −η·g_q·g_i. A positive dot product therefore marks a proponent.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError
from ..scores import Factor, Scores
from .base import Attributor, Batch, stored_chunks


class GradDot(Attributor):
    """Grad-Dot: ``score[q, i] = ∇m(q) · ∇L(i)`` at the given model.

    Unnormalised (units of measurement × loss per squared parameter); not divided by n. Given several models, the
    scores of each are averaged. See :class:`~datatrace.attributors.base.Attributor` for the shared arguments.
    """

    method = "graddot"

    def _model_weights(self) -> list[float]:
        return [1.0 / len(self.models)] * len(self.models)

    def _train_arrays(self):
        return {"grad": ((self.feature_dim_,), "float32")}

    def _train_batch(self, model: nn.Module, batch: Batch, offset: int) -> dict[str, Tensor]:
        return {"grad": self._gradient_features(model, self.task.loss, batch, offset)[0]}

    def _query_batch(self, model: nn.Module, batch: Batch, offset: int, fn) -> Tensor:
        return self._gradient_features(model, fn, batch, offset)[0]

    def _scores(self, query_features: list[Tensor], train) -> Scores:
        factors = [Factor(q, t["grad"], w) for q, t, w in zip(query_features, train, self._model_weights())]
        return Scores.from_factors(factors, metadata=self._metadata(normalisation="none (raw dot product)"))


class GradCos(GradDot):
    """Grad-Cos: ``score[q, i] = cos(∇m(q), ∇L(i))`` ∈ [−1, 1] at the given model.

    Given several models, the cosines of each are averaged. Zero gradients get a cosine of 0.
    """

    method = "gradcos"

    def _finalize(self) -> None:
        self.train_norms_ = [_row_norms(store["grad"]) for store in self.stores_]

    def _scores(self, query_features: list[Tensor], train) -> Scores:
        norms = self.train_norms_ if train is self.stores_ else [_row_norms(t["grad"]) for t in train]
        factors = []
        for q, t, norm, w in zip(query_features, train, norms, self._model_weights()):
            q_unit = q / q.norm(dim=1, keepdim=True).clamp_min(1e-30)
            factors.append(Factor(q_unit, t["grad"], w, col_scale=_safe_inverse(norm)))
        return Scores.from_factors(factors, metadata=self._metadata(normalisation="cosine (unit-norm gradients)"))


class TracIn(GradDot):
    """TracIn-CP: ``score[q, i] = Σ_c η_c · ∇m(q; θ_c) · ∇L(i; θ_c)`` over checkpoints θ_c.

    Args:
        model: the list of checkpoints (``nn.Module`` each, in ``eval()`` mode).
        task: the task.
        lrs: learning rate η_c in effect after each checkpoint (one per checkpoint; default 1 for all).
        **kwargs: shared arguments of :class:`~datatrace.attributors.base.Attributor`.

    Not divided by n or by the number of checkpoints (TracIn's own normalisation).
    """

    method = "tracin"

    def __init__(self, model, task, *, lrs=None, **kwargs):
        super().__init__(model, task, **kwargs)
        self.lrs = None if lrs is None else [float(x) for x in lrs]
        if self.lrs is not None and len(self.lrs) != len(self.models):
            raise InputError(f"TracIn got {len(self.models)} checkpoints but {len(self.lrs)} learning rates.")

    def _model_weights(self) -> list[float]:
        return self.lrs if self.lrs is not None else [1.0] * len(self.models)


def _row_norms(array: np.ndarray) -> np.ndarray:
    return np.concatenate([torch.linalg.vector_norm(c, dim=1).numpy() for _, c in stored_chunks(array)])


def _safe_inverse(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, 1.0 / np.maximum(x, 1e-30), 0.0).astype(np.float32)
