"""Tasks: how to compute the per-example training loss and the measurement being explained.

A batch is a tuple of tensors whose last element is the target, e.g. ``(X, y)``. A :class:`Task` turns a model and a
batch into one value per example. All measurements are *loss-like*: lower is better. This is what lets every
attributor share one sign convention (a positive score means that training on the example lowers the measurement).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import check_choice

Batch = tuple[Tensor, ...]


class Task:
    """How a model is trained and what about it is being explained.

    Subclasses implement :meth:`loss`. :meth:`measurement` defaults to the loss. :meth:`output` and
    :meth:`output_to_loss` describe the loss as a function of a scalar model output (used by TRAK); their defaults
    (output = −loss, weight 1) are exact for any task.
    """

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """Per-example training loss, shape ``(B,)``; the model was trained on the mean of it."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss(model, batch)")

    def measurement(self, model: nn.Module, batch: Batch) -> Tensor:
        """Per-example quantity being explained, shape ``(B,)``, loss-like (lower is better)."""
        return self.loss(model, batch)

    def output(self, model: nn.Module, batch: Batch) -> Tensor:
        """Scalar model output f per example whose increase lowers the loss (TRAK's model output function)."""
        return -self.loss(model, batch)

    def output_to_loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """Q = −∂loss/∂f ≥ 0 per example, so that ∇loss = −Q·∇f (TRAK's out-to-loss term)."""
        return torch.ones(len(batch[0]), device=batch[0].device)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _split(batch: Batch) -> tuple[tuple[Tensor, ...], Tensor]:
    return tuple(batch[:-1]), batch[-1]


class ClassificationTask(Task):
    """Softmax classification trained with per-example cross-entropy.

    Args:
        measurement: ``"loss"`` (cross-entropy of the true label) or ``"margin"``. The margin is
            ``logit_y − logsumexp(other logits)``; it is returned negated so that, like the loss, lower is better.
    """

    def __init__(self, measurement: str = "loss"):
        self.measurement_kind = check_choice("measurement", measurement, ("loss", "margin"))

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        inputs, y = _split(batch)
        return F.cross_entropy(model(*inputs), y, reduction="none")

    def measurement(self, model: nn.Module, batch: Batch) -> Tensor:
        if self.measurement_kind == "loss":
            return self.loss(model, batch)
        return -self.output(model, batch)

    def output(self, model: nn.Module, batch: Batch) -> Tensor:
        inputs, y = _split(batch)
        return margin(model(*inputs), y)

    def output_to_loss(self, model: nn.Module, batch: Batch) -> Tensor:
        inputs, y = _split(batch)
        probs = torch.softmax(model(*inputs), dim=-1)
        return 1.0 - probs.gather(-1, y.unsqueeze(-1)).squeeze(-1)


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """``logit_y − logsumexp(logits without y)`` per row; cross-entropy equals ``softplus(−margin)``."""
    true = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    is_true = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, y.unsqueeze(-1), True)
    others = logits.masked_fill(is_true, float("-inf"))
    return true - torch.logsumexp(others, dim=-1)


class RegressionTask(Task):
    """Regression trained with per-example squared error, summed over output dimensions."""

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        inputs, y = _split(batch)
        pred = model(*inputs)
        err = (pred.reshape(len(y), -1) - y.reshape(len(y), -1)) ** 2
        return err.sum(dim=1)
