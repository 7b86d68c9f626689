"""Leave-one-out ground truth against brute force and the influence-function theory it should agree with."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import datatrace as dt
from datatrace.benchmarks import get
from datatrace.benchmarks.recipes import fit_lbfgs, seeded
from datatrace.eval import LOOGroundTruth, loo_correlation, loo_retraining
from testable_tasks import blobs

L2 = 1e-2
FIXTURE = Path(__file__).parents[1] / "fixtures" / "digits-logreg-loo"


def train_convex(data, seed):
    """Strongly convex: L2 logistic regression on 5 features, 3 classes, trained to convergence."""
    x, y = data.tensors()
    return fit_lbfgs(seeded(lambda: torch.nn.Linear(5, 3), seed), x, y, L2)


@pytest.fixture(scope="module")
def convex_loo():
    train, query = blobs(40), blobs(5, seed=1)
    task = dt.ClassificationTask()
    loo = loo_retraining(train_convex, train, query, task, removed=40, verbose=False)
    return train, query, task, loo


def explicit_influence(model, train, query):
    """(1/n) ∇m(q)ᵀ H⁻¹ ∇L(i) with the exact Hessian of the regularised objective, in float64."""
    model = model.double()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflatten(v):
        sizes = [s.numel() for s in shapes]
        return {n: t.reshape(s) for n, t, s in zip(names, torch.split(v, sizes), shapes)}

    def losses(v, x, y):
        return F.cross_entropy(functional_call(model, unflatten(v), (x.double(),)), y, reduction="none")

    (xt, yt), (xq, yq) = train, query
    hessian = torch.autograd.functional.hessian(lambda v: losses(v, xt, yt).mean() + 0.5 * L2 * (v**2).sum(), theta)
    jac_train = torch.autograd.functional.jacobian(lambda v: losses(v, xt, yt), theta)
    jac_query = torch.autograd.functional.jacobian(lambda v: losses(v, xq, yq), theta)
    return (jac_query @ torch.linalg.solve(hessian, jac_train.T) / len(xt)).numpy()


def test_loo_effects_match_manual_retraining(convex_loo):
    train, query, task, loo = convex_loo
    assert loo.effects.shape == (40, 5) and np.array_equal(loo.removed, np.arange(40))
    j = 7
    keep = np.delete(np.arange(40), loo.removed[j])
    with torch.no_grad():
        full = task.measurement(train_convex(dt.Data(train), loo.seed), query).double()
        without = task.measurement(train_convex(dt.Data(train).subset(keep), loo.seed), query).double()
    np.testing.assert_allclose(loo.base, full.numpy(), rtol=1e-6)
    np.testing.assert_allclose(loo.effects[j], (without - full).numpy(), atol=1e-6)


def test_explicit_influence_predicts_leave_one_out(convex_loo):
    """Measured: Pearson 0.949, Spearman 0.993 (n = 40, so some removals are far from infinitesimal)."""
    train, query, task, loo = convex_loo
    influence = explicit_influence(train_convex(dt.Data(train), loo.seed), train, query)
    assert loo_correlation(influence, loo).mean >= 0.9
    assert loo_correlation(influence, loo, "spearman").mean >= 0.97
    assert loo_correlation(-influence, loo).mean <= -0.9  # the sign convention of the effects


def test_gradient_attributors_correlate_with_leave_one_out(convex_loo):
    """Measured Pearson: TRAK 0.843, Grad-Dot 0.514."""
    train, query, task, loo = convex_loo
    model = train_convex(dt.Data(train), loo.seed)
    trak = dt.TRAK(model, task, verbose=False).fit(train).score(query)
    graddot = dt.GradDot(model, task, verbose=False).fit(train).score(query)
    assert loo_correlation(trak, loo).mean >= 0.75
    assert loo_correlation(graddot, loo).mean >= 0.35


def test_loo_store_is_resumable_and_loadable(tmp_path):
    train, query, task = blobs(20), blobs(3, seed=1), dt.ClassificationTask()
    loo = loo_retraining(train_convex, train, query, task, removed=[3, 11], cache_dir=tmp_path, verbose=False)
    loaded = LOOGroundTruth.load(tmp_path)
    np.testing.assert_array_equal(loaded.effects, loo.effects)
    assert loaded.removed.tolist() == [3, 11] and loaded.n_train == 20
    with pytest.raises(dt.StoreMismatchError, match="loo_retraining"):
        dt.eval.GroundTruth.load(tmp_path)


@pytest.mark.parametrize(
    "removed, match",
    [(0, "between 1 and n_train"), ([1, 1], "distinct"), ([25], r"in \[0, 20\)"), ([], "non-empty")],
)
def test_bad_removed_sets_are_refused(removed, match):
    with pytest.raises(dt.InputError, match=match):
        loo_retraining(train_convex, blobs(20), blobs(3), dt.ClassificationTask(), removed=removed)


def test_digits_logreg_fixture_matches_the_benchmark():
    """The shipped fixture was made with the current data and recipe (regenerate: benchmarks/make_fixtures.py)."""
    loo = LOOGroundTruth.load(FIXTURE)
    bench = get("digits-logreg")
    train, query = bench.data()
    assert loo.metadata["train_fingerprint"] == train.fingerprint()
    assert loo.metadata["query_fingerprint"] == query.fingerprint()
    assert loo.metadata["train_fn"] == bench.train_fn.__qualname__ and loo.metadata["task"] == repr(bench.task)
    assert loo.effects.shape == (100, 100) and len(np.unique(loo.removed)) == 100


def test_digits_logreg_fixture_is_reproduced_by_retraining():
    loo = LOOGroundTruth.load(FIXTURE)
    bench = get("digits-logreg")
    train, query = bench.data()
    j = 0
    keep = np.delete(np.arange(len(train)), loo.removed[j])
    with torch.no_grad():
        without = bench.task.measurement(bench.train_fn(train.subset(keep), loo.seed), query.tensors()).double()
    np.testing.assert_allclose(loo.base + loo.effects[j], without.numpy(), atol=1e-5)


def test_trak_correlates_with_leave_one_out_on_digits_logreg():
    """LOO correlation of TRAK against the fixture (100 removals × 100 queries). Measured: Pearson 0.842."""
    loo = LOOGroundTruth.load(FIXTURE)
    bench = get("digits-logreg")
    train, query = bench.data()
    scores = dt.TRAK(bench.model(loo.seed), bench.task, verbose=False).fit(train).score(query)
    assert loo_correlation(scores, loo).mean >= 0.75
