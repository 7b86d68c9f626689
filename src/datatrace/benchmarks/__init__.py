"""Built-in benchmarks: named, versioned definitions with data, model recipe, task and ground-truth settings."""

from ..errors import UnknownOptionError
from .base import Benchmark, cache_root
from .digits import DIGITS_LOGREG, DIGITS_MLP
from .methods import METHODS, Method, MethodContext, get_method, method_names, register, register_family
from .mnist import MNIST5K_CNN, MNIST5K_LOGREG, MNIST5K_MLP
from .mnist1d import MNIST1D_MLP
from .tinylm import TINYLM_FORTUNES, TINYLM_MICRO

BENCHMARKS = {
    b.name: b
    for b in (DIGITS_LOGREG, DIGITS_MLP, MNIST5K_LOGREG, MNIST5K_MLP, MNIST1D_MLP, MNIST5K_CNN)
    + (TINYLM_FORTUNES, TINYLM_MICRO)
}


def get(name: str) -> Benchmark:
    """The benchmark called ``name``."""
    if name not in BENCHMARKS:
        raise UnknownOptionError("benchmark", name, BENCHMARKS)
    return BENCHMARKS[name]


__all__ = [
    "BENCHMARKS",
    "METHODS",
    "Benchmark",
    "Method",
    "MethodContext",
    "cache_root",
    "get",
    "get_method",
    "method_names",
    "register",
    "register_family",
]
