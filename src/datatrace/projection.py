"""Seeded Johnson–Lindenstrauss random projections in pure PyTorch.

The projection matrix R (in_dim × out_dim) is never built whole unless it fits ``cache_bytes``: it is cut into tiles
of ``TILE_ROWS`` rows, tile t generated from its own generator seeded with ``(seed, t)``, and tiles are grouped into
blocks of at most ``block_bytes`` that are regenerated on demand. R is therefore the same whatever the batch size,
block size or cache size (products over different block sizes differ only by float rounding). Entries are ±1
(Rademacher) or N(0, 1), scaled by 1/√out_dim so that E‖xR‖² = ‖x‖².
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._utils import derive_seed
from .errors import InputError, check_choice

KINDS = ("rademacher", "gaussian")
#: Rows of R drawn from one generator; the unit that makes R independent of block and cache sizes.
TILE_ROWS = 256


class RandomProjector:
    """Project rows of ``(B, in_dim)`` matrices to ``out_dim`` dimensions with a seeded JL matrix.

    Args:
        in_dim: input dimension P.
        out_dim: output dimension k.
        kind: ``"rademacher"`` (±1 entries) or ``"gaussian"``.
        seed: the matrix is a pure function of ``(in_dim, out_dim, kind, seed)``.
        block_bytes: largest block of R materialised at once (at least one tile of ``TILE_ROWS`` rows).
        cache_bytes: blocks are kept in memory (on the input's device) while their total stays under this; beyond
            it they are regenerated on every call. Caching never changes the result.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kind: str = "rademacher",
        seed: int = 0,
        block_bytes: int = 64 * 2**20,
        cache_bytes: int = 512 * 2**20,
    ):
        if in_dim < 1 or out_dim < 1:
            raise InputError(f"Projection dimensions must be positive, got in_dim={in_dim}, out_dim={out_dim}.")
        self.in_dim, self.out_dim, self.seed = in_dim, out_dim, seed
        self.kind = check_choice("projection kind", kind, KINDS)
        self.block_rows = TILE_ROWS * max(1, block_bytes // (4 * out_dim * TILE_ROWS))
        self.n_blocks = math.ceil(in_dim / self.block_rows)
        self.cache_blocks = cache_bytes // (4 * out_dim * self.block_rows)
        self._cache: dict[tuple[int, torch.device], Tensor] = {}

    def block(self, b: int) -> Tensor:
        """Rows ``b·block_rows : (b+1)·block_rows`` of R (already scaled), float32 on the CPU."""
        lo = b * self.block_rows
        hi = min(lo + self.block_rows, self.in_dim)
        return torch.cat(
            [self._tile(t, min(TILE_ROWS, hi - t * TILE_ROWS)) for t in range(lo // TILE_ROWS, -(-hi // TILE_ROWS))]
        )

    def _tile(self, t: int, rows: int) -> Tensor:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "projection-tile", t))
        if self.kind == "gaussian":
            r = torch.randn(rows, self.out_dim, generator=gen)
        else:
            r = torch.randint(0, 2, (rows, self.out_dim), generator=gen, dtype=torch.int8).float().mul_(2).sub_(1)
        return r.mul_(1.0 / math.sqrt(self.out_dim))

    def _device_block(self, b: int, device: torch.device) -> Tensor:
        key = (b, device)
        if key in self._cache:
            return self._cache[key]
        r = self.block(b).to(device)
        if b < self.cache_blocks:
            self._cache[key] = r
        return r

    def __call__(self, x: Tensor) -> Tensor:
        """``x @ R`` for ``x`` of shape ``(B, in_dim)``; float32 result of shape ``(B, out_dim)``."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise InputError(f"Projector expects (B, {self.in_dim}) inputs, got {tuple(x.shape)}.")
        x = x.float()
        out = torch.zeros(x.shape[0], self.out_dim, device=x.device)
        for b in range(self.n_blocks):
            lo = b * self.block_rows
            out.addmm_(x[:, lo : lo + self.block_rows], self._device_block(b, x.device))
        return out

    def matrix(self) -> Tensor:
        """The whole projection matrix (for tests and small problems only)."""
        return torch.cat([self.block(b) for b in range(self.n_blocks)])
