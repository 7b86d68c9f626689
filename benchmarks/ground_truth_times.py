"""Wall time of the full ground truth of every built-in benchmark (their own subsets, fractions and seeds).

    DATATRACE_CACHE=/tmp/fresh-cache python benchmarks/ground_truth_times.py [--workers 2] [--benchmarks a,b]

Computes each benchmark's ground truth into the datatrace cache (so point ``DATATRACE_CACHE`` at an empty directory
to time it from scratch; a complete cached ground truth is reported as cached) and prints the number of training
runs, the wall time, retrains/second, the noise ceiling and the 1-minute load average. Later ``datatrace bench``
runs with the same cache reuse it.
"""

from __future__ import annotations

import argparse
import os
import time

from datatrace.benchmarks import BENCHMARKS, get
from datatrace.eval import noise_ceiling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores, {args.workers} workers")
    print(f"{'benchmark':<16}{'runs':>6}{'wall s':>9}{'runs/s':>8}{'mean run s':>12}{'ceiling':>9}  load")
    for name in args.benchmarks.split(","):
        bench = get(name)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        gt = bench.ground_truth(workers=args.workers, verbose=False)
        wall = time.perf_counter() - t0
        runs = gt.train_seconds.size
        print(
            f"{name:<16}{runs:>6}{wall:>9.0f}{runs / wall:>8.2f}{gt.train_seconds.mean():>12.2f}"
            f"{noise_ceiling(gt).mean:>9.3f}  {load:.2f} → {os.getloadavg()[0]:.2f}"
        )


if __name__ == "__main__":
    main()
