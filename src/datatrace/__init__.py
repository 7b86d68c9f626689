"""datatrace: training-data attribution for PyTorch models.

Sign convention everywhere: a positive score means the training example is a proponent of the query (training on
it lowers the query's loss-like measurement).
"""

from . import apps, eval, lm
from ._version import __version__
from .attributors import TRAK, Attributor, GradCos, GradDot, InfluenceFunction, LoGra, TracIn
from .data import Data
from .ensemble import Ensemble, EnsembleCosts
from .errors import (
    DatatraceError,
    DatatraceWarning,
    InputError,
    ModelModeError,
    NonFiniteError,
    NotFittedError,
    StoreMismatchError,
    UnknownOptionError,
)
from .scores import Scores
from .stride import STRIDE
from .task import ClassificationTask, RegressionTask, Task

__all__ = [
    "TRAK",
    "Attributor",
    "ClassificationTask",
    "Data",
    "DatatraceError",
    "DatatraceWarning",
    "Ensemble",
    "EnsembleCosts",
    "GradCos",
    "GradDot",
    "InfluenceFunction",
    "LoGra",
    "InputError",
    "ModelModeError",
    "NonFiniteError",
    "NotFittedError",
    "RegressionTask",
    "STRIDE",
    "Scores",
    "StoreMismatchError",
    "Task",
    "TracIn",
    "UnknownOptionError",
    "__version__",
    "apps",
    "eval",
    "lm",
]
