"""Efficient ensembles of gradient attributors: independent, checkpoint, dropout and LoRA members, with costs."""

from .core import KINDS, Ensemble
from .costs import EnsembleCosts
from .dropout import MaskedModel

__all__ = ["KINDS", "Ensemble", "EnsembleCosts", "MaskedModel"]
