"""Steering operators: K cheap counterfactual versions of a frozen model that share one low-rank basis.

Operator k shifts features of the frozen base model by B_ψ(z)·a_k, with a basis B_ψ(z) = z W_ψ ∈ R^r shared by all
operators and one small matrix a_k ∈ R^{r × D_out} per subset. Two places to act (the paper's own material shows
both):

- **activation mode** (default for models with sequence outputs, e.g. transformers): a forward hook replaces the
  output z of layer ℓ by z + B_ψ(z)·a_k and the frozen layers above run on it (per token when z is a sequence);
- **logit mode** (default for classifiers): the basis reads the features h *entering* layer ℓ (by default the last
  layer, i.e. the penultimate features) and the model's output o becomes o + B_ψ(h)·a_k.

Layers are named by index into the model's layer stack (the children of an ``nn.Sequential``, else its longest
``nn.ModuleList``/``nn.Sequential``, e.g. a transformer's blocks) or by module name (``"blocks.5"``). Every a_k starts
at 0, so every operator starts as the identity. The base model's weights are never trained: only the operators'
parameters are handed to the optimiser and to autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._utils import derive_seed, layer_stack, output_tensor
from ..errors import InputError, UnknownOptionError, check_choice
from ..grads import select_parameters

MODES = ("activation", "logit")
#: Default activation-mode layer as a fraction of depth (released operators: layers 8/12, 10/16, 12/20, 15/24).
DEPTH_FRACTION = 0.625
#: Default basis rank per mode: the released operators' 16 where a_k ∈ R^{r×D} acts on a wide activation; 64 on the
#: logits, where a_k ∈ R^{r×C} stays small and its Newton refinement gains from the rank (stride_lds.py ablation).
DEFAULT_RANK = {"activation": 16, "logit": 64}

Batch = tuple[Tensor, ...]
PerExampleFn = Callable[[nn.Module, Batch], Tensor]


# -- where the operators act ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tap:
    """The tapped layer: its module name, the module, and its position in the layer stack (``None`` if outside)."""

    name: str
    module: nn.Module
    position: int | None
    stack: tuple[tuple[str, nn.Module], ...]


def default_mode(outputs: Tensor) -> str:
    """``"logit"`` for per-example outputs ``(B, C)`` (classifiers), ``"activation"`` for sequences ``(B, T, V)``."""
    return "logit" if outputs.ndim <= 2 else "activation"


def resolve_layer(model: nn.Module, layer: int | str | None, mode: str) -> Tap:
    """The tapped layer for ``layer`` (index into :func:`layer_stack`, module name, or ``None`` for the default).

    Defaults: activation mode, layer ⌊0.625·L⌉ − 1 of an L-layer stack (the output after 62.5% of the layers);
    logit mode, the last module that owns parameters (its input is the penultimate feature vector).
    """
    check_choice("mode", mode, MODES)
    stack = tuple(layer_stack(model))
    modules = dict(model.named_modules())
    if layer is None and mode == "logit":
        layer = select_parameters(model, "last")[0].rpartition(".")[0]
    elif layer is None:
        layer = min(max(round(DEPTH_FRACTION * len(stack)) - 1, 0), len(stack) - 1)
    if isinstance(layer, bool) or not isinstance(layer, (int, str)):
        raise InputError(f"layer must be an int (index into the layer stack), a module name or None, got {layer!r}.")
    if isinstance(layer, int):
        if not -len(stack) <= layer < len(stack):
            where = f"stack {stack[0][0].rpartition('.')[0]!r}" if len(stack) > 1 else "model"
            raise InputError(
                f"layer {layer} is outside the model: its layer {where} has {len(stack)} layers "
                f"(indices 0..{len(stack) - 1}, or a module name such as {stack[-1][0]!r})."
            )
        name, module = stack[layer]
    elif layer in modules:
        name, module = layer, modules[layer]
    else:
        raise UnknownOptionError("layer", layer, [n for n in modules if n])
    position = next((i for i, (n, m) in enumerate(stack) if m is module), None)
    return Tap(name, module, position, stack)


# -- the operators --------------------------------------------------------------------------------------------------
class SteeringOperators(nn.Module):
    """K operators z ↦ B_ψ(z)·a_k with a shared basis W_ψ ∈ R^{in_dim × r} and a_k ∈ R^{r × out_dim}.

    The a_k are the rows of a sparse ``nn.Embedding`` (zero-initialised), so an optimiser step only touches the
    operators of the subsets in the batch. The basis starts as a seeded random matrix with orthonormal columns (rows
    when r > in_dim), so that a ridge on a_k (the refinement's damping) penalises the size of the shift it makes
    equally in every direction of the basis' span.
    """

    def __init__(self, n_operators: int, in_dim: int, out_dim: int, rank: int, seed: int = 0):
        super().__init__()
        self.n_operators, self.in_dim, self.out_dim, self.rank = n_operators, in_dim, out_dim, rank
        gen = torch.Generator().manual_seed(derive_seed(seed, "stride-basis") % 2**62)
        gaussian = torch.randn(max(in_dim, rank), min(in_dim, rank), generator=gen)
        orthonormal = torch.linalg.qr(gaussian)[0]
        self.basis = nn.Parameter(orthonormal if in_dim >= rank else orthonormal.T)
        self.steer = nn.Embedding(n_operators, rank * out_dim, sparse=True)
        nn.init.zeros_(self.steer.weight)

    def matrices(self, ops: Tensor) -> Tensor:
        """a_k for every operator index in ``ops``, shape ``(len(ops), r, out_dim)``."""
        return self.steer(ops).view(len(ops), self.rank, self.out_dim)

    def shift(self, z: Tensor, ops: Tensor) -> Tensor:
        """Shift of each example by its own operator: ``z`` is ``(N, ..., in_dim)``, ``ops`` is ``(N,)``."""
        return torch.einsum("n...r,nro->n...o", z @ self.basis, self.matrices(ops))

    def shift_all(self, z: Tensor, ops: Tensor) -> Tensor:
        """Shift of every example by every operator in ``ops``: ``(len(ops), N, ..., out_dim)``."""
        return torch.einsum("n...r,kro->kn...o", z @ self.basis, self.matrices(ops))


class Outputs(nn.Module):
    """Stands in for the model inside a task call: returns fixed outputs whatever it is given."""

    def __init__(self, outputs: Tensor):
        super().__init__()
        self.outputs = outputs

    def forward(self, *args, **kwargs) -> Tensor:
        return self.outputs


class SteeredModel:
    """A frozen model, a tapped layer, a mode and the operators acting there.

    Args:
        model: the base model (eval mode; never modified).
        tap: from :func:`resolve_layer`.
        mode: ``"activation"`` or ``"logit"``.
        operators: the :class:`SteeringOperators` (``None`` until :meth:`build`).
    """

    def __init__(self, model: nn.Module, tap: Tap, mode: str, operators: SteeringOperators | None = None):
        self.model, self.tap, self.mode, self.operators = model, tap, mode, operators
        self._skip_lower: bool | None = None

    # -- dimensions ---------------------------------------------------------------------------------------------
    def dims(self, inputs: Sequence[Tensor]) -> tuple[int, int, Tensor]:
        """``(in_dim, out_dim, outputs)`` of the operators for this model, from one forward pass."""
        features, outputs = self.features(inputs)
        out_dim = features.shape[-1] if self.mode == "activation" else outputs.shape[-1]
        return features.shape[-1], out_dim, outputs

    def build(self, n_operators: int, rank: int | None, inputs: Sequence[Tensor], seed: int) -> SteeringOperators:
        """Create the operators; ``rank=None`` = ``DEFAULT_RANK[mode]``, at most the tapped feature width."""
        in_dim, out_dim, outputs = self.dims(inputs)
        rank = min(DEFAULT_RANK[self.mode], in_dim) if rank is None else rank
        self.operators = SteeringOperators(n_operators, in_dim, out_dim, rank, seed).to(outputs.device)
        return self.operators

    # -- forward passes -----------------------------------------------------------------------------------------
    def features(self, inputs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Base forward pass without gradients: the tapped features and the model's outputs."""
        store: list[Tensor] = []
        with torch.no_grad(), self._capture(store):
            outputs = output_tensor(self.model(*inputs))
        return store[0], _checked(outputs, "the model", self.model, "output")

    def per_example(self, fn: PerExampleFn, batch: Batch, ops: Tensor) -> Tensor:
        """``fn`` of every example with example i steered by operator ``ops[i]`` (differentiable in the operators)."""
        if self.mode == "logit":
            h, o = self.features(batch[:-1])
            return fn(Outputs(o + self.operators.shift(h, ops)), batch)
        with self._replace(lambda z: z + self.operators.shift(z, ops)):
            return fn(self.model, batch)

    def outputs(self, inputs: Sequence[Tensor], ops: Tensor) -> tuple[Tensor, Tensor]:
        """``(base outputs, steered outputs)`` with example i steered by operator ``ops[i]``."""
        h, o = self.features(inputs)
        if self.mode == "logit":
            return o, o + self.operators.shift(h, ops)
        with self._replace(lambda z: z + self.operators.shift(z, ops)):
            return o, output_tensor(self.model(*inputs))

    def all_operators(self, fn: PerExampleFn, batch: Batch, ops: Tensor, features: Tensor, outputs: Tensor) -> Tensor:
        """``fn`` of every example under every operator in ``ops``, shape ``(len(ops), B)``.

        Logit mode: one small product on the stored features and outputs. Activation mode: the layers above the tap
        run on the ``len(ops)·B`` shifted activations; the layers below it are skipped (their output is replaced)
        whenever that provably reproduces the base model on this batch, and recomputed otherwise.
        """
        k, b = len(ops), len(batch[0])
        repeated = tuple(t.repeat(k, *([1] * (t.ndim - 1))) for t in batch)
        if self.mode == "logit":
            steered = outputs.unsqueeze(0) + self.operators.shift_all(features, ops)
            return fn(Outputs(steered.reshape(k * b, *outputs.shape[1:])), repeated).view(k, b)
        shifted = (features.unsqueeze(0) + self.operators.shift_all(features, ops)).reshape(k * b, *features.shape[1:])
        if self._skip_lower is None:
            self._skip_lower = self._lower_layers_can_be_skipped(batch[:-1], features, outputs)
        with self._replace(lambda z: shifted), self._skipping_lower(self._skip_lower):
            return fn(self.model, repeated).view(k, b)

    # -- hooks --------------------------------------------------------------------------------------------------
    @contextmanager
    def _capture(self, store: list[Tensor]) -> Iterator[None]:
        module, name = self.tap.module, self.tap.name
        if self.mode == "logit":

            def pre_hook(mod, args, kwargs):
                first = args[0] if args else next(iter(kwargs.values()), None)
                store.append(_checked(first, name, mod, "input"))

            handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:

            def hook(mod, args, output):
                store.append(_checked(output, name, mod, "output"))

            handle = module.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @contextmanager
    def _replace(self, new_output: Callable[[Tensor], Tensor]) -> Iterator[None]:
        """Activation mode: the tapped layer's output z is replaced by ``new_output(z)``."""
        name = self.tap.name

        def hook(mod, args, output):
            return new_output(_checked(output, name, mod, "output").detach())

        handle = self.tap.module.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @contextmanager
    def _skipping_lower(self, skip: bool) -> Iterator[None]:
        """Make the layers up to the tap pass their first input through unchanged (their result is replaced)."""
        lower = [m for _, m in self.tap.stack[: self.tap.position + 1]] if skip else []
        for m in lower:
            m.forward = _pass_through
        try:
            yield
        finally:
            for m in lower:
                del m.forward

    def _lower_layers_can_be_skipped(self, inputs: Sequence[Tensor], features: Tensor, outputs: Tensor) -> bool:
        if self.tap.position is None:
            return False
        try:
            with torch.no_grad(), self._replace(lambda z: features), self._skipping_lower(True):
                skipped = output_tensor(self.model(*inputs))
        except Exception:  # noqa: BLE001 - any failure means the stack is not a plain chain of layers
            return False
        scale = float(outputs.abs().max()) + 1e-12
        return (
            isinstance(skipped, Tensor)
            and skipped.shape == outputs.shape
            and bool(torch.allclose(skipped, outputs, rtol=1e-4, atol=1e-5 * scale))
        )


def _pass_through(*args, **kwargs):
    return args[0] if args else next(iter(kwargs.values()))


def _checked(value: object, name: str, module: nn.Module, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        shown = type(value).__name__
        if isinstance(value, (tuple, list)):
            shown += "(" + ", ".join(type(v).__name__ for v in value[:4]) + (", ..." if len(value) > 4 else "") + ")"
        raise InputError(
            f"Layer {name or '<model>'!r} ({type(module).__name__}) has {what} of type {shown}, not a tensor; "
            f"STRIDE needs a layer whose {what} is a single tensor: choose another layer (by index or module name)."
        )
    return value
