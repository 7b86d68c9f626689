"""Dropout members: a trained model seen through dropout masks on the inputs of chosen layers.

A :class:`MaskedModel` shares its base model's parameters (nothing is copied) and applies, on the input ``x`` of each
chosen layer, ``x · keep / (1 − rate)`` with ``keep ∈ {0, 1}`` drawn with ``P(keep = 0) = rate``:

- ``mask="member"``: one fixed mask per layer and member, drawn from the member's seed and stored as a buffer. Every
  forward pass of the member — training gradients, query gradients, TRAK's out-to-loss term — sees the same
  sub-network.
- ``mask="sample"``: a mask per example, a seeded hash of the layer's input row, so each example sees its own
  sub-network (the semantics of a peer's "dropout ensemble", where masks are redrawn per example inside vmap). The
  hash is deterministic: the same seed gives the same scores.

Which layers: by default the model's own dropout modules (``nn.Dropout*``) when it has any; otherwise the inputs of
every ``nn.Linear`` except the first one in ``named_modules()`` order (the first sees raw features, not hidden units).
``layers=[...]`` names modules (``nn.Linear`` or dropout) explicitly. The base model stays in ``eval()`` mode; its own
dropout modules remain the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._utils import derive_seed
from ..errors import InputError, check_choice

MASKS = ("member", "sample")
_DROPOUT = nn.modules.dropout._DropoutNd
#: Multiplier of the sine hash that turns a projected input row into per-unit uniforms (``mask="sample"``).
_HASH_SCALE = 43758.5453


def check_rate(rate: float) -> float:
    if not (isinstance(rate, (int, float)) and 0 <= rate < 1):
        raise InputError(f"dropout rate must be in [0, 1), got {rate!r}.")
    return float(rate)


def maskable_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """Names of the modules whose inputs get masks (see the module docstring for the default)."""
    modules = dict(model.named_modules())
    candidates = [n for n, m in modules.items() if isinstance(m, (nn.Linear, _DROPOUT))]
    if layers is None:
        dropouts = [n for n, m in modules.items() if isinstance(m, _DROPOUT)]
        chosen = dropouts or [n for n, m in modules.items() if isinstance(m, nn.Linear)][1:]
        if not chosen:
            raise InputError(
                f"kind='dropout': no layer of {type(model).__name__} can take a mask by default (it has no dropout "
                f"module and at most one nn.Linear). Its layers: {_describe(modules)}. Pass layers=[...] naming "
                "nn.Linear or dropout modules to mask their inputs."
            )
        return chosen
    layers = [layers] if isinstance(layers, str) else list(layers)
    bad = [n for n in layers if n not in candidates]
    if bad or not layers:
        raise InputError(
            f"layers {bad or layers} cannot take a dropout mask: only nn.Linear and dropout modules can. Candidates in "
            f"{type(model).__name__}: {candidates or 'none'}; its layers: {_describe(modules)}."
        )
    return layers


def _describe(modules: dict[str, nn.Module]) -> str:
    return ", ".join(f"{n} ({type(m).__name__})" for n, m in modules.items() if n) or "none"


class MaskedModel(nn.Module):
    """``base`` with dropout masks on the inputs of ``layers`` (see the module docstring).

    Args:
        base: the trained model (shared, not copied).
        layers: module names from :func:`maskable_layers`.
        widths: input width (last dimension) of each layer.
        rate: dropout rate in [0, 1).
        mask: ``"member"`` (fixed mask) or ``"sample"`` (per-example hash).
        seed: seed of this member's masks.
    """

    def __init__(
        self, base: nn.Module, layers: Sequence[str], widths: Sequence[int], rate: float, mask: str, seed: int
    ):
        super().__init__()
        self.base = base
        self.layers, self.rate = list(layers), check_rate(rate)
        self.mask = check_choice("mask", mask, MASKS)
        for i, width in enumerate(widths):
            gen = torch.Generator().manual_seed(derive_seed(seed, "dropout", self.layers[i]))
            if mask == "member":
                keep = torch.rand(width, generator=gen) >= rate
                self.register_buffer(f"keep{i}", keep)
            else:  # projection of the input row and per-unit frequency/phase of the hash
                self.register_buffer(f"hash{i}", torch.randn(3, width, generator=gen))
        self.eval()

    def keep_mask(self, i: int, x: Tensor) -> Tensor:
        """The 0/1 mask applied to input ``x`` of layer ``i`` (broadcast over all but the last dimension)."""
        if self.mask == "member":
            return getattr(self, f"keep{i}").to(x.dtype)
        r, freq, phase = getattr(self, f"hash{i}")
        s = x.detach() @ r / max(1.0, float(len(r)) ** 0.5)
        v = torch.sin(s.unsqueeze(-1) * (1 + freq.abs()) * 97.0 + phase) * _HASH_SCALE
        return ((v - torch.floor(v)) >= self.rate).to(x.dtype)

    def forward(self, *inputs):
        modules = dict(self.base.named_modules())
        handles = [
            modules[name].register_forward_pre_hook(lambda _m, args, i=i: self._masked(i, args))
            for i, name in enumerate(self.layers)
        ]
        try:
            return self.base(*inputs)
        finally:
            for h in handles:
                h.remove()

    def _masked(self, i: int, args: tuple) -> tuple:
        x = args[0]
        return (x * self.keep_mask(i, x) / (1.0 - self.rate), *args[1:])


def layer_widths(model: nn.Module, layers: Sequence[str], inputs: tuple[Tensor, ...]) -> list[int]:
    """Input width of each layer, read from one forward pass on ``inputs``."""
    modules, widths = dict(model.named_modules()), {}

    def record(name: str, args: tuple) -> None:
        widths.setdefault(name, args[0].shape[-1])

    handles = [
        modules[name].register_forward_pre_hook(lambda _m, args, name=name: record(name, args)) for name in layers
    ]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    unused = [n for n in layers if n not in widths]
    if unused:
        raise InputError(f"layers {unused} are never called in the model's forward pass, so they cannot be masked.")
    return [widths[n] for n in layers]
