import numpy as np
import pytest

import datatrace as dt
from datatrace.apps.select import select, select_oracle, select_random


def _streamed(values: np.ndarray) -> dt.Scores:
    """Scores over a dense matrix but with tiny blocks, so that every streaming path crosses block borders."""
    scores = dt.Scores.from_array(values)
    scores.query_chunk, scores.train_chunk = 2, 3
    return scores


@pytest.fixture
def values():
    return np.random.default_rng(0).normal(size=(5, 17)).astype(np.float32)


@pytest.mark.parametrize("strategy,aggregate", [("sum", np.sum), ("max", np.max)])
def test_sum_and_max_match_brute_force(values, strategy, aggregate):
    chosen = select(_streamed(values), 6, strategy)
    expected = np.argsort(-aggregate(values.astype(np.float64), axis=0), kind="stable")[:6]
    np.testing.assert_array_equal(chosen.indices, expected)
    np.testing.assert_allclose(chosen.utility, aggregate(values, axis=0)[expected], rtol=1e-6)
    assert chosen.mask.sum() == 6 and chosen.mask[expected].all()


def test_balanced_is_round_robin_over_queries(values):
    """Brute force: each query in turn takes its best proponent not yet taken."""
    budget = 11
    taken, expected = set(), []
    order = np.argsort(-values, axis=1, kind="stable")
    pos = np.zeros(len(values), dtype=int)
    while len(expected) < budget:
        for q in range(len(values)):
            while order[q, pos[q]] in taken:
                pos[q] += 1
            taken.add(order[q, pos[q]])
            expected.append(order[q, pos[q]])
            if len(expected) == budget:
                break
    np.testing.assert_array_equal(select(_streamed(values), budget, "balanced").indices, expected)


def test_balanced_gives_each_query_its_top_example_whatever_the_scale():
    values = np.array([[100.0, 90.0, 80.0, 0.0], [0.0, 0.0, 0.1, 0.2]], dtype=np.float32)
    assert set(select(values, 2, "sum").indices) == {0, 1}
    assert set(select(values, 2, "balanced").indices) == {0, 3}


def test_balanced_looks_deeper_when_queries_agree():
    values = np.tile(np.arange(10, dtype=np.float32), (4, 1))  # every query ranks the pool identically
    np.testing.assert_array_equal(select(values, 7, "balanced").indices, [9, 8, 7, 6, 5, 4, 3])


def test_exclude_and_budget_errors(values):
    chosen = select(values, 5, "max", exclude=[0, 1, 2])
    assert not set(chosen.indices) & {0, 1, 2}
    assert not set(select(values, 5, "balanced", exclude=[3]).indices) & {3}
    with pytest.raises(dt.InputError, match="budget must be an integer in \\[1, 17\\]"):
        select(values, 18)
    with pytest.raises(dt.InputError, match="\\[1, 14\\]"):
        select(values, 15, exclude=[0, 1, 2])
    with pytest.raises(dt.InputError, match="budget"):
        select(values, 0)
    with pytest.raises(dt.InputError, match="outside the pool"):
        select(values, 2, exclude=[17])
    with pytest.raises(dt.UnknownOptionError, match="Did you mean 'balanced'"):
        select(values, 2, "balance")
    values[0, 0] = np.nan
    with pytest.raises(dt.NonFiniteError):
        select(values, 2)


def test_baselines():
    a, b = select_random(50, 10, seed=3), select_random(50, 10, seed=3)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert len(set(a.indices)) == 10 and not np.array_equal(a.indices, select_random(50, 10, seed=4).indices)
    oracle = select_oracle([0.0, 1.0, 1.0, 0.5], 3)
    np.testing.assert_array_equal(oracle.indices, [1, 2, 3])
    with pytest.raises(dt.InputError, match="budget"):
        select_random(5, 6)
    with pytest.raises(dt.InputError, match="budget"):
        select_oracle([1.0, 2.0], 3)
