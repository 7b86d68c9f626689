import math
import warnings

import numpy as np
import pytest

import datatrace as dt
from datatrace.stride import backproject, design, recover


def planted(n=2000, k=5, c=4.0, d=10, queries=6, noise=0.01, offset=0.3, seed=0):
    """Responses Y = M W + offset + noise with k-sparse columns of W, on K = ⌈c·k·ln(n/k)⌉ subsets."""
    K = math.ceil(c * k * math.log(n / k))
    m = design(n, K, d, seed=seed)
    rng = np.random.default_rng(seed)
    W = np.zeros((n, queries))
    for q in range(queries):
        W[rng.choice(n, k, replace=False), q] = rng.choice([-1, 1], k) * rng.uniform(1, 2, k)
    Y = m.to_scipy() @ W + offset + noise * rng.standard_normal((K, queries))
    return m, Y, W


def support_scores(got, want):
    hit = ((got != 0) & (want != 0)).sum()
    return hit / max((got != 0).sum(), 1), hit / (want != 0).sum()


@pytest.mark.parametrize("solver", ["fista", "cd", "omp"])
def test_planted_sparse_influence_is_recovered_with_k_log_n_over_k_subsets(solver):
    """K = ⌈4·k·ln(n/k)⌉ = 120 subsets for n = 2000, k = 5: the support is recovered exactly."""
    m, Y, W = planted()
    got = recover(m, Y, solver=solver, alpha=0.1, verbose=False).toarray()
    precision, recall = support_scores(got, W)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert np.sign(got[W != 0]).tolist() == np.sign(W[W != 0]).tolist()


def test_auto_solver_is_coordinate_descent_on_cpu_until_its_dense_coefficients_get_large(monkeypatch):
    m, Y, _ = planted(seed=2)
    _, info = recover(m, Y, alpha=0.1, verbose=False, return_info=True)
    assert info.solver == "cd"
    monkeypatch.setattr("datatrace.stride.recovery.AUTO_CD_BYTES", 8 * m.n_train * Y.shape[1] - 1)
    _, info = recover(m, Y, alpha=0.1, verbose=False, return_info=True)
    assert info.solver == "fista"


def test_fista_cd_and_omp_agree():
    m, Y, _ = planted(seed=1)
    fista, info = recover(m, Y, solver="fista", alpha=0.05, tol=1e-7, max_iter=20000, verbose=False, return_info=True)
    cd = recover(m, Y, solver="cd", alpha=0.05, tol=1e-7, max_iter=20000, verbose=False)
    omp = recover(m, Y, solver="omp", alpha=0.05, verbose=False)
    assert info.converged.all()
    np.testing.assert_allclose(fista.toarray(), cd.toarray(), atol=1e-3 * abs(cd).max())
    assert np.array_equal(fista.toarray() != 0, omp.toarray() != 0)


def test_solution_satisfies_the_lasso_optimality_conditions():
    """KKT: Aᵀr = λ·sign(w) on the support and |Aᵀr| ≤ λ elsewhere, A the column-centred membership matrix."""
    m, Y, _ = planted(n=300, k=4, seed=2, noise=0.1)
    W, info = recover(m, Y, alpha=0.2, tol=1e-8, max_iter=50000, verbose=False, return_info=True)
    A = m.to_scipy().toarray()
    A = A - A.mean(0)
    W = W.toarray()
    for q in range(Y.shape[1]):
        corr = A.T @ (Y[:, q] - Y[:, q].mean() - A @ W[:, q])
        lam = info.lam[q]
        on = W[:, q] != 0
        np.testing.assert_allclose(corr[on], lam * np.sign(W[on, q]), rtol=1e-3)
        assert np.abs(corr[~on]).max() <= lam * (1 + 1e-3)
        assert lam == pytest.approx(0.2 * np.abs(A.T @ (Y[:, q] - Y[:, q].mean())).max(), rel=1e-5)


def test_intercept_absorbs_a_response_shared_by_all_subsets():
    m, Y, _ = planted(queries=3)
    W, info = recover(m, Y, verbose=False, return_info=True)
    shifted, info2 = recover(m, Y + 5.0, verbose=False, return_info=True)
    np.testing.assert_allclose(W.toarray(), shifted.toarray(), atol=1e-4)
    np.testing.assert_allclose(info2.intercept - info.intercept, 5.0, atol=1e-3)
    uncentred = recover(m, Y + 5.0, fit_intercept=False, verbose=False).toarray()
    assert (uncentred != 0).sum() > (W.toarray() != 0).sum()


