"""Regenerate the small ground-truth fixtures shipped under tests/fixtures/ (CI has no cache to compute them in).

    python benchmarks/make_fixtures.py [--workers 2]

- ``tests/fixtures/digits-logreg-loo/``: leave-one-out ground truth of the ``digits-logreg`` benchmark: its model
  retrained without each of 100 random training examples (seed 0), with the measurement (loss) of all 100 queries.
  About 140 KB; used to check LOO correlation of attributors (e.g. influence functions) without retraining.

Rerun it whenever the benchmark's data or recipe changes (a test recomputes one run and fails if it is stale).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from datatrace.benchmarks import get
from datatrace.eval import loo_retraining

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
LOO_BENCHMARK, LOO_REMOVED = "digits-logreg", 100


def loo_fixture(workers: int) -> None:
    bench = get(LOO_BENCHMARK)
    train, query = bench.data()
    path = FIXTURES / f"{LOO_BENCHMARK}-loo"
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    loo = loo_retraining(
        bench.train_fn,
        train,
        query,
        bench.task,
        removed=LOO_REMOVED,
        seed=0,
        workers=workers,
        cache_dir=path,
        metadata={"benchmark": bench.name, "version": bench.version},
    )
    size = sum(f.stat().st_size for f in path.iterdir())
    print(
        f"{path}: {len(loo.removed)} removed × {loo.effects.shape[1]} queries, {size / 1024:.0f} KB, "
        f"{time.perf_counter() - t0:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    loo_fixture(parser.parse_args().workers)


if __name__ == "__main__":
    main()
