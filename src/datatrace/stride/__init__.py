"""STRIDE: training-data attribution by sparse recovery from learned steering operators.

``dt.STRIDE`` is the attributor; ``design`` (the subset membership), ``recover`` (sparse recovery) and
``backproject`` are usable on their own.
"""

from .attributor import STRIDE
from .design import Design, auto_size, design
from .recovery import RecoveryInfo, backproject, recover

__all__ = ["STRIDE", "Design", "RecoveryInfo", "auto_size", "backproject", "design", "recover"]
