"""Resumable on-disk stores of per-row arrays (features, ground-truth runs).

Layout of a store directory::

    header.json        what was computed and from what (shape, dtype, seed, fingerprints, settings, version)
    <name>.npy         one preallocated .npy memmap per array, all sharing the leading dimension n_rows
    complete.npy       completion bitmap, one bool per shard of ``shard_size`` rows

A shard's rows are written into the memmaps and flushed; only then is its bit set, by writing a new bitmap file and
atomically renaming it over the old one. A process killed mid-shard therefore leaves that shard unmarked, and a rerun
recomputes exactly the unmarked shards. Opening a store whose header differs from the current run raises
:class:`~datatrace.errors.StoreMismatchError` naming every field that differs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, StoreMismatchError

FORMAT = "datatrace-store"
FORMAT_VERSION = 1
TENSORS_FORMAT = "datatrace-tensors"


class Store:
    """A directory of preallocated arrays written shard by shard.

    Args:
        path: directory (created if missing). ``None`` makes a temporary directory removed with the object.
        n_rows: leading dimension shared by all arrays.
        arrays: ``{name: (row_shape, dtype)}``, e.g. ``{"features": ((512,), "float32")}``.
        meta: what identifies the run (seed, fingerprints, settings); JSON-serialisable. A store on disk with other
            ``meta``, arrays or shard size is refused.
        shard_size: rows per shard (the unit of resumption).
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        n_rows: int,
        arrays: Mapping[str, tuple[tuple[int, ...], str]],
        meta: Mapping[str, Any],
        shard_size: int = 1024,
    ):
        if n_rows < 1 or shard_size < 1:
            raise InputError(f"Store needs n_rows ≥ 1 and shard_size ≥ 1, got {n_rows}, {shard_size}.")
        if path is None:
            path = tempfile.mkdtemp(prefix="datatrace-")
            weakref.finalize(self, shutil.rmtree, path, ignore_errors=True)
        self.path = Path(path)
        self.n_rows, self.shard_size = n_rows, shard_size
        self.n_shards = math.ceil(n_rows / shard_size)
        self.header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "n_rows": n_rows,
            "shard_size": shard_size,
            "arrays": {k: {"shape": [n_rows, *shape], "dtype": str(np.dtype(dt))} for k, (shape, dt) in arrays.items()},
            "meta": json.loads(json.dumps(dict(meta))),
        }
        header_file = self.path / "header.json"
        if header_file.exists():
            self._check_header(json.loads(header_file.read_text()))
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            for name, spec in self.header["arrays"].items():
                np.lib.format.open_memmap(self._file(name), mode="w+", dtype=spec["dtype"], shape=tuple(spec["shape"]))
            _atomic_save(self.path / "complete.npy", np.zeros(self.n_shards, dtype=bool))
            _atomic_write(header_file, json.dumps(self.header, indent=2, sort_keys=True))
        self._complete = np.load(self.path / "complete.npy")
        self._arrays = {k: np.load(self._file(k), mmap_mode="r+") for k in self.header["arrays"]}

    def _file(self, name: str) -> Path:
        return self.path / f"{name}.npy"

    def _check_header(self, found: dict) -> None:
        _check_same_run(self.path, found, self.header)

    def shard_rows(self, shard: int) -> slice:
        return slice(shard * self.shard_size, min((shard + 1) * self.shard_size, self.n_rows))

    def missing_shards(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self._complete)]

    @property
    def complete(self) -> bool:
        return bool(self._complete.all())

    def write_shard(self, shard: int, values: Mapping[str, np.ndarray]) -> None:
        """Write all arrays of one shard, flush them, then mark the shard complete."""
        rows = self.shard_rows(shard)
        if set(values) != set(self._arrays):
            raise InputError(f"write_shard needs exactly the arrays {sorted(self._arrays)}, got {sorted(values)}.")
        for name, value in values.items():
            self._arrays[name][rows] = value
            self._arrays[name].flush()
        self._complete[shard] = True
        _atomic_save(self.path / "complete.npy", self._complete)

    def __getitem__(self, name: str) -> np.ndarray:
        """The whole array as a read-only memmap (call only once the store is complete)."""
        return np.load(self._file(name), mmap_mode="r")

    @property
    def meta(self) -> dict:
        return self.header["meta"]


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Write named tensors to ``path/tensors.safetensors`` and a JSON header with ``meta``, both atomically.

    The header is written last, so its presence means the tensors are complete. For state that is not per-row
    (e.g. trained parameters); per-row arrays belong in a :class:`Store`.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    header = {"format": TENSORS_FORMAT, "format_version": FORMAT_VERSION, "meta": json.loads(json.dumps(dict(meta)))}
    with tempfile.NamedTemporaryFile(dir=path, delete=False, suffix=".tmp") as f:
        tmp = f.name
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path / "tensors.safetensors")
    _atomic_write(path / "header.json", json.dumps(header, indent=2, sort_keys=True))


def load_tensors(path: str | os.PathLike, meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The tensors saved by :func:`save_tensors` at ``path`` if its header has exactly ``meta``; ``None`` if there is
    no complete save there; :class:`~datatrace.errors.StoreMismatchError` naming the differences otherwise."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "header.json").exists():
        return None
    want = {"format": TENSORS_FORMAT, "format_version": FORMAT_VERSION, "meta": json.loads(json.dumps(dict(meta)))}
    _check_same_run(path, json.loads((path / "header.json").read_text()), want)
    return load_file(path / "tensors.safetensors")


def _check_same_run(path: Path, found: dict, want: dict) -> None:
    diffs = _diff(found, want)
    if diffs:
        raise StoreMismatchError(
            f"The store at {path} was written by a different run: "
            + "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, a, b in diffs)
            + ". Use another cache_dir or delete that directory."
        )


def _diff(found: Any, want: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(found, dict) and isinstance(want, dict):
        out = []
        for k in sorted(set(found) | set(want)):
            out += _diff(found.get(k), want.get(k), f"{prefix}{k}.")
        return out
    return [] if found == want else [(prefix.rstrip("."), found, want)]


def _atomic_write(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, delete=False, suffix=".tmp") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)
