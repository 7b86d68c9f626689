import numpy as np
import pytest
import torch

import datatrace as dt
from datatrace.benchmarks.recipes import fit_lbfgs, seeded
from datatrace.eval import removal_curve
from testable_tasks import blobs


def train_convex(data, seed):
    x, y = data.tensors()
    return fit_lbfgs(seeded(lambda: torch.nn.Linear(5, 3), seed), x, y, 1e-2)


@pytest.fixture(scope="module")
def setup():
    train, query, task = blobs(60), blobs(10, seed=1), dt.ClassificationTask()
    model = train_convex(dt.Data(train), 0)
    scores = dt.TRAK(model, task, verbose=False).fit(train).score(query)
    curve = removal_curve(scores, train_convex, train, query, task, ks=(3, 10), queries=6, verbose=False)
    return train, query, task, scores, curve


def test_removal_curve_matches_manual_retraining(setup):
    train, query, task, scores, curve = setup
    assert curve.top.shape == curve.random.shape == (6, 2) and curve.ks.tolist() == [3, 10]
    pos, q, k = 2, int(curve.queries[2]), 10
    keep = np.setdiff1d(np.arange(60), scores.topk(k)[1][q])
    seed = curve.metadata["train_seed"]
    with torch.no_grad():
        before = task.measurement(train_convex(dt.Data(train), seed), query).numpy()[q]
        after = task.measurement(train_convex(dt.Data(train).subset(keep), seed), query).numpy()[q]
    assert curve.base[pos] == pytest.approx(before, abs=1e-6)
    assert curve.top[pos, 1] == pytest.approx(after - before, abs=1e-5)


def test_removing_top_proponents_hurts_more_than_random_removal(setup):
    """TRAK on a convex model, 6 queries. Measured mean rise at k=10: top-10 +0.554, random +0.000."""
    *_, curve = setup
    summary = curve.summary()
    assert summary[1]["top"] - summary[1]["random"] >= 0.3
    assert summary[1]["top"] > summary[0]["top"] > 0  # removing more proponents hurts more
    assert "k=10" in str(curve)


@pytest.mark.parametrize("ks, match", [((0, 3), r"\[1, n_train\)"), ((60,), r"\[1, n_train\)"), ((58,), "classes")])
def test_bad_removal_sizes_are_refused(setup, ks, match):
    train, query, task, scores, _ = setup
    with pytest.raises(dt.InputError, match=match):
        removal_curve(scores, train_convex, train, query, task, ks=ks)


def test_scores_of_another_shape_are_refused(setup):
    train, query, task, scores, _ = setup
    with pytest.raises(dt.InputError, match=r"shape \(10, 59\)"):
        removal_curve(scores.values[:, :59], train_convex, train, query, task)
