"""The Ray backend on a local Ray instance with 2 CPUs: same ground truth as the local pool, crashes retried."""

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

import datatrace as dt
from datatrace.eval import subset_masks, subset_retraining
from testable_tasks import blobs, fit, mlp

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    """Ray with 2 CPUs whose workers import datatrace and the test helpers from this checkout."""
    paths = [str(Path(dt.__file__).parents[1]), str(Path(__file__).parents[1])]
    env = {"PYTHONPATH": os.pathsep.join(paths + [p for p in sys.path if p])}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


def train_fn(data, seed):
    x, y = data.tensors()
    return fit(mlp(seed=seed), x, y, steps=30)


def test_ray_gives_the_same_ground_truth_as_the_local_pool(local_ray):
    train, query, task = blobs(30), blobs(4, seed=1), dt.ClassificationTask()
    kwargs = {"n_subsets": 4, "seeds_per_subset": 2, "common_random_numbers": True, "verbose": False}
    on_ray = subset_retraining(train_fn, train, query, task, workers=2, backend="ray", **kwargs)
    local = subset_retraining(train_fn, train, query, task, workers=2, **kwargs)
    np.testing.assert_array_equal(on_ray.masks, local.masks)
    np.testing.assert_array_equal(on_ray.run_measurements, local.run_measurements)


def test_a_killed_ray_worker_is_retried(local_ray, tmp_path):
    train, query, task = blobs(30), blobs(4, seed=1), dt.ClassificationTask()
    victim = np.flatnonzero(subset_masks(30, 4, 0.5, seed=0)[1]).sum()

    def fragile(data, seed):
        with open(tmp_path / "calls", "a") as f:
            f.write(f"{data.indices.sum()}\n")
        if data.indices.sum() == victim and not (tmp_path / "killed").exists():
            (tmp_path / "killed").touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return train_fn(data, seed)

    with pytest.warns(dt.DatatraceWarning, match="Ray worker died .* subset 1"):
        gt = subset_retraining(fragile, train, query, task, 4, workers=2, backend="ray", verbose=False)
    calls = [int(line) for line in (tmp_path / "calls").read_text().split()]
    assert sorted(calls) == sorted(list(gt.masks.astype(int) @ np.arange(30)) + [victim])
    assert gt.attempts[:, 0].tolist() == [1, 2, 1, 1]
    reference = subset_retraining(train_fn, train, query, task, 4, verbose=False)
    np.testing.assert_array_equal(gt.measurements, reference.measurements)
