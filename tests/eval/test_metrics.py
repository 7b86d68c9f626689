import numpy as np
import pytest

import datatrace as dt
from datatrace.eval import GroundTruth, bootstrap_ci, lds, spearman_columns


def test_spearman_hand_computed_with_ties():
    a = np.array([[1.0], [2.0], [2.0], [4.0]])
    b = np.array([[10.0], [30.0], [20.0], [40.0]])
    # ranks a: 1, 2.5, 2.5, 4; ranks b: 1, 3, 2, 4 → Pearson of the ranks
    ra, rb = np.array([1, 2.5, 2.5, 4]), np.array([1, 3, 2, 4])
    want = np.corrcoef(ra, rb)[0, 1]
    assert spearman_columns(a, b)[0] == pytest.approx(want)
    assert want == pytest.approx(0.9486832980505138)


def test_constant_column_is_undefined_not_zero():
    a = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    b = np.array([[3.0, 1.0], [2.0, 2.0], [1.0, 3.0]])
    r = spearman_columns(a, b)
    assert r[0] == pytest.approx(-1.0) and np.isnan(r[1])


def make_gt(seed=0, n_train=30, n_query=4, n_subsets=40):
    rng = np.random.default_rng(seed)
    masks = rng.random((n_subsets, n_train)) < 0.5
    true = rng.standard_normal((n_query, n_train))
    measurements = -(masks @ true.T)  # loss-like: proponents (positive true scores) lower it
    return GroundTruth(masks, measurements, np.arange(n_subsets)), true


def test_true_additive_scores_have_lds_one_and_negated_scores_minus_one():
    gt, true = make_gt()
    assert lds(true, gt).mean == pytest.approx(1.0)
    assert lds(-true, gt).mean == pytest.approx(-1.0)


def test_lds_reports_undefined_queries_and_averages_the_rest():
    gt, true = make_gt()
    scores = true.copy()
    scores[2] = 0.0  # constant prediction → undefined LDS for query 2
    res = lds(scores, gt)
    assert res.n_undefined == 1 and np.isnan(res.per_query[2])
    assert res.mean == pytest.approx(1.0)


def test_lds_accepts_scores_objects_and_streams_blocks():
    gt, true = make_gt()
    scores = dt.Scores.from_array(true + 0.5 * np.random.default_rng(1).standard_normal(true.shape))
    dense = lds(scores.values, gt)
    scores.query_chunk, scores.train_chunk = 3, 7
    streamed = lds(scores, gt)
    np.testing.assert_allclose(streamed.per_query, dense.per_query)
    assert streamed.ci[0] <= streamed.mean <= streamed.ci[1]
    assert "LDS" in str(streamed)


def test_lds_shape_mismatch_is_explained():
    gt, true = make_gt()
    with pytest.raises(dt.InputError, match="30 training examples but scores have 29"):
        lds(true[:, :29], gt)
    with pytest.raises(dt.InputError, match="3 queries but the ground truth has 4"):
        lds(true[:3], gt)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(0).random(50)
    lo, hi = bootstrap_ci(values, seed=3)
    assert (lo, hi) == bootstrap_ci(values, seed=3)
    assert lo < values.mean() < hi
    assert np.isnan(bootstrap_ci(np.array([np.nan]))[0])
