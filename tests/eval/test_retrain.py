import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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


def test_several_seeds_per_subset_are_recorded_and_averaged(tmp_path):
    train, query = blobs(30), blobs(4, seed=1)
    task = dt.ClassificationTask()
    gt = subset_retraining(
        train_fn, train, query, task, n_subsets=3, seeds_per_subset=2, cache_dir=tmp_path, verbose=False
    )
    assert gt.seeds.shape == (3, 2) and len(np.unique(gt.seeds)) == 6
    assert gt.run_measurements.shape == (3, 2, 4) and gt.seeds_per_subset == 2
    np.testing.assert_allclose(gt.measurements, gt.run_measurements.mean(axis=1), rtol=1e-6)
    s, r = 2, 1
    model = train_fn(dt.Data(train).subset(np.flatnonzero(gt.masks[s])), int(gt.seeds[s, r]))
    with torch.no_grad():
        np.testing.assert_allclose(gt.run_measurements[s, r], task.measurement(model, query).numpy(), rtol=1e-6)
    assert (gt.attempts == 1).all() and (gt.train_seconds > 0).all()
    loaded = dt.eval.GroundTruth.load(tmp_path)
    np.testing.assert_array_equal(loaded.run_measurements, gt.run_measurements)
    np.testing.assert_array_equal(loaded.masks, gt.masks)


def test_common_random_numbers_share_seeds_across_subsets():
    seeds = dt.eval.retrain.run_seeds(5, 3, seed=0, common_random_numbers=True)
    assert (seeds == seeds[0]).all() and len(set(seeds[0])) == 3
    independent = dt.eval.retrain.run_seeds(5, 3, seed=0, common_random_numbers=False)
    assert len(np.unique(independent)) == 15


def test_subsets_know_their_training_indices_and_share_a_data_order():
    seen = []

    def recording(data, seed):
        seen.append((data.indices.copy(), data.indices[dt.eval.data_order(data, seed)], seed))
        return train_fn(data, seed)

    train, query = blobs(30), blobs(4, seed=1)
    gt = subset_retraining(
        recording, train, query, dt.ClassificationTask(), 4, common_random_numbers=True, verbose=False
    )
    for s, (indices, _, seed) in enumerate(seen):
        assert np.array_equal(indices, np.flatnonzero(gt.masks[s])) and seed == gt.seeds[s, 0]
    # examples shared by two subsets are visited in the same relative order
    (_, a, _), (_, b, _) = seen[0], seen[1]
    shared = np.intersect1d(a, b)
    assert len(shared) >= 3
    assert np.array_equal(a[np.isin(a, shared)], b[np.isin(b, shared)])


def test_a_killed_worker_is_retried_and_finished_runs_are_not_redone(tmp_path):
    train, query = blobs(30), blobs(4, seed=1)
    victim = np.flatnonzero(subset_masks(30, 6, 0.5, seed=0)[2])  # subset 3 has the same index sum: compare all

    def fragile(data, seed):
        with open(tmp_path / "calls", "a") as f:
            f.write(f"{data.indices.sum()}\n")
        if np.array_equal(np.sort(data.indices), victim) and not (tmp_path / "killed").exists():
            (tmp_path / "killed").touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return train_fn(data, seed)

    fragile.__qualname__ = train_fn.__qualname__
    task = dt.ClassificationTask()
    with pytest.warns(dt.DatatraceWarning, match=r"worker died \(exit code -9\) while training subset 2"):
        gt = subset_retraining(fragile, train, query, task, 6, workers=2, cache_dir=tmp_path / "gt", verbose=False)
    calls = [int(line) for line in (tmp_path / "calls").read_text().split()]
    assert sorted(calls) == sorted(list(gt.masks.astype(int) @ np.arange(30)) + [victim.sum()])
    assert gt.attempts[:, 0].tolist() == [1, 1, 2, 1, 1, 1]
    reference = subset_retraining(train_fn, train, query, task, 6, verbose=False)
    np.testing.assert_array_equal(gt.measurements, reference.measurements)


