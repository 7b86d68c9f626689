"""Retraining throughput: retrains per second with W worker processes against 1 (target ≥ 0.9·W, i.e. 1.8× for 2).

    python benchmarks/retrain_scaling.py [--benchmark mnist5k-mlp] [--runs 24] [--workers 2] [--backend local]

Trains ``--runs`` models of the benchmark's recipe on random 50% subsets (no cache) once with one worker and once with
``--workers`` workers, checks that both give bit-identical ground truth, and prints retrains/second, the speed-up and
the 1-minute load average before and after each measurement (the figure means little on a machine that is busy
with other work: the load should stay below the number of cores).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from datatrace.benchmarks import get
from datatrace.eval import subset_retraining


def timed_ground_truth(bench, train, query, runs: int, workers: int, backend: str):
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    gt = subset_retraining(
        bench.train_fn, train, query, bench.task, runs, 0.5, 0, workers, None, False, backend=backend
    )
    seconds = time.perf_counter() - t0
    print(
        f"  {workers} worker(s): {runs} runs in {seconds:6.1f} s = {runs / seconds:5.2f} retrains/s "
        f"(mean run {gt.train_seconds.mean():.2f} s; load {load_before:.2f} → {os.getloadavg()[0]:.2f})"
    )
    return gt, runs / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="mnist5k-mlp")
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", default="local")
    args = parser.parse_args()
    bench = get(args.benchmark)
    train, query = bench.data()
    print(f"{bench.name}: {bench.description}; {os.cpu_count()} CPU cores, backend {args.backend}")
    one, rate_one = timed_ground_truth(bench, train, query, args.runs, 1, args.backend)
    many, rate_many = timed_ground_truth(bench, train, query, args.runs, args.workers, args.backend)
    identical = np.array_equal(one.measurements, many.measurements)
    target = 0.9 * args.workers
    print(
        f"speed-up {rate_many / rate_one:.2f}× with {args.workers} workers (target ≥ {target:.1f}×); "
        f"identical ground truth: {identical}"
    )


if __name__ == "__main__":
    main()
