"""KFAC and EK-FAC: Kronecker-factored approximations of the Gauss–Newton Hessian of the mean training loss.

For a layer with (bias-augmented) input a and output s, an example's gradient w.r.t. its weight is ``Σ_t δ_t a_tᵀ``
(t: positions — 1 for a plain linear layer, tokens for sequences, pixels for convolutions). The Gauss–Newton Hessian
``(1/n) Σ_i J_iᵀ Λ_i J_i`` is the second moment of *pseudo-gradients*: with Λ_i = L_i L_iᵀ (Λ_i the Hessian of the
loss w.r.t. the model output, factored exactly by :meth:`OutputSplit.output_hessian_factors`), back-propagating
each column of L_i gives the output gradients δ_{i,c} of one pseudo-gradient. Per layer:

- KFAC (Martens & Grosse, 2015): ``H ≈ S ⊗ A``, A = mean_{i,t} a aᵀ, S = (1/n) Σ_{i,c,t} δ δᵀ; exact for one linear
  layer whose output has one dimension and whose loss has constant curvature (squared error);
- EK-FAC (George et al., 2018): in the eigenbasis Q_S ⊗ Q_A of KFAC, the diagonal is replaced by the exact second
  moments ``Λ[o, k] = (1/n) Σ_{i,c} (Q_Sᵀ G_{i,c} Q_A)²[o, k]``, G_{i,c} = Σ_t δ a_tᵀ — the best diagonal in that basis.

Layers are assumed independent (block-diagonal across layers). The statistics are accumulated in streaming passes
over the data (the covariances in one; EK-FAC's eigenvalue correction, which needs their eigenbasis, in a second)
and written once to a :class:`~datatrace.store.Store`, so a rerun with the same ``cache_dir`` reuses them.
Supported layers: ``nn.Linear`` and ``nn.Conv2d`` (``groups=1``, zero padding).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import model_device, model_fingerprint, track
from .._version import __version__
from ..data import Data, to_device
from ..errors import InputError
from ..store import Store
from ..task import Task
from .hessian import OutputSplit

Batch = tuple[Tensor, ...]
SUPPORTED = (nn.Linear, nn.Conv2d)
#: EK-FAC keeps the first pass's per-example statistics in memory for its second pass when they take at most this many
#: bytes (else the second pass recomputes them): the same numbers without a second set of forward/backward passes.
MAX_REUSED_STATISTICS_BYTES = 2**28


class LayerTransform(Protocol):
    """Maps a layer's inputs ``(B, T, in)`` and output gradients ``(B, ..., T, out)`` to another space."""

    def __call__(self, layer: KroneckerLayer, a: Tensor, d: Tensor) -> tuple[Tensor, Tensor]: ...

    def dims(self, layer: KroneckerLayer) -> tuple[int, int]:
        """``(in, out)`` dimensions after the transform."""
        ...