def test_worker_error_in_the_pool_names_subset_and_seed():
    def broken(data, seed):
        raise RuntimeError("diverged")

    with pytest.raises(dt.DatatraceError, match=r"subset \d \(seed \d+\): diverged"):
        subset_retraining(broken, blobs(10), blobs(2), dt.ClassificationTask(), 3, workers=2, verbose=False)


def test_ground_truth_of_another_benchmark_version_is_refused(tmp_path):
    args = (train_fn, blobs(10), blobs(2), dt.ClassificationTask(), 2)
    subset_retraining(*args, cache_dir=tmp_path, verbose=False, metadata={"benchmark": "b", "version": 1})
    with pytest.raises(dt.StoreMismatchError, match="context.version: stored 1, now 2"):
        subset_retraining(*args, cache_dir=tmp_path, verbose=False, metadata={"benchmark": "b", "version": 2})


def test_subsets_smaller_than_the_number_of_classes_are_refused():
    with pytest.raises(dt.InputError, match="subsets of 2 examples, fewer than the 3 classes"):
        subset_retraining(train_fn, blobs(10), blobs(2), dt.ClassificationTask(), fraction=0.2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seeds_per_subset": 0}, "seeds_per_subset must be an int ≥ 1"),
        ({"backend": "dask"}, "Unknown backend 'dask'; valid: local, ray"),
        ({"workers": 0}, "workers must be ≥ 1"),
        ({"n_subsets": 1}, "n_subsets must be ≥ 2"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(dt.InputError, match=match):
        subset_retraining(train_fn, blobs(10), blobs(2), dt.ClassificationTask(), **{"n_subsets": 2, **kwargs})


def test_an_interrupted_ground_truth_resumes_without_redoing_finished_runs(tmp_path):
    train, query, task = blobs(30), blobs(4, seed=1), dt.ClassificationTask()
    masks = subset_masks(30, 5, 0.5, seed=0)
    trained = []

    def interrupted(data, seed):
        if np.array_equal(data.indices, np.flatnonzero(masks[3])):
            raise KeyboardInterrupt  # the user stops the run while subset 3 trains
        trained.append(data.indices.copy())
        return train_fn(data, seed)

    def resumed(data, seed):
        trained.append(data.indices.copy())
        return train_fn(data, seed)

    interrupted.__qualname__ = resumed.__qualname__ = train_fn.__qualname__
    with pytest.raises(KeyboardInterrupt):
        subset_retraining(interrupted, train, query, task, 5, cache_dir=tmp_path, verbose=False)
    assert len(trained) == 3
    gt = subset_retraining(resumed, train, query, task, 5, cache_dir=tmp_path, verbose=False)
    assert [t.tolist() for t in trained[3:]] == [np.flatnonzero(masks[s]).tolist() for s in (3, 4)]
    np.testing.assert_array_equal(gt.measurements, subset_retraining(train_fn, train, query, task, 5).measurements)
    with pytest.raises(dt.StoreMismatchError, match="train_fingerprint"):
        subset_retraining(resumed, blobs(30, seed=2), query, task, 5, cache_dir=tmp_path, verbose=False)


PARENT = """
import os, sys, time
import datatrace as dt
from testable_tasks import blobs, mlp

def slow(data, seed):
    with open(sys.argv[1], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(0.1)
    return mlp(seed=seed)

dt.eval.subset_retraining(slow, blobs(10), blobs(2), dt.ClassificationTask(), 500, workers=2, verbose=False)
"""


def _running(pid: int) -> bool:
    try:
        return "\tZ" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1][:3]  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_workers_exit_when_the_parent_is_killed(tmp_path):
    pids = tmp_path / "pids"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(dt.__file__).parents[1]), str(Path(__file__).parents[1])]),
    }
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PARENT), str(pids)], env=env)
    deadline = time.monotonic() + 60
    while not (pids.exists() and len(set(pids.read_text().split())) >= 2):
        assert parent.poll() is None and time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.05)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    workers = {int(p) for p in pids.read_text().split()}
    deadline = time.monotonic() + 10
    while any(_running(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = [p for p in workers if _running(p)]
    for p in orphans:  # do not leave them behind when the test fails
        os.kill(p, signal.SIGKILL)
    assert not orphans
