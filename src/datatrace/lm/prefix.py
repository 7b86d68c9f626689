"""Frozen lower layers computed once: attribute the top of a large causal LM on cached hidden states.

Attributors restricted to a model's top layers (``params=[...]``, STRIDE with a tap near the top) re-run the whole
frozen model on every pass over the data (EK-FAC covariances, eigenvalue correction, features; STRIDE's operator
training and measurement), although the layers below the first attributed one never change. :class:`PrefixCache`
runs them once per example and keeps their output::

    prefix = dt.lm.PrefixCache(model, start=29)          # decoder layers 0..28 run once per example
    train_h, query_h = prefix.encode(train), prefix.encode(query)
    dt.LoGra(prefix.upper, task, params=["model.layers.29.mlp.down_proj"]).fit(train_h).score(query_h)

``prefix.upper`` is the model from decoder layer ``start`` on: called on the hidden states entering that layer, it
returns the full model's logits. It shares the model's parameter tensors (nothing is copied) under the same names;
the layers below ``start`` pass their input through. :meth:`PrefixCache.encode` turns ``(input_ids, loss_mask)``
data into ``(hidden_states, input_ids, loss_mask)`` data, a batch form :class:`~datatrace.lm.CausalLMTask` accepts
(the ids supply the targets). Losses, gradients and hence scores of ``upper`` on the encoded data equal those of the
full model on the token ids; the first encoded batch is checked against the full model, and a model whose decoder
layers do not form a plain chain is refused. Memory: ``T × hidden × 4`` bytes per example (147 kB for 64 tokens of
SmolLM2-135M), held in memory.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import Tensor, nn

from .._utils import check_eval_mode, layer_stack, model_device, track
from ..data import Data, as_data
from ..errors import InputError
from .task import logits_of

#: Relative tolerance of the check that the upper model on cached states reproduces the full model's logits.
CHECK_RTOL = 1e-4


class PrefixCache:
    """The decoder layers of a Hugging Face causal LM below ``start``, run once per example (see module docs).

    Args:
        model: a ``transformers`` causal LM in ``eval()`` mode whose ``forward`` accepts ``inputs_embeds``.
        start: index of the first decoder layer that is *not* cached (0 < start < number of layers); the
            attributed parameters and a STRIDE tap must lie at or above it.
    """

    def __init__(self, model: nn.Module, start: int):
        parameters = inspect.signature(type(model).forward).parameters
        if "inputs_embeds" not in parameters and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            raise InputError(
                f"PrefixCache needs a transformers causal LM whose forward accepts inputs_embeds; "
                f"{type(model).__name__} does not."
            )
        stack = layer_stack(model)
        if not 0 < start < len(stack):
            raise InputError(f"start must be in 1..{len(stack) - 1} (the model has {len(stack)} decoder layers).")
        check_eval_mode(model)
        self.model, self.start = model, start
        self.layers_path = stack[0][0].rpartition(".")[0]
        self._first_upper_layer = stack[start][1]
        self.upper = _upper_model(model, self.layers_path.split("."), start)
        self._checked = False

    def encode(self, data, batch_size: int = 16, verbose: bool = True) -> Data:
        """``(hidden_states, input_ids, loss_mask)`` data: the hidden states entering layer ``start`` of every
        example of ``data`` (``(input_ids, loss_mask)``), float32 on the CPU."""
        data = as_data(data, "data")
        if len(data.batch(slice(0, 1))) != 2:
            raise InputError("PrefixCache.encode takes (input_ids, loss_mask) data, e.g. a dt.lm.corpus(...).")
        device = model_device(self.model)
        hidden = []
        total = -(-len(data) // batch_size)
        with torch.no_grad():
            for _, (input_ids, _mask) in track(data.batches(batch_size), "caching lower layers", total, verbose):
                states = self._hidden_states(input_ids.to(device))
                if not self._checked:
                    self._check(input_ids.to(device), states)
                hidden.append(states.float().cpu())
        input_ids, loss_mask = data.tensors()
        return Data((torch.cat(hidden), input_ids, loss_mask), name=f"{data.name}@layer{self.start}")

    def _hidden_states(self, input_ids: Tensor) -> Tensor:
        captured: list[Tensor] = []

        def grab(module, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _Captured

        handle = self._first_upper_layer.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.model(input_ids)
        except _Captured:
            pass
        finally:
            handle.remove()
        return captured[0]

    def _check(self, input_ids: Tensor, states: Tensor) -> None:
        full = logits_of(self.model, input_ids)
        upper = logits_of(self.upper, states)
        scale = float(full.abs().max()) + 1e-12
        if upper.shape != full.shape or not torch.allclose(upper, full, rtol=CHECK_RTOL, atol=CHECK_RTOL * scale):
            raise InputError(
                f"{type(self.model).__name__} computed from cached hidden states does not reproduce its own logits: "
                "its decoder layers are not a plain chain of hidden states; attribute the full model instead."
            )
        self._checked = True

    def __repr__(self) -> str:
        return f"PrefixCache({type(self.model).__name__}, start={self.start})"


class _Captured(Exception):
    """Stops the forward pass once the hidden states entering the first uncached layer are captured."""


class _PassThrough(nn.Module):
    """A cached decoder layer: returns the hidden states it is given."""

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        return hidden_states


def _upper_model(model: nn.Module, path: list[str], start: int) -> nn.Module:
    """A shallow copy of ``model`` whose decoder layers below ``start`` pass through and whose ``forward`` takes the
    hidden states entering layer ``start`` (extra inputs, such as the token ids of a batch, are ignored)."""
    upper = _replace_child(
        model,
        path,
        lambda layers: nn.ModuleList([_PassThrough() if i < start else layer for i, layer in enumerate(layers)]),
    )
    forward = type(model).forward

    def forward_from_hidden(hidden_states: Tensor, *ignored: Tensor):
        return forward(upper, inputs_embeds=hidden_states)

    upper.forward = forward_from_hidden
    return upper


def _replace_child(module: nn.Module, path: list[str], make) -> nn.Module:
    """A copy of ``module`` with the submodule at ``path`` replaced by ``make(submodule)``; the modules along the path
    are shallow copies (own child, parameter and hook tables; the same tensors), all others are shared."""
    if not path:
        return make(module)
    out = copy.copy(module)
    out.__dict__.update({k: v.copy() for k, v in module.__dict__.items() if isinstance(v, dict)})
    head, *rest = path
    out._modules[head] = _replace_child(module._modules[head], rest, make)
    return out
