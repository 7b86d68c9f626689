"""Attributors: one class per method, all sharing the fit/score path of :class:`Attributor`."""

from .base import Attributor
from .gradient import GradCos, GradDot, TracIn
from .influence import InfluenceFunction
from .logra import LoGra
from .trak import TRAK

__all__ = ["Attributor", "GradCos", "GradDot", "InfluenceFunction", "LoGra", "TRAK", "TracIn"]
