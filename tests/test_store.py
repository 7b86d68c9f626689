import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import datatrace as dt
from datatrace.store import Store
from testable_tasks import blobs, mlp

ARRAYS = {"features": ((3,), "float32"), "norm": ((), "float64")}


def test_write_resume_and_read(tmp_path):
    store = Store(tmp_path / "s", 10, ARRAYS, {"seed": 1}, shard_size=4)
    assert store.n_shards == 3 and store.missing_shards() == [0, 1, 2]
    store.write_shard(1, {"features": np.ones((4, 3)), "norm": np.arange(4)})
    again = Store(tmp_path / "s", 10, ARRAYS, {"seed": 1}, shard_size=4)
    assert again.missing_shards() == [0, 2]
    assert again["features"][4:8].tolist() == [[1, 1, 1]] * 4
    assert again["norm"].dtype == np.float64 and not again.complete


def test_header_mismatch_names_every_difference(tmp_path):
    Store(tmp_path / "s", 10, ARRAYS, {"seed": 1, "model_fingerprint": "aaa"}, shard_size=4)
    with pytest.raises(dt.StoreMismatchError) as err:
        Store(tmp_path / "s", 10, ARRAYS, {"seed": 2, "model_fingerprint": "bbb"}, shard_size=4)
    msg = str(err.value)
    assert "meta.seed: stored 1, now 2" in msg and "meta.model_fingerprint" in msg and "n_rows" not in msg
    with pytest.raises(dt.StoreMismatchError, match="n_rows"):
        Store(tmp_path / "s", 11, ARRAYS, {"seed": 1, "model_fingerprint": "aaa"}, shard_size=4)


def test_temporary_store_is_removed(tmp_path):
    store = Store(None, 4, ARRAYS, {}, shard_size=2)
    path = store.path
    assert path.exists()
    del store
    assert not path.exists()


def test_write_shard_needs_every_array(tmp_path):
    store = Store(tmp_path / "s", 4, ARRAYS, {}, shard_size=2)
    with pytest.raises(dt.InputError, match="exactly the arrays"):
        store.write_shard(0, {"features": np.zeros((2, 3))})


def test_attributor_store_from_other_model_is_refused(tmp_path):
    x, y = blobs(20)
    task = dt.ClassificationTask()
    dt.GradDot(mlp(seed=0), task, cache_dir=tmp_path, verbose=False).fit((x, y))
    with pytest.raises(dt.StoreMismatchError, match="model_fingerprint"):
        dt.GradDot(mlp(seed=1), task, cache_dir=tmp_path, verbose=False).fit((x, y))
    with pytest.raises(dt.StoreMismatchError, match="data_fingerprint"):
        dt.GradDot(mlp(seed=0), task, cache_dir=tmp_path, verbose=False).fit((x + 1, y))


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    import datatrace as dt
    from datatrace.store import Store
    from testable_tasks import blobs, mlp
    write = Store.write_shard
    def slow_write(self, shard, values):
        write(self, shard, values)
        time.sleep(0.3)
    Store.write_shard = slow_write
    dt.GradDot(mlp(), dt.ClassificationTask(), shard_size=10, batch_size=5, cache_dir={cache!r},
               verbose=False).fit(blobs(120))
    """
)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path, monkeypatch):
    cache = tmp_path / "killed"
    script = CHILD.format(tests=str(Path(__file__).parent), cache=str(cache))
    child = subprocess.Popen([sys.executable, "-c", script])
    bitmap = cache / "graddot-member0" / "complete.npy"
    deadline = time.time() + 120
    while time.time() < deadline:
        if bitmap.exists() and 3 <= np.load(bitmap).sum():
            break
        assert child.poll() is None, "child finished or crashed before it could be killed"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done_before = np.load(bitmap)
    assert 3 <= done_before.sum() < len(done_before)

    computed = []
    original = dt.GradDot._train_batch

    def counting(self, model, batch, offset):
        computed.append((offset, len(batch[0])))
        return original(self, model, batch, offset)

    monkeypatch.setattr(dt.GradDot, "_train_batch", counting)
    resumed = dt.GradDot(mlp(), dt.ClassificationTask(), shard_size=10, batch_size=5, cache_dir=cache, verbose=False)
    resumed.fit(blobs(120))
    recomputed_rows = {r for off, n in computed for r in range(off, off + n)}
    finished_rows = {r for s in np.flatnonzero(done_before) for r in range(10 * s, 10 * s + 10)}
    assert recomputed_rows.isdisjoint(finished_rows)
    assert len(recomputed_rows) == 120 - len(finished_rows)

    monkeypatch.setattr(dt.GradDot, "_train_batch", original)
    clean = dt.GradDot(
        mlp(),
        dt.ClassificationTask(),
        shard_size=10,
        batch_size=5,
        cache_dir=tmp_path / "clean",
        verbose=False,
    ).fit(blobs(120))
    assert np.array_equal(np.asarray(resumed.stores_[0]["grad"]), np.asarray(clean.stores_[0]["grad"]))
