import math

import pytest
import torch

import datatrace as dt
from datatrace.projection import TILE_ROWS, RandomProjector


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_same_seed_same_projection_other_seed_different(kind):
    x = torch.randn(7, 1000)
    a = RandomProjector(1000, 64, kind=kind, seed=3)(x)
    b = RandomProjector(1000, 64, kind=kind, seed=3)(x)
    c = RandomProjector(1000, 64, kind=kind, seed=4)(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_matrix_does_not_depend_on_block_or_cache_size():
    big = RandomProjector(3 * TILE_ROWS + 5, 32, seed=1)
    small = RandomProjector(3 * TILE_ROWS + 5, 32, seed=1, block_bytes=1, cache_bytes=0)
    assert small.n_blocks == 4 and big.n_blocks == 1
    assert torch.equal(big.matrix(), small.matrix())
    x = torch.randn(5, 3 * TILE_ROWS + 5)
    torch.testing.assert_close(big(x), small(x))
    torch.testing.assert_close(small(x), x @ small.matrix())


def test_bounded_blocks_are_regenerated_not_cached():
    proj = RandomProjector(4 * TILE_ROWS, 16, block_bytes=1, cache_bytes=4 * 16 * TILE_ROWS)
    proj(torch.randn(2, 4 * TILE_ROWS))
    assert len(proj._cache) == 1  # only what fits cache_bytes is kept


def test_rademacher_entries_are_scaled_signs():
    r = RandomProjector(300, 50, seed=0).matrix()
    assert set(torch.unique(r * math.sqrt(50)).tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_inner_products_within_jl_bound(kind):
    m, dim, k = 40, 3000, 2048
    x = torch.nn.functional.normalize(torch.randn(m, dim, generator=torch.Generator().manual_seed(0)), dim=1)
    px = RandomProjector(dim, k, kind=kind, seed=0)(x)
    eps = math.sqrt(8 * math.log(m) / k)  # JL: k ≥ 8 ln(m) / ε² preserves all pairwise geometry to ±ε
    distortion = (px @ px.T - x @ x.T).abs().max()
    assert distortion <= eps, (float(distortion), eps)


def test_bad_shapes_are_refused():
    with pytest.raises(dt.InputError):
        RandomProjector(10, 0)
    with pytest.raises(dt.InputError, match=r"\(B, 10\)"):
        RandomProjector(10, 4)(torch.randn(3, 11))
    with pytest.raises(dt.UnknownOptionError):
        RandomProjector(10, 4, kind="sparse")
