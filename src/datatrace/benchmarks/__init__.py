"""Built-in benchmarks: named, versioned definitions with data, model recipe, task and ground-truth settings."""

from ..errors import UnknownOptionError
from .base import Benchmark, cache_root
from .digits import DIGITS_LOGREG, DIGITS_MLP
from .tinylm import TINYLM_FORTUNES, TINYLM_MICRO

BENCHMARKS = {b.name: b for b in (DIGITS_LOGREG, DIGITS_MLP, TINYLM_FORTUNES, TINYLM_MICRO)}


def get(name: str) -> Benchmark:
    """The benchmark called ``name``."""
    if name not in BENCHMARKS:
        raise UnknownOptionError("benchmark", name, BENCHMARKS)
    return BENCHMARKS[name]


__all__ = ["BENCHMARKS", "Benchmark", "cache_root", "get"]