@dataclass
class KroneckerLayer:
    """A supported module and which of its parameters are differentiated.

    Its gradient block is the ``(out, in)`` matrix ``[W | b]`` (W flattened to ``(out, ·)``; b as a last column),
    with ``in`` counting the bias column when the bias is selected.
    """

    name: str
    module: nn.Module
    weight: str | None
    bias: str | None

    @property
    def out_dim(self) -> int:
        return self.module.out_channels if isinstance(self.module, nn.Conv2d) else self.module.out_features

    @property
    def in_dim(self) -> int:
        w = self.module.weight
        return (w[0].numel() if self.weight else 0) + (1 if self.bias else 0)

    def inputs(self, x: Tensor) -> Tensor:
        """Layer input → ``(B, T, in)`` rows a_t (convolution patches), with a column of ones for the bias."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            a = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride).transpose(1, 2)
        else:
            a = x.reshape(len(x), -1, x.shape[-1])
        parts = ([a] if self.weight else []) + ([torch.ones_like(a[..., :1])] if self.bias else [])
        return torch.cat(parts, dim=-1)

    def output_grads(self, g: Tensor) -> Tensor:
        """Gradient w.r.t. the layer output → ``(B, T, out)``."""
        if isinstance(self.module, nn.Conv2d):
            return g.flatten(2).transpose(1, 2)
        return g.reshape(len(g), -1, g.shape[-1])


def kronecker_layers(model: nn.Module, names: Sequence[str], method: str) -> list[KroneckerLayer]:
    """The supported layers owning the parameters ``names``.

    Raises:
        InputError: naming every selected module that is not a supported layer, with the fallbacks.
    """
    modules = dict(model.named_modules())
    owners: dict[str, dict[str, str]] = {}
    for n in names:
        owner, _, leaf = n.rpartition(".")
        owners.setdefault(owner, {})[leaf] = n
    layers, bad = [], []
    for owner, params in owners.items():
        m = modules[owner]
        ok = isinstance(m, SUPPORTED) and set(params) <= {"weight", "bias"}
        if isinstance(m, nn.Conv2d):
            ok = ok and m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)
        if not ok:
            bad.append(f"{owner or '(root)'} ({type(m).__name__})")
            continue
        layers.append(KroneckerLayer(owner, m, params.get("weight"), params.get("bias")))
    if bad:
        supported = [n for n, m in model.named_modules() if isinstance(m, SUPPORTED)]
        raise InputError(
            f"{method} supports only nn.Linear and nn.Conv2d layers (groups=1, numeric zero padding); unsupported: "
            f"{', '.join(bad)}. Restrict the parameters to supported layers, e.g. params={supported}, "
            "or use an HVP-based solver (solver='cg', 'explicit', 'lissa' or 'arnoldi')."
        )
    return layers


@contextmanager
def captured(layers: Sequence[KroneckerLayer]) -> Iterator[dict[str, tuple[Tensor, Tensor]]]:
    """Record ``{layer name: (input, output)}`` of every forward pass through ``layers`` inside the context."""
    seen: dict[str, tuple[Tensor, Tensor]] = {}

    def hook(name: str):
        def record(module, args, output):
            seen[name] = (args[0].detach(), output)

        return record

    handles = [layer.module.register_forward_hook(hook(layer.name)) for layer in layers]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def pseudo_gradients(
    model: nn.Module, task: Task, batch: Batch, layers: Sequence[KroneckerLayer]
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per layer ``(a (B, T, in), δ (B, C, T, out))``: inputs and the output gradients of the C pseudo-gradients."""
    split = OutputSplit(model, task, batch)
    with captured(layers) as seen, torch.enable_grad():
        z = split.forward()
        factors = split.output_hessian_factors(z).reshape(len(z), z[0].numel(), -1)  # (B, O, C)
        outputs = [seen[layer.name][1] for layer in layers]
        deltas = [[] for _ in layers]
        for c in range(factors.shape[2]):
            grads = torch.autograd.grad(z, outputs, factors[:, :, c].reshape(z.shape), retain_graph=True)
            for d, g, layer in zip(deltas, grads, layers):
                d.append(layer.output_grads(g))
    return {layer.name: (layer.inputs(seen[layer.name][0]), torch.stack(d, 1)) for layer, d in zip(layers, deltas)}


def loss_gradients(
    model: nn.Module, fn: Callable[[nn.Module, Batch], Tensor], batch: Batch, layers: Sequence[KroneckerLayer]
) -> tuple[dict[str, tuple[Tensor, Tensor]], Tensor]:
    """Per layer ``(a (B, T, in), δ (B, T, out))`` for the per-example function ``fn`` (one backward pass), and the
    ``(B,)`` values of ``fn``. Examples do not interact (eval mode), so δ of example b is its own gradient."""
    with captured(layers) as seen, torch.enable_grad():
        values = fn(model, batch)
        grads = torch.autograd.grad(values.sum(), [seen[layer.name][1] for layer in layers])
    stats = {layer.name: (layer.inputs(seen[layer.name][0]), layer.output_grads(g)) for layer, g in zip(layers, grads)}
    return stats, values.detach()


class KroneckerFactors:
    """Per-layer eigenbases ``Q_in (in, in)``, ``Q_out (out, out)`` and eigenvalues ``(out, in)`` of KFAC / EK-FAC."""

    def __init__(self, arrays: dict[str, Tensor], layer_names: Sequence[str]):
        self.layer_names = list(layer_names)
        self.q_in = {n: arrays[f"{n}.q_in"] for n in self.layer_names}
        self.q_out = {n: arrays[f"{n}.q_out"] for n in self.layer_names}
        self.eigenvalues = {n: arrays[f"{n}.eigenvalues"] for n in self.layer_names}

    @property
    def trace(self) -> float:
        return float(sum(v.sum() for v in self.eigenvalues.values()))

    @property
    def dim(self) -> int:
        return sum(v.numel() for v in self.eigenvalues.values())

    def precondition(self, blocks: dict[str, Tensor], damping: float) -> dict[str, Tensor]:
        """``(H_layer + λI)⁻¹`` applied to each ``(m, out, in)`` gradient block, in the Kronecker eigenbasis."""
        out = {}
        for n, g in blocks.items():
            q_in, q_out = self.q_in[n], self.q_out[n]
            rotated = q_out.T @ g.double() @ q_in
            out[n] = q_out @ (rotated / (self.eigenvalues[n] + damping)) @ q_in.T
        return out


