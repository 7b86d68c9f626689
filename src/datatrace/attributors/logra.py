"""LoGra (Choe et al., 2024): influence with factorised per-layer gradient projections.

For a layer with inputs a_t and output gradients δ_t, an example's gradient is ``G = Σ_t δ_t a_tᵀ`` (out × in). LoGra
projects it as ``P_outᵀ G P_in = Σ_t (P_outᵀ δ_t)(P_inᵀ a_t)ᵀ`` (r_out × r_in): the two sides are projected
separately and combined as an outer product, i.e. the projection is ``P_out ⊗ P_in``, and the full per-example
gradient (P numbers per example) is never formed — only the layer inputs and output gradients of a batch, which a
backward pass computes anyway. The projected gradients are stored, and

    score[q, i] = (1/n) · g̃_qᵀ (H̃ + λI)⁻¹ g̃_i      (precondition="ekfac")
    score[q, i] = (1/n) · g̃_qᵀ g̃_i                 (precondition="identity")

with g̃ the projected gradients (of the query's measurement, and of training example i's loss) and H̃ the EK-FAC
Gauss–Newton Hessian of the mean training loss fitted in the projected space. Same sign and normalisation as
:class:`~datatrace.attributors.influence.InfluenceFunction`: ≈ the change of the query's measurement when example i is
removed; positive = proponent.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._utils import derive_seed
from ..data import as_data
from ..errors import InputError, check_choice
from ..grads import _check_finite, select_parameters
from ..scores import Factor, Scores
from .base import Attributor, Batch
from .influence import check_damping, check_hessian_samples, hessian_sample
from .kfac import KroneckerLayer, fit_factors, kronecker_layers, loss_gradients

PRECONDITIONERS = ("ekfac", "identity")
#: Default rank per side (r_in = r_out = 64: at most 4,096 numbers per layer) and relative EK-FAC damping, from
#: benchmarks/influence_lds.py (LDS grows with the rank up to full rank: 0.63 / 0.76 / 0.86 at ranks 16 / 32 / 64 on
#: digits-logreg).
DEFAULT_RANK, DEFAULT_DAMPING = 64, 0.1


class FactorisedProjection:
    """Seeded per-layer projections ``P_in (in × r_in)``, ``P_out (out × r_out)``, r = min(rank, dimension).

    Each has orthonormal columns scaled by √(d/r), so that E‖Pᵀx‖² = ‖x‖² and, at full rank, P is orthogonal and
    every inner product — plain or preconditioned by EK-FAC fitted in the projected space — equals the unprojected one.
    """

    def __init__(self, layers: list[KroneckerLayer], rank: int, seed: int):
        self.p_in = {la.name: _orthonormal(la.in_dim, min(rank, la.in_dim), seed, la.name, "in") for la in layers}
        self.p_out = {la.name: _orthonormal(la.out_dim, min(rank, la.out_dim), seed, la.name, "out") for la in layers}
        self.layer_names = [la.name for la in layers]
        self.out_dim = sum(self.p_in[n].shape[1] * self.p_out[n].shape[1] for n in self.layer_names)

    def dims(self, layer: KroneckerLayer) -> tuple[int, int]:
        return self.p_in[layer.name].shape[1], self.p_out[layer.name].shape[1]

    def __call__(self, layer: KroneckerLayer, a: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """Project a layer's inputs ``(B, T, in)`` and output gradients ``(B, ..., T, out)``."""
        return a @ self.p_in[layer.name].to(a), d @ self.p_out[layer.name].to(d)

    def features(self, layers: list[KroneckerLayer], stats: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        """``(B, out_dim)`` projected per-example gradients ``Σ_t (P_outᵀδ_t)(P_inᵀa_t)ᵀ``, layer after layer."""
        parts = []
        for layer in layers:
            a, d = self(layer, *stats[layer.name])
            parts.append(torch.einsum("bto,bti->boi", d, a).reshape(len(a), -1))
        return torch.cat(parts, dim=1)

    def blocks(self, features: Tensor) -> dict[str, Tensor]:
        """Split ``(m, out_dim)`` features into ``(m, r_out, r_in)`` layer blocks."""
        out, col = {}, 0
        for n in self.layer_names:
            r_in, r_out = self.p_in[n].shape[1], self.p_out[n].shape[1]
            out[n] = features[:, col : col + r_in * r_out].reshape(len(features), r_out, r_in)
            col += r_in * r_out
        return out


def _orthonormal(dim: int, rank: int, seed: int, *label: str) -> Tensor:
    gen = torch.Generator().manual_seed(derive_seed(seed, "logra", *label))
    q, _ = torch.linalg.qr(torch.randn(dim, rank, generator=gen, dtype=torch.float64))
    return (q * math.sqrt(dim / rank)).float()


class LoGra(Attributor):
    """LoGra: influence on factorised low-rank projections of per-layer gradients (``nn.Linear``, ``nn.Conv2d``).

    Args:
        model: a trained model in ``eval()`` mode, or a list of them (scores are averaged).
        task: the task.
        rank: projection rank per side of each layer (r_in = min(rank, in), r_out = min(rank, out)); a layer
            contributes r_in·r_out features. ``rank`` at least every layer dimension is exact (no projection).
        precondition: ``"ekfac"`` (EK-FAC Gauss–Newton Hessian in the projected space, damped) or ``"identity"``.
        damping: relative damping, λ = damping · trace(H̃)/dim (EK-FAC only); the absolute value is in
            ``damping_abs_`` and the scores' metadata.
        hessian_samples: fit EK-FAC on this many training examples (seeded sample) instead of all.
        **kwargs: shared arguments of :class:`~datatrace.attributors.base.Attributor` (``params`` selects the
            layers; ``seed`` the projections). ``proj_dim`` does not apply: LoGra's projection is ``rank``.

    Scores: ``(1/n)·g̃_qᵀ(H̃ + λI)⁻¹g̃_i`` (see the module docstring) — the projected influence function.
    """

    method = "logra"
    score_only_params = ("precondition", "damping", "hessian_samples")

    def __init__(
        self,
        model,
        task,
        *,
        rank: int = DEFAULT_RANK,
        precondition: str = "ekfac",
        damping: float = DEFAULT_DAMPING,
        hessian_samples: int | None = None,
        **kwargs,
    ):
        if kwargs.get("proj_dim") is not None:
            raise InputError("LoGra projects each layer with rank=...; proj_dim does not apply (leave it None).")
        super().__init__(model, task, **kwargs)
        if not (isinstance(rank, int) and rank >= 1):
            raise InputError(f"rank must be a positive int, got {rank!r}.")
        check_damping(damping, None)
        check_hessian_samples(hessian_samples)
        self.rank = rank
        self.precondition = check_choice("precondition", precondition, PRECONDITIONERS)
        self.damping = float(damping)
        self.hessian_samples = hessian_samples

    def fit(self, train) -> LoGra:
        """Store the projected training gradients and fit EK-FAC in the projected space; returns ``self``."""
        data = as_data(train, "train")
        self.check_supported()
        self.hessian_data_ = hessian_sample(data, self.hessian_samples, self.seed)
        return super().fit(data)

    def check_supported(self) -> None:
        """Refuse, before any work, selected parameters outside ``nn.Linear``/``nn.Conv2d`` layers (``fit`` calls it).

        Raises:
            InputError: naming the unsupported modules and the fallback.
        """
        for model in self.models:
            kronecker_layers(model, select_parameters(model, self.params), "LoGra")

    # -- Attributor hooks -----------------------------------------------------------------------------------------
    def _make_projector(self, n_params: int) -> FactorisedProjection:
        return FactorisedProjection(self._layers(self.models[0]), self.rank, self.seed)

    def _layers(self, model: nn.Module) -> list[KroneckerLayer]:
        return kronecker_layers(model, self.param_names_, "LoGra")

    def _projected_gradients(self, model: nn.Module, fn, batch: Batch, offset: int) -> Tensor:
        layers = self._layers(model)
        stats, values = loss_gradients(model, fn, batch, layers)
        features = self.projector_.features(layers, stats)
        _check_finite(features, values, offset)
        return features

    def _train_arrays(self):
        return {"grad": ((self.feature_dim_,), "float32")}

    def _train_batch(self, model: nn.Module, batch: Batch, offset: int) -> dict[str, Tensor]:
        return {"grad": self._projected_gradients(model, self.task.loss, batch, offset)}

    def _query_batch(self, model: nn.Module, batch: Batch, offset: int, fn) -> Tensor:
        return self._projected_gradients(model, fn, batch, offset)

    def _finalize(self) -> None:
        self.factors_, self.damping_abs_ = [], []
        if self.precondition == "identity":
            return
        for i, model in enumerate(self.models):
            cache = None if self.cache_dir is None else f"{self.cache_dir}/{self.method}-ekfac-member{i}"
            factors = fit_factors(
                model, self.task, self.hessian_data_, self._layers(model), "ekfac", self.batch_size,
                transform=self.projector_, cache_dir=cache, meta={"rank": self.rank, "seed": self.seed},
                verbose=self.verbose,
            )  # fmt: skip
            self.factors_.append(factors)
            self.damping_abs_.append(self.damping * factors.trace / factors.dim)

    def _scores(self, query_features: list[Tensor], train) -> Scores:
        weight = 1.0 / (self.n_train_ * len(self.models))
        factors = []
        for i, (g, t) in enumerate(zip(query_features, train)):
            if self.precondition == "ekfac":
                solved = self.factors_[i].precondition(self.projector_.blocks(g), self.damping_abs_[i])
                g = torch.cat([solved[n].reshape(len(g), -1) for n in self.projector_.layer_names], dim=1).float()
            factors.append(Factor(g, t["grad"], weight))
        meta = self._metadata(
            damping_abs=self.damping_abs_,
            normalisation="(1/n)·g̃_qᵀ(H̃+λI)⁻¹g̃_i on projected gradients (H̃ = I for precondition='identity'): "
            "≈ change of the query measurement when example i is removed; mean over models",
        )
        return Scores.from_factors(factors, metadata=meta)
