import numpy as np
import pytest
import scipy.sparse
import torch

import datatrace as dt
from datatrace.stride import Design, auto_size, design


@pytest.mark.parametrize(("n", "k", "d"), [(1000, 1000, 10), (100, 100, 10), (500, 20, 10), (50, 10, 10), (7, 3, 2)])
def test_every_example_joins_d_distinct_subsets_and_sizes_are_balanced(n, k, d):
    m = design(n, k, d, seed=3)
    assert m.subsets.shape == (n, d)
    rows = np.sort(m.subsets, axis=1)
    assert (rows[:, 1:] > rows[:, :-1]).all()  # distinct within every example
    assert m.subsets.min() >= 0 and m.subsets.max() < k
    sizes = m.sizes()
    assert sizes.sum() == n * d and sizes.max() - sizes.min() <= 1
    assert m.balance()["min"] == (n * d) // k


def test_seeded_and_compact():
    a, b, c = design(300, 100, 5, seed=1), design(300, 100, 5, seed=1), design(300, 100, 5, seed=2)
    assert np.array_equal(a.subsets, b.subsets) and not np.array_equal(a.subsets, c.subsets)
    assert a.subsets.dtype == np.int16


def test_int32_beyond_int16_range():
    with pytest.warns(dt.DatatraceWarning, match="empty"):
        assert design(100, 40_000, 2).subsets.dtype == np.int32


def test_sparse_views_agree_with_the_index_form():
    m = design(60, 12, 3, seed=0)
    dense = np.zeros(m.shape)
    for j, row in enumerate(m.subsets):
        dense[row, j] = 1
    assert isinstance(m.to_scipy(), scipy.sparse.csr_matrix)
    np.testing.assert_array_equal(m.to_scipy().toarray(), dense)
    np.testing.assert_array_equal(m.to_torch().to_dense().numpy(), dense)
    indptr, members = m.member_lists()
    for k in range(m.n_subsets):
        np.testing.assert_array_equal(members[indptr[k] : indptr[k + 1]], np.flatnonzero(dense[k]))
        np.testing.assert_array_equal(m.members(k), np.flatnonzero(dense[k]))
    for matrix in (dense, m.to_scipy(), torch.as_tensor(dense), m.to_torch()):
        np.testing.assert_array_equal(Design.from_matrix(matrix).subsets, m.subsets)


def test_k_equal_n_and_degree_one_gives_one_example_per_subset():
    m = design(200, 200, 1, seed=0)
    assert np.array_equal(np.sort(m.subsets[:, 0]), np.arange(200))


def test_auto_size_rule():
    assert auto_size(100_000) == (1000, 10)
    assert auto_size(1000) == (1000, 10)
    assert auto_size(100) == (100, 10)
    assert auto_size(8) == (8, 2)
    k, d = auto_size(1)
    assert (k, d) == (1, 1)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((100, 5, 10), "degree d=10 exceeds n_subsets K=5"),
        ((100, 10, 0), "degree must be a positive int"),
        ((0, 10, 2), "n_train must be a positive int"),
        ((100, 2.5, 1), "n_subsets must be a positive int"),
    ],
)
def test_bad_input(args, match):
    with pytest.raises(dt.InputError, match=match):
        design(*args)


def test_warns_with_the_smallest_subset_size_when_subsets_are_empty():
    with pytest.warns(dt.DatatraceWarning, match=r"30 subsets are empty \(smallest subset size 0\)"):
        design(10, 50, 2)


def test_from_matrix_refuses_irregular_or_non_binary_matrices():
    with pytest.raises(dt.InputError, match="same number of subsets"):
        Design.from_matrix(np.array([[1, 1], [0, 1]]))
    with pytest.raises(dt.InputError, match="zeros and ones"):
        Design.from_matrix(np.array([[2, 1], [0, 1]]))
