"""A uniform, indexable view of training and query data.

Users pass a tuple of tensors ``(X, y)`` (NumPy arrays are converted) or any ``torch.utils.data.Dataset`` with
``__len__`` whose items are tuples of tensors. Everything else in datatrace sees a :class:`Data`: its length,
batches by index, subsets, and a fingerprint that identifies it in on-disk stores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from .errors import InputError

Batch = tuple[Tensor, ...]

#: Items hashed for the fingerprint of a ``Dataset`` (evenly spaced); tensors are hashed in full.
FINGERPRINT_ITEMS = 256


class Data:
    """Indexed data: a tuple of equally long tensors or a map-style ``Dataset``."""

    def __init__(self, source: Sequence[Tensor] | Dataset, name: str = "data"):
        self.name = name
        #: Positions of these examples in the data they were taken from by :meth:`subset` (``None`` otherwise).
        self.indices: np.ndarray | None = None
        if isinstance(source, Data):
            self._tensors, self._dataset, self._len = source._tensors, source._dataset, source._len
            self.indices = source.indices
            return
        if isinstance(source, (tuple, list)):
            tensors = tuple(t if isinstance(t, Tensor) else torch.as_tensor(np.asarray(t)) for t in source)
            if not tensors:
                raise InputError(f"{name} is an empty tuple; pass (X, y).")
            lengths = [len(t) for t in tensors]
            if len(set(lengths)) != 1:
                raise InputError(f"{name} tensors have different lengths {lengths}; X and y must match.")
            self._tensors, self._dataset, self._len = tensors, None, lengths[0]
        elif isinstance(source, Dataset) and hasattr(source, "__len__"):
            self._tensors, self._dataset, self._len = None, source, len(source)
        else:
            raise InputError(
                f"{name} must be a tuple of tensors (X, y) or a torch Dataset with __len__, "
                f"got {type(source).__name__}."
            )
        if self._len == 0:
            raise InputError(f"{name} is empty.")

    def __len__(self) -> int:
        return self._len

    def batch(self, indices: slice | Sequence[int] | np.ndarray) -> Batch:
        """The examples at ``indices`` as one batch (a tuple of tensors)."""
        if self._tensors is not None:
            if not isinstance(indices, slice):
                indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
            return tuple(t[indices] for t in self._tensors)
        if isinstance(indices, slice):
            indices = range(*indices.indices(self._len))
        items = [self._dataset[int(i)] for i in indices]
        out = default_collate(items)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, Batch]]:
        """Yield ``(offset, batch)`` over rows ``start:stop`` in order."""
        stop = self._len if stop is None else stop
        for lo in range(start, stop, batch_size):
            yield lo, self.batch(slice(lo, min(lo + batch_size, stop)))

    def subset(self, indices: Sequence[int] | np.ndarray) -> Data:
        """A new :class:`Data` with only the examples at ``indices`` (in that order).

        Its ``indices`` attribute records their positions in the original data (composed across nested subsets).
        """
        idx = np.asarray(indices, dtype=np.int64)
        if self._tensors is not None:
            out = Data(self.batch(idx), name=self.name)
        else:
            out = Data(torch.utils.data.Subset(self._dataset, idx.tolist()), name=self.name)
        out.indices = idx if self.indices is None else self.indices[idx]
        return out

    def tensors(self) -> Batch:
        """All examples as one batch."""
        return self.batch(slice(0, self._len))

    def fingerprint(self) -> str:
        """SHA-256 of the content (all of it for tensors; ``FINGERPRINT_ITEMS`` evenly spaced items otherwise)."""
        h = hashlib.sha256(str(self._len).encode())
        if self._tensors is not None:
            parts = self._tensors
        else:
            picks = np.unique(np.linspace(0, self._len - 1, min(self._len, FINGERPRINT_ITEMS)).astype(int))
            parts = self.batch(picks)
        for t in parts:
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:16]


def as_data(source: Sequence[Tensor] | Dataset | Data, name: str = "data") -> Data:
    """Wrap user data as :class:`Data` (a no-op for ``Data``)."""
    return source if isinstance(source, Data) else Data(source, name=name)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return tuple(t.to(device) for t in batch)