def test_per_example_design_reduces_to_soft_thresholded_responses():
    """K = n, d = 1: M is a permutation, so ŵ_j = soft(y_{k(j)} − b, λ) with the intercept b solving
    Σ_k clip(y_k − b, −λ, λ) = 0 (found here by bisection)."""
    n = 50
    m = design(n, n, 1, seed=0)
    Y = np.random.default_rng(0).standard_normal((n, 2))
    W, info = recover(m, Y, alpha=0.3, tol=1e-9, verbose=False, return_info=True)
    for q in range(Y.shape[1]):
        y, lam = Y[:, q], info.lam[q]
        lo, hi = y.min(), y.max()
        for _ in range(200):
            b = (lo + hi) / 2
            lo, hi = (b, hi) if np.clip(y - b, -lam, lam).sum() > 0 else (lo, b)
        mine = y[m.subsets[:, 0].astype(int)] - b
        want = np.sign(mine) * np.maximum(np.abs(mine) - lam, 0)
        np.testing.assert_allclose(W.toarray()[:, q], want, atol=1e-5)
        assert info.intercept[q] == pytest.approx(b, abs=1e-5)


def test_backprojection_is_each_examples_mean_response():
    m, Y, _ = planted(n=100, k=3, queries=2)
    got = backproject(m, Y)
    yc = Y - Y.mean(0)
    want = np.stack([yc[row.astype(int)].mean(0) for row in m.subsets])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_heldout_selection_picks_alpha_without_any_attribution_ground_truth():
    """The chosen alpha minimises the held-out prediction error, and its largest |ŵ| are the planted examples.

    (Prediction-optimal λ is known to be smaller than the support-exact one, so small spurious coefficients are
    expected; what matters for attribution is the ranking.)"""
    m, Y, W = planted(noise=0.05)
    got, info = recover(m, Y, alpha="heldout", verbose=False, return_info=True)
    assert info.heldout_error.shape == (Y.shape[1], len(info.heldout_alphas))
    np.testing.assert_array_equal(info.alpha, np.asarray(info.heldout_alphas)[info.heldout_error.argmin(1)])
    got = got.toarray()
    for q in range(Y.shape[1]):
        top = np.argsort(-np.abs(got[:, q]))[: (W[:, q] != 0).sum()]
        assert set(top) == set(np.flatnonzero(W[:, q]))


def test_same_seed_same_result():
    m, Y, _ = planted(n=500, k=3, queries=2, noise=0.3)
    a = recover(m, Y, alpha="heldout", seed=4, verbose=False)
    b = recover(m, Y, alpha="heldout", seed=4, verbose=False)
    assert (a != b).nnz == 0


def test_alpha_at_least_one_gives_zero_and_warns():
    m, Y, _ = planted(queries=2)
    with pytest.warns(dt.DatatraceWarning, match="every ŵ is 0"):
        assert recover(m, Y, alpha=1.0, verbose=False).nnz == 0


def test_reports_non_convergence_with_gap_and_iterations():
    m, Y, _ = planted(noise=0.5)
    with pytest.warns(dt.DatatraceWarning, match=r"did not reach .* largest relative gap .* after \d+ iterations"):
        _, info = recover(m, Y, alpha=0.01, max_iter=2, verbose=False, return_info=True)
    assert not info.converged.all() and (info.gap > 0).all()


def test_absolute_lambda():
    m, Y, _ = planted(queries=2)
    W, info = recover(m, Y, lam=[0.5, 1.0], verbose=False, return_info=True)
    np.testing.assert_allclose(info.lam, [0.5, 1.0])
    np.testing.assert_allclose(info.alpha, info.lam / info.lam_max)


def test_one_dimensional_responses():
    m, Y, _ = planted(queries=1)
    assert recover(m, Y[:, 0], verbose=False).shape == (m.n_train, 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": 0.0}, dt.InputError, "λ ≤ 0"),
        ({"alpha": -1}, dt.InputError, "alpha must be a number > 0"),
        ({"lam": 0.0}, dt.InputError, "lam must be > 0"),
        ({"alpha": "best"}, dt.UnknownOptionError, "alpha"),
        ({"solver": "lars"}, dt.UnknownOptionError, "Unknown solver 'lars'"),
        ({"alpha": "heldout", "lam": 1.0}, dt.InputError, "not both"),
        ({"heldout": 1.5, "alpha": "heldout"}, dt.InputError, "heldout must be a fraction"),
    ],
)
def test_bad_options(kwargs, error, match):
    m, Y, _ = planted(queries=1)
    with pytest.raises(error, match=match):
        recover(m, Y, verbose=False, **kwargs)


def test_bad_responses():
    m, Y, _ = planted(queries=2)
    with pytest.raises(dt.InputError, match=r"shape \(n_subsets, n_queries\)"):
        recover(m, Y.T, verbose=False)
    Y[3, 1] = np.nan
    with pytest.raises(dt.NonFiniteError, match="query 1"):
        recover(m, Y, verbose=False)


def test_user_matrix_is_accepted():
    m, Y, _ = planted(n=200, k=3, queries=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = recover(m, Y, verbose=False)
        b = recover(m.to_scipy(), Y, verbose=False)
    np.testing.assert_allclose(a.toarray(), b.toarray(), atol=1e-6)
