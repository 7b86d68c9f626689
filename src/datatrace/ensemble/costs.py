"""What an ensemble costs: training time, serving time, peak memory and storage (weights and features apart)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Cost fields compared by :meth:`EnsembleCosts.ratios`.
RATIO_FIELDS = ("train_s", "serve_s", "storage_bytes", "weight_bytes", "feature_bytes", "peak_mem_bytes")


@dataclass
class EnsembleCosts:
    """Measured costs of one fitted (and scored) ensemble; seconds and bytes.

    Attributes:
        kind: the ensemble kind.
        n_members: number of members whose scores are combined (K·M; for ``q_only`` the K clean models × M masks).
        train_s: wall time spent producing the members inside ``fit``: training the base models (0 when they were
            passed in, see ``models_given``) plus LoRA fine-tuning.
        fit_s: wall time of the attributor's ``fit`` (training features, kernels, Q-only forward passes).
        score_s: wall time of the last ``score`` call (query features; the final matrix product is lazy).
        peak_mem_bytes: peak growth of resident memory during fit and score.
        weight_bytes: bytes to keep the members: base weights once per base model (every checkpoint for
            ``kind="checkpoints"``), plus fixed dropout masks or LoRA adapters per member.
        feature_bytes: bytes of the cached per-example training features (the attributor's stores, Q-only terms).
        models_given: the base models were passed in, so their training time is not included in ``train_s``.
    """

    kind: str
    n_members: int
    train_s: float
    fit_s: float
    score_s: float = 0.0
    peak_mem_bytes: int = 0
    weight_bytes: int = 0
    feature_bytes: int = 0
    models_given: bool = False

    @property
    def serve_s(self) -> float:
        """Serving time: ``fit_s + score_s`` (everything after the members exist)."""
        return self.fit_s + self.score_s

    @property
    def storage_bytes(self) -> int:
        return self.weight_bytes + self.feature_bytes

    def ratios(self, reference: EnsembleCosts) -> dict[str, float | None]:
        """Each cost divided by ``reference``'s (e.g. the independent ensemble with as many members)."""
        out = {}
        for name in RATIO_FIELDS:
            mine, theirs = getattr(self, name), getattr(reference, name)
            out[name] = mine / theirs if theirs else None
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "serve_s": self.serve_s, "storage_bytes": self.storage_bytes}


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
