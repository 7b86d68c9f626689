"""Measurement: how every steering operator changes a query's measurement (STRIDE step 3).

For a query x and operator k, y_{x,k} = m_base(x) − m_k(x), with m the task's measurement (loss-like, lower is
better). y_{x,k} > 0 means operator k — standing for "train more on subset k" — lowers the query's loss, so
examples of subset k tend to be proponents. No gradients are taken: per query batch, one base forward pass, then all
K operators in chunks (logit mode: a small product on the stored features; activation mode: the layers above the
tap on the shifted activations, see :meth:`~datatrace.stride.operators.SteeredModel.all_operators`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import model_device, track
from ..data import Data, to_device
from ..errors import NonFiniteError
from .operators import Outputs, PerExampleFn, SteeredModel

#: Bytes of steered outputs/activations materialised per operator chunk when ``operator_chunk`` is not given.
CHUNK_BYTES = 64 * 2**20


def responses(
    steered: SteeredModel,
    fn: PerExampleFn,
    data: Data,
    batch_size: int = 64,
    operator_chunk: int | None = None,
    verbose: bool = True,
) -> Tensor:
    """Responses ``(len(data), K)`` float32: y[x, k] = fn(base)(x) − fn(operator k)(x).

    Args:
        steered: the model with trained operators.
        fn: the per-example function whose change is measured (the task's measurement, or its loss).
        data: the queries.
        batch_size: queries per batch.
        operator_chunk: operators evaluated together; default keeps each chunk's outputs under ``CHUNK_BYTES``.
        verbose: progress bar over query batches.

    Raises:
        NonFiniteError: naming the first query (and operator) whose measurement is NaN or infinite.
    """
    ops = steered.operators
    device = model_device(steered.model)
    all_ops = torch.arange(ops.n_operators, device=device)
    out = torch.empty(len(data), ops.n_operators)
    total = -(-len(data) // batch_size)
    with torch.no_grad():
        for offset, batch in track(data.batches(batch_size), "STRIDE responses", total, verbose):
            batch = to_device(batch, device)
            features, outputs = steered.features(batch[:-1])
            base = fn(Outputs(outputs), batch)
            _check_finite(base, offset, None)
            per_example = max(features[0].numel(), outputs[0].numel())
            chunk = operator_chunk or max(1, CHUNK_BYTES // (4 * per_example * len(base)))
            for lo in range(0, ops.n_operators, chunk):
                values = steered.all_operators(fn, batch, all_ops[lo : lo + chunk], features, outputs)
                _check_finite(values, offset, lo)
                out[offset : offset + len(base), lo : lo + len(values)] = (base[None] - values).T.float().cpu()
    return out


def _check_finite(values: Tensor, offset: int, first_operator: int | None) -> None:
    bad = ~torch.isfinite(values)
    if not bad.any():
        return
    if first_operator is None:
        q = int(bad.nonzero()[0, 0])
        raise NonFiniteError(f"Query {offset + q} has a non-finite measurement under the base model ({values[q]}).")
    k, q = (int(i) for i in bad.nonzero()[0])
    raise NonFiniteError(
        f"Query {offset + q} has a non-finite measurement under steering operator {first_operator + k}; "
        "the operators may have diverged (lower the learning rate)."
    )
