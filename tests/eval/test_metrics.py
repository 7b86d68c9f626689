import numpy as np
import pytest
import torch

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


def test_kendall_hand_computed_with_ties_and_constant_columns():
    a = np.array([[1.0, 1.0, 2.0], [2.0, 2.0, 2.0], [3.0, 2.0, 2.0], [4.0, 3.0, 2.0]])
    b = np.array([[1.0, 1.0, 1.0], [3.0, 2.0, 2.0], [2.0, 3.0, 3.0], [4.0, 4.0, 4.0]])
    tau = dt.eval.kendall_columns(a, b)
    # column 0: 5 concordant, 1 discordant pair of 6 → 4/6
    # column 1: a ties one pair; 5 concordant, 0 discordant → tau-b = 5 / sqrt((6 - 1) · 6)
    assert tau[0] == pytest.approx(4 / 6) and tau[1] == pytest.approx(5 / np.sqrt(30))
    assert np.isnan(tau[2])


def test_lds_with_kendall_is_one_for_true_scores_and_names_its_correlation():
    gt, true = make_gt()
    res = lds(true, gt, correlation="kendall")
    assert res.mean == pytest.approx(1.0) and res.metadata["correlation"] == "kendall"
    with pytest.raises(dt.UnknownOptionError, match="valid: kendall, spearman"):
        lds(true, gt, correlation="pearsonn")


def test_streaming_lds_over_query_batches_matches_the_whole_matrix():
    gt, true = make_gt(n_query=7)
    noisy = true + np.random.default_rng(2).standard_normal(true.shape)
    whole = lds(noisy, gt)
    metric = dt.eval.LDS(gt)
    metric.update(noisy[:3]).update(noisy[3:5])  # consecutive batches
    partial = metric.compute()
    assert partial.metadata["n_queries"] == 5 and np.isnan(partial.per_query[5:]).all()
    metric.update(noisy[[6, 5]], queries=[6, 5])  # any order, explicit indices
    np.testing.assert_allclose(metric.compute().per_query, whole.per_query)
    assert metric.compute().mean == pytest.approx(whole.mean)
    with pytest.raises(dt.InputError, match="compute"):
        dt.eval.LDS(gt).compute()
    with pytest.raises(dt.InputError, match="queries 6..7"):
        dt.eval.LDS(gt).update(noisy[:2], queries=[6, 7])


def seeded_runs(runs):
    """Ground truth whose per-seed measurements are ``runs`` (n_subsets, n_seeds, n_query)."""
    masks = np.zeros((runs.shape[0], 3), dtype=bool)
    return GroundTruth(masks, runs.mean(1), np.zeros(runs.shape[:2]), run_measurements=runs)


def test_noise_ceiling_hand_computed():
    runs = np.zeros((4, 2, 3))
    runs[:, 0, 0], runs[:, 1, 0] = [1, 2, 3, 4], [1, 2, 4, 3]  # Spearman 0.8
    runs[:, 0, 1], runs[:, 1, 1] = [1, 2, 3, 4], [4, 3, 2, 1]  # Spearman −1 → ceiling 0
    runs[:, 0, 2], runs[:, 1, 2] = [1, 2, 3, 4], [5, 5, 5, 5]  # constant → undefined
    ceiling = dt.eval.noise_ceiling(seeded_runs(runs))
    r = 2 * np.sin(np.pi * 0.8 / 6)  # Spearman 0.8 as a Pearson correlation (bivariate normal)
    best = np.sqrt(2 * r / (1 + r))  # Spearman–Brown: the expected measurement against the mean of 2 seeds
    assert ceiling.per_query[0] == pytest.approx(6 / np.pi * np.arcsin(best / 2)) and ceiling.per_query[1] == 0
    assert np.isnan(ceiling.per_query[2]) and ceiling.n_undefined == 1
    assert ceiling.seed_to_seed == pytest.approx((0.8 - 1) / 2) and ceiling.seeds_per_subset == 2
    with pytest.raises(dt.InputError, match="seeds_per_subset ≥ 2"):
        dt.eval.noise_ceiling(make_gt()[0])


@pytest.mark.parametrize("correlation", ["spearman", "kendall"])
@pytest.mark.parametrize("n_seeds, noise", [(2, 4.0), (3, 2.0)])
def test_noise_ceiling_predicts_the_lds_of_the_expected_measurement(correlation, n_seeds, noise):
    """Additive signal + independent seed noise: the ceiling estimated from the seeds matches the LDS of the signal.

    Measured differences: at most 0.005 (Spearman) and 0.006 (Kendall) on seeds 0 and 1.
    """
    rng = np.random.default_rng(0)
    masks = rng.random((300, 40)) < 0.5
    true = rng.standard_normal((60, 40))
    signal = -(masks @ true.T)
    runs = signal[:, None, :] + noise * rng.standard_normal((300, n_seeds, 60))
    gt = GroundTruth(masks, runs.mean(1), np.zeros((300, n_seeds)), run_measurements=runs)
    ceiling = dt.eval.noise_ceiling(gt, correlation)
    best = lds(true, gt, correlation=correlation)
    assert 0.3 < best.mean < 0.95  # a regime where the noise matters
    assert ceiling.mean == pytest.approx(best.mean, abs=0.02)
    assert ceiling.seed_to_seed < ceiling.mean


