import dataclasses

import numpy as np
import pytest
import torch

import datatrace as dt
from datatrace._utils import model_fingerprint
from datatrace.benchmarks import BENCHMARKS, get

from .tiny import TINY

SIZES = {"digits-logreg": 1000, "digits-mlp": 1000}
#: Image classification benchmarks (the language-model ones are tested in tests/lm/test_lm_benchmarks.py).
CLASSIFICATION = sorted(n for n, b in BENCHMARKS.items() if isinstance(b.task, dt.ClassificationTask))


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_benchmark_data_and_ground_truth_settings(name):
    bench = get(name)
    train, query = bench.data()
    assert len(train) == SIZES.get(name, 4000) and len(query) == 100
    (x, y), (xq, yq) = train.tensors(), query.tensors()
    assert x.dtype == xq.dtype == torch.float32 and y.dtype == yq.dtype == torch.long
    assert set(y.unique().tolist()) == set(range(10))
    assert bench.seeds_per_subset == 2 and bench.common_random_numbers and bench.n_subsets == 64
    assert train.fingerprint() == bench.data()[0].fingerprint()  # the split is fixed


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_recipes_are_deterministic_in_eval_mode_and_learn(name):
    bench = get(name)
    train, query = bench.data()
    subset = train.subset(np.arange(300))
    model = bench.train_fn(subset, 1)
    # a second run of the same recipe: the checkpointed run where there is one (its last checkpoint is the model)
    if bench.checkpoints is not None:
        checkpoints, lrs = bench.checkpoints(subset, 1)
        assert len(checkpoints) == len(lrs) >= 2
        again = checkpoints[-1]
    else:
        again = bench.train_fn(subset, 1)
    assert model_fingerprint(model) == model_fingerprint(again)
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        x, y = query.tensors()
        assert (model(x).argmax(1) == y).float().mean() > 0.2  # ten classes: chance is 0.1


def test_digits_recipes_keep_the_models_other_code_relies_on():
    """digits-logreg / digits-mlp moved to version 2 for their ground truth only: same data, same recipes."""
    from datatrace.benchmarks.digits import train_logreg, train_mlp

    assert get("digits-logreg").train_fn is train_logreg and get("digits-mlp").train_fn is train_mlp
    assert get("digits-logreg").version == get("digits-mlp").version == 2


def test_mnist1d_generation_leaves_the_global_random_state_alone():
    from datatrace.benchmarks.mnist1d import mnist1d_split

    mnist1d_split.cache_clear()
    state = np.random.get_state()[1].copy()  # noqa: NPY002 — checking that nobody reseeds it
    mnist1d_split()
    assert np.array_equal(np.random.get_state()[1], state)  # noqa: NPY002


def test_cache_key_names_everything_that_changes_the_ground_truth():
    keys = {
        TINY.cache_key(6, 0),
        TINY.cache_key(7, 0),
        TINY.cache_key(6, 1),
        dataclasses.replace(TINY, version=2).cache_key(6, 0),
        dataclasses.replace(TINY, task=dt.ClassificationTask(measurement="margin")).cache_key(6, 0),
        dataclasses.replace(TINY, common_random_numbers=False).cache_key(6, 0),
        dataclasses.replace(TINY, seeds_per_subset=3).cache_key(6, 0),
    }
    assert len(keys) == 7


def test_ground_truth_is_cached_and_another_version_is_refused(tmp_path):
    gt = TINY.ground_truth(verbose=False)
    assert gt.masks.shape == (6, 60) and gt.run_measurements.shape == (6, 2, 8)
    assert gt.metadata["context"] == {"benchmark": "tiny", "version": 1}

    def must_not_run(data, seed):
        raise AssertionError("cached ground truth was recomputed")

    must_not_run.__qualname__ = TINY.train_fn.__qualname__
    again = dataclasses.replace(TINY, train_fn=must_not_run).ground_truth(verbose=False)
    np.testing.assert_array_equal(again.measurements, gt.measurements)

    TINY.ground_truth(verbose=False, path=tmp_path)
    with pytest.raises(dt.StoreMismatchError, match="context.version: stored 1, now 2"):
        dataclasses.replace(TINY, version=2).ground_truth(verbose=False, path=tmp_path)
