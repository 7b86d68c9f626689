"""Evaluation: ground truth by subset retraining and the metrics computed against it."""

from .metrics import LDSResult, bootstrap_ci, lds, pearson_columns, predicted_outputs, spearman_columns
from .retrain import GroundTruth, measure, subset_masks, subset_retraining

__all__ = [
    "GroundTruth",
    "LDSResult",
    "bootstrap_ci",
    "lds",
    "measure",
    "pearson_columns",
    "predicted_outputs",
    "spearman_columns",
    "subset_masks",
    "subset_retraining",
]