def loo_truth(effects):
    return dt.eval.LOOGroundTruth(np.array([0, 2, 3, 5]), effects, np.zeros(effects.shape[1]), 6, 0)


def test_loo_correlation_pearson_and_spearman_by_hand():
    effects = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [10.0, 0.0]])  # query 1 never moves: undefined
    loo = loo_truth(effects)
    scores = np.zeros((2, 6))
    scores[0, [0, 2, 3, 5]] = [1.0, 2.0, 3.0, 4.0]
    scores[1, [0, 2, 3, 5]] = [4.0, 1.0, 2.0, 3.0]
    pearson = dt.eval.loo_correlation(scores, loo)
    assert pearson.per_query[0] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1, 2, 3, 10])[0, 1])
    assert np.isnan(pearson.per_query[1]) and pearson.n_undefined == 1 and "LOO pearson" in str(pearson)
    assert dt.eval.loo_correlation(scores, loo, "spearman").mean == pytest.approx(1.0)
    streamed = dt.Scores.from_array(scores)
    streamed.train_chunk = 4  # the removed columns straddle two blocks
    assert dt.eval.loo_correlation(streamed, loo).mean == pytest.approx(pearson.mean)


def test_retrieval_hand_computed_with_ties_and_queries_without_planted_examples():
    scores = np.array(
        [
            [0.9, 0.5, 0.5, 0.1, 0.7],
            [0.9, 0.5, 0.5, 0.1, 0.7],
            [1.0, 1.0, 1.0, 1.0, 1.0],
            [0.0, 1.0, 2.0, 3.0, 4.0],
        ]
    )
    relevant = [[1, 3], [0], [2], []]
    res = dt.eval.retrieval(scores, relevant, ks=(1, 4, 5))
    # query 0: example 1 ties with example 2 for ranks 3–4 → 3.5; example 3 is last → 5
    np.testing.assert_allclose(res.per_query_recall[0], [0.0, 0.5, 1.0])
    assert res.per_query_rr[0] == pytest.approx(1 / 3.5) and res.per_query_rr[1] == 1.0
    assert res.per_query_rr[2] == pytest.approx(1 / 3)  # all tied: the average rank, not the best one
    assert np.isnan(res.per_query_rr[3]) and res.n_undefined == 1
    assert res.mrr == pytest.approx((1 / 3.5 + 1 + 1 / 3) / 3)
    assert res.recall[1] == pytest.approx(1 / 3) and res.recall[5] == pytest.approx(1.0)
    boolean = np.zeros((4, 5), dtype=bool)
    for q, rel in enumerate(relevant):
        boolean[q, rel] = True
    assert dt.eval.retrieval(scores, boolean, ks=(1, 4, 5)).mrr == pytest.approx(res.mrr)
    with pytest.raises(dt.InputError, match=r"in \[0, 5\)"):
        dt.eval.retrieval(scores, [[7], [], [], []])


def test_mislabel_auc_and_detection_curve_by_hand():
    influence = np.array([3.0, 1.0, 2.0, 2.0, 0.0])
    flipped = np.array([True, False, True, False, False])
    res = dt.eval.mislabel_detection(influence, flipped)
    # flipped 3.0 beats all 3 clean; flipped 2.0 beats 1.0 and 0.0 and ties 2.0 → (3 + 2.5) / 6
    assert res.auc == pytest.approx(5.5 / 6)
    # inspect 3.0 (flipped), then the tied pair (2.0, 2.0) in random order: half a flipped example expected at k=2
    np.testing.assert_allclose(res.found, [0, 0.5, 0.75, 1, 1, 1])
    np.testing.assert_allclose(res.inspected, np.arange(6) / 5)
    assert res.found_at(0.3) == pytest.approx(0.625) and "AUC 0.917" in str(res)
    with pytest.raises(dt.InputError, match="both flipped and clean"):
        dt.eval.mislabel_detection(influence, np.zeros(5, dtype=bool))
    with pytest.raises(dt.NonFiniteError, match="example 1"):
        dt.eval.mislabel_detection(np.array([1.0, np.nan]), np.array([True, False]))


def test_flip_labels_changes_exactly_the_requested_fraction():
    y = torch.arange(100) % 4
    noisy, flipped = dt.eval.flip_labels(y, 0.1, seed=3)
    assert isinstance(noisy, torch.Tensor) and flipped.sum() == 10
    assert (noisy[flipped] != y[flipped]).all() and (noisy[~flipped] == y[~flipped]).all()
    assert int(noisy.max()) <= 3
    again, _ = dt.eval.flip_labels(y, 0.1, seed=3)
    assert torch.equal(noisy, again)
    for fraction in (0.0, 1.0, -0.2):
        with pytest.raises(dt.InputError, match="fraction"):
            dt.eval.flip_labels(y, fraction)