def fit_factors(
    model: nn.Module,
    task: Task,
    data: Data,
    layers: Sequence[KroneckerLayer],
    kind: str,
    batch_size: int,
    transform: LayerTransform | None = None,
    cache_dir: str | os.PathLike | None = None,
    meta: dict | None = None,
    verbose: bool = True,
) -> KroneckerFactors:
    """KFAC (``kind="kfac"``) or EK-FAC (``"ekfac"``) factors of the Gauss–Newton Hessian of the mean loss on ``data``.

    ``transform`` maps each layer's inputs and output gradients before the statistics are taken (LoGra's
    projections); the factors then live in the transformed space. With ``cache_dir`` the factors are stored under
    ``cache_dir`` (one :class:`Store` row, header with the model and data fingerprints) and reused by a rerun.
    """
    device = model_device(model)
    OutputSplit(model, task, to_device(data.batch(slice(0, min(2, len(data)))), device), check=True)

    def statistics(what: str) -> Iterator[dict[str, tuple[Tensor, Tensor]]]:
        batches = data.batches(batch_size)
        for _, batch in track(batches, what, -(-len(data) // batch_size), verbose):
            stats = pseudo_gradients(model, task, to_device(batch, device), layers)
            if transform is not None:
                stats = {layer.name: transform(layer, *stats[layer.name]) for layer in layers}
            yield {n: (a.double(), d.double()) for n, (a, d) in stats.items()}

    header = {
        "kind": kind,
        "layers": [layer.name for layer in layers],
        "task": repr(task),
        "model_fingerprint": model_fingerprint(model),
        "data_fingerprint": data.fingerprint(),
        "datatrace_version": __version__,
        **(meta or {}),
    }
    arrays = {}
    for layer in layers:
        n_in, n_out = (layer.in_dim, layer.out_dim) if transform is None else transform.dims(layer)
        arrays |= {
            f"{layer.name}.q_in": ((n_in, n_in), "float64"),
            f"{layer.name}.q_out": ((n_out, n_out), "float64"),
            f"{layer.name}.eigenvalues": ((n_out, n_in), "float64"),
        }
    path = None if cache_dir is None else Path(cache_dir)
    store = Store(path, 1, arrays, header, shard_size=1)
    if not store.complete:
        store.write_shard(0, {k: v[None].numpy() for k, v in _compute(statistics, layers, kind, len(data)).items()})
    return KroneckerFactors({k: torch.from_numpy(store[k][0].copy()) for k in arrays}, [la.name for la in layers])


def _compute(statistics, layers: Sequence[KroneckerLayer], kind: str, n: int) -> dict[str, Tensor]:
    """The factor arrays: covariances in one pass, their eigendecompositions, EK-FAC's correction in a second (over
    the first pass's statistics when they fit in ``MAX_REUSED_STATISTICS_BYTES``)."""
    cov_in: dict[str, Tensor] = {}
    cov_out: dict[str, Tensor] = {}
    positions: dict[str, int] = {}
    reused: list | None = [] if kind == "ekfac" else None
    reused_bytes = 0
    for stats in statistics(f"{kind}: covariances"):
        if reused is not None:
            reused_bytes += sum(a.nbytes + d.nbytes for a, d in stats.values())
            if reused_bytes > MAX_REUSED_STATISTICS_BYTES:
                reused = None
            else:
                reused.append(stats)
        for name, (a, d) in stats.items():
            cov_in[name] = cov_in.get(name, 0) + torch.einsum("bti,btj->ij", a, a)
            cov_out[name] = cov_out.get(name, 0) + torch.einsum("bcto,bctp->op", d, d)
            positions[name] = a.shape[1]
    out = {}
    for layer in layers:
        name = layer.name
        a_val, a_vec = torch.linalg.eigh(cov_in[name] / (n * positions[name]))
        s_val, s_vec = torch.linalg.eigh(cov_out[name] / n)
        out |= {f"{name}.q_in": a_vec, f"{name}.q_out": s_vec}
        out[f"{name}.eigenvalues"] = torch.outer(s_val.clamp_min(0), a_val.clamp_min(0))
    if kind == "ekfac":
        corrected = {layer.name: 0 for layer in layers}
        for stats in reused if reused is not None else statistics("ekfac: eigenvalue correction"):
            for name, (a, d) in stats.items():
                a, d = a @ out[f"{name}.q_in"], d @ out[f"{name}.q_out"]
                if a.shape[1] == 1:  # one position: (δ ãᵀ)² = δ² (ã²)ᵀ, so never form the (B, C, out, in) gradients
                    squares = (d[:, :, 0] ** 2).sum(1).T @ a[:, 0] ** 2
                else:
                    squares = (torch.einsum("bcto,bti->bcoi", d, a) ** 2).sum((0, 1))
                corrected[name] = corrected[name] + squares
        out |= {f"{name}.eigenvalues": value / n for name, value in corrected.items()}
    return out
