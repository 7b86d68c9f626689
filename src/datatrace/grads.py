"""Per-example gradients with ``torch.func`` (functional_call + vmap + grad), chunked over the batch.

The gradient of a per-example function ``fn(model, batch) -> (B,)`` (a task's loss, measurement or output) is
computed for every example of a batch with respect to a chosen set of parameters and returned flattened as a
``(B, P)`` matrix whose columns follow :func:`select_parameters`' order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .errors import InputError, NonFiniteError

Batch = tuple[Tensor, ...]
PerExampleFn = Callable[[nn.Module, Batch], Tensor]

#: Bytes of per-example gradients materialised per vmap chunk when ``chunk_size`` is not given.
CHUNK_BYTES = 256 * 2**20


def select_parameters(model: nn.Module, params: str | Sequence[str] = "all") -> list[str]:
    """Names of the trainable parameters to differentiate, in ``model.named_parameters()`` order.

    Args:
        model: the model.
        params: ``"all"``; ``"last"`` (the parameters of the last module that owns any); or a list of module or
            parameter names (a module name selects all parameters under it, e.g. ``["fc2"]``).
    """
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise InputError("The model has no trainable parameters (requires_grad=True).")
    if params == "all":
        return named
    if params == "last":
        owners = [m for m, mod in model.named_modules() if any(True for _ in mod.parameters(recurse=False))]
        last = owners[-1]
        return [n for n in named if n.rpartition(".")[0] == last]
    if isinstance(params, str):
        params = [params]
    chosen = [n for n in named if any(n == p or n.startswith(p + ".") for p in params)]
    missing = [p for p in params if not any(n == p or n.startswith(p + ".") for n in named)]
    if missing:
        modules = sorted({n.rpartition(".")[0] for n in named})
        raise InputError(f"Parameters {missing} match nothing in the model; modules with parameters: {modules}.")
    return chosen


def num_parameters(model: nn.Module, names: Sequence[str]) -> int:
    shapes = dict(model.named_parameters())
    return sum(shapes[n].numel() for n in names)


class _Bound(nn.Module):
    """``fn`` bound to ``model`` as a module, so ``functional_call`` can swap the model's parameters."""

    def __init__(self, model: nn.Module, fn: PerExampleFn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, batch: Batch) -> Tensor:
        return self.fn(self.model, batch)


def per_example_gradients(
    model: nn.Module,
    fn: PerExampleFn,
    batch: Batch,
    names: Sequence[str],
    chunk_size: int | None = None,
    offset: int = 0,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Gradients of ``fn`` for every example of ``batch``.

    Args:
        model: the model (its own parameters are not modified and receive no ``.grad``).
        fn: per-example function ``fn(model, batch) -> (B,)``.
        batch: tuple of tensors with the examples along dimension 0.
        names: parameter names from :func:`select_parameters`.
        chunk_size: examples per vmap call; default keeps each chunk's gradients under ``CHUNK_BYTES``.
        offset: index of the batch's first example in its dataset, used in error messages.
        transform: applied to each chunk's ``(c, P)`` gradients (e.g. a random projection), so that the full
            ``(B, P)`` matrix is never materialised.

    Returns:
        ``(grads, values)``: ``(B, P)`` flattened gradients (or ``(B, ·)`` transformed ones) and the ``(B,)``
        values of ``fn``.

    Raises:
        NonFiniteError: naming the first example whose value or gradient is NaN or infinite.
    """
    bound = _Bound(model, fn)
    wanted = [f"model.{n}" for n in names]
    state = dict(bound.named_parameters()) | dict(bound.named_buffers())
    frozen = {k: v.detach() for k, v in state.items() if k not in set(wanted)}
    trainable = {k: state[k].detach() for k in wanted}

    def one(p: dict[str, Tensor], example: Batch) -> tuple[Tensor, Tensor]:
        value = functional_call(bound, {**frozen, **p}, ((tuple(t.unsqueeze(0) for t in example)),))
        return value.sum(), value.detach().sum()

    grad_fn = vmap(grad(one, has_aux=True), in_dims=(None, 0))
    n = len(batch[0])
    sizes = [t.numel() for t in trainable.values()]
    if chunk_size is None:
        chunk_size = max(1, CHUNK_BYTES // (4 * max(sum(sizes), 1)))
    parts, values = [], []
    for lo in range(0, n, chunk_size):
        chunk = tuple(t[lo : lo + chunk_size] for t in batch)
        g, v = grad_fn(trainable, chunk)
        flat = _flatten(g, wanted, sizes, len(v))
        _check_finite(flat, v, offset + lo)
        parts.append(flat if transform is None else transform(flat))
        values.append(v)
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), torch.cat(values)


def _flatten(grads: dict[str, Tensor], names: list[str], sizes: list[int], rows: int) -> Tensor:
    if len(names) == 1:
        return grads[names[0]].reshape(rows, -1)
    flat = torch.empty(rows, sum(sizes), dtype=grads[names[0]].dtype, device=grads[names[0]].device)
    col = 0
    for name, size in zip(names, sizes):
        flat[:, col : col + size] = grads[name].reshape(rows, size)
        col += size
    return flat


def check_per_example(values: Tensor, batch_len: int, what: str = "loss") -> None:
    """Validate that a task function returned one finite value per example."""
    if values.shape != (batch_len,):
        raise InputError(
            f"Task {what} must return one value per example, shape ({batch_len},), got {tuple(values.shape)}; "
            "use reduction='none'."
        )


def _check_finite(grads: Tensor, values: Tensor, offset: int) -> None:
    # A row sum is non-finite iff the row has a NaN/inf (or overflows, which is as bad): one cheap pass.
    bad = ~(torch.isfinite(values) & torch.isfinite(grads.sum(dim=1)))
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        what = "value" if not torch.isfinite(values[i]) else "gradient"
        raise NonFiniteError(
            f"Non-finite {what} for example {offset + i} (value {float(values[i])}); "
            "check that example's inputs and the model's numerical stability."
        )
