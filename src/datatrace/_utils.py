"""Small shared helpers: progress bars, model fingerprints and model checks."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
from torch import nn

from .errors import ModelModeError

T = TypeVar("T")

#: Modules whose output in ``train()`` mode is random or depends on the rest of the batch.
MODE_SENSITIVE = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def show_progress(verbose: bool) -> bool:
    """Progress bars are shown when asked for, on a terminal, and never in CI logs."""
    return bool(verbose) and sys.stderr.isatty() and not os.environ.get("CI")


def track(iterable: Iterable[T], description: str, total: int | None = None, verbose: bool = True) -> Iterator[T]:
    """Iterate with a rich progress bar when :func:`show_progress` allows it."""
    if not show_progress(verbose):
        yield from iterable
        return
    from rich.progress import track as rich_track

    yield from rich_track(iterable, description=description, total=total, transient=True)


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed derived from ``seed`` and a label, so that independent random streams never collide."""
    digest = hashlib.sha256(repr((int(seed),) + parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (names, shapes, dtypes and values)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def check_eval_mode(model: nn.Module, what: str = "model") -> None:
    """Refuse a model whose dropout / batch-norm layers are in training mode.

    In ``train()`` mode such layers make gradients random or batch-dependent, so scores would change from run to
    run and depend on how examples are batched.
    """
    bad = [
        name or type(model).__name__
        for name, m in model.named_modules()
        if m.training and isinstance(m, MODE_SENSITIVE)
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ModelModeError(
            f"{what} is in training mode and has dropout/batch-norm layers ({shown}); "
            "call model.eval() before attribution."
        )


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class PeakMemory:
    """Context manager measuring the peak growth of resident memory (RSS) over its entry value, in bytes.

    Samples ``/proc/self/statm`` from a background thread (Linux); elsewhere ``peak_bytes`` stays 0.
    """

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return 0

    def _sample(self) -> None:
        while True:
            self.peak_bytes = max(self.peak_bytes, self.rss() - self._start)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> PeakMemory:
        self._start = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.rss() - self._start)


def layer_stack(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's layers in order: an ``nn.Sequential``'s children, else its longest ``nn.ModuleList`` or
    ``nn.Sequential`` (a transformer's blocks), else the model itself."""
    if isinstance(model, nn.Sequential):
        return list(model.named_children())
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m)]
    if not lists:
        return [("", model)]
    name, best = max(lists, key=lambda nm: len(nm[1]))
    return [(f"{name}.{i}", m) for i, m in enumerate(best)]


def output_tensor(output: object) -> object:
    """A model's output as a tensor where it wraps one: ``.logits`` of a ``transformers`` output, the first item of a
    tuple; anything else is returned as is (callers name what they got)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    return output
