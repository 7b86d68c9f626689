import numpy as np
import pytest
import torch

import datatrace as dt
from datatrace.eval import subset_masks, subset_retraining
from testable_tasks import blobs, fit, mlp


def train_fn(data, seed):
    x, y = data.tensors()
    return fit(mlp(seed=seed), x, y, steps=30)


def test_masks_have_exact_size_and_are_seeded():
    masks = subset_masks(20, 5, 0.3, seed=1)
    assert masks.shape == (5, 20) and (masks.sum(1) == 6).all()
    assert np.array_equal(masks, subset_masks(20, 5, 0.3, seed=1))
    assert not np.array_equal(masks, subset_masks(20, 5, 0.3, seed=2))


def test_ground_truth_matches_manual_retraining_and_is_cached(tmp_path):
    train, query = blobs(30), blobs(4, seed=1)
    task = dt.ClassificationTask()
    gt = subset_retraining(train_fn, train, query, task, n_subsets=3, seed=0, cache_dir=tmp_path, verbose=False)
    assert gt.masks.shape == (3, 30) and gt.measurements.shape == (3, 4)
    s = 1
    model = train_fn(dt.Data(train).subset(np.flatnonzero(gt.masks[s])), int(gt.seeds[s, 0]))
    with torch.no_grad():
        np.testing.assert_allclose(gt.measurements[s], task.measurement(model, query).numpy(), rtol=1e-6)

    def must_not_run(data, seed):
        raise AssertionError("a cached run was recomputed")

    must_not_run.__qualname__ = train_fn.__qualname__  # the recipe's name is part of the cache header

    again = subset_retraining(must_not_run, train, query, task, n_subsets=3, seed=0, cache_dir=tmp_path, verbose=False)
    assert np.array_equal(again.measurements, gt.measurements)


def test_two_workers_give_the_same_ground_truth_as_one():
    train, query = blobs(30), blobs(4, seed=1)
    task = dt.ClassificationTask()
    one = subset_retraining(train_fn, train, query, task, n_subsets=4, workers=1, verbose=False)
    two = subset_retraining(train_fn, train, query, task, n_subsets=4, workers=2, verbose=False)
    assert np.array_equal(one.masks, two.masks)
    np.testing.assert_array_equal(one.measurements, two.measurements)


def test_failing_train_fn_names_subset_and_seed():
    def broken(data, seed):
        raise RuntimeError("diverged")

    with pytest.raises(dt.DatatraceError, match=r"subset 0 \(seed \d+\): diverged"):
        subset_retraining(broken, blobs(10), blobs(2), dt.ClassificationTask(), n_subsets=2, verbose=False)


def test_model_returned_in_train_mode_is_refused():
    def dropout_model(data, seed):
        return torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Dropout(0.5))

    with pytest.raises(dt.DatatraceError, match=r"subset 0 .*model\.eval\(\)"):
        subset_retraining(dropout_model, blobs(10), blobs(2), dt.ClassificationTask(), n_subsets=2, verbose=False)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_fraction_outside_unit_interval_is_refused(fraction):
    with pytest.raises(dt.InputError, match="fraction"):
        subset_retraining(train_fn, blobs(10), blobs(2), dt.ClassificationTask(), fraction=fraction)


def test_more_workers_than_cores_is_capped_with_a_warning(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    with pytest.warns(dt.DatatraceWarning, match="capped at 1"):
        subset_retraining(train_fn, blobs(10), blobs(2), dt.ClassificationTask(), n_subsets=2, workers=4, verbose=False)
