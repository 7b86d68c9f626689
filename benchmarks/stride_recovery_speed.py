"""STRIDE recovery speed: n training examples, K subsets, degree d, Q queries, synthetic sparse responses.

    OMP_NUM_THREADS=2 python benchmarks/stride_recovery_speed.py [--n 1000000] [--queries 100] [--solver fista]

Draws the balanced design (timed separately), plants a 50-sparse influence vector per query (y = M w + noise, the
regime STRIDE assumes) and times ``dt.stride.recover`` with the default λ = 0.1·λ_max. Prints wall time, peak
resident memory of the process (Linux ``ru_maxrss``), the largest relative duality gap and the support precision/
recall. The issue's target: n = 1,000,000, K = 1000, d = 10, 100 queries in ≤ 60 s on 2 CPU cores, ≤ 2 GiB.
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np
import torch

from datatrace.stride import design, recover


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--subsets", type=int, default=1000)
    parser.add_argument("--degree", type=int, default=10)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--sparsity", type=int, default=50)
    parser.add_argument("--solver", default="fista")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    start = time.perf_counter()
    m = design(args.n, args.subsets, args.degree, seed=args.seed)
    print(f"design: {time.perf_counter() - start:.1f} s, subset sizes {m.balance()}")
    rng = np.random.default_rng(args.seed)
    rows = np.concatenate([rng.choice(args.n, args.sparsity, replace=False) for _ in range(args.queries)])
    cols = np.repeat(np.arange(args.queries), args.sparsity)
    values = rng.choice([-1.0, 1.0], len(rows)) * rng.uniform(1, 2, len(rows))
    W = np.zeros((args.n, args.queries), dtype=np.float32)
    W[rows, cols] = values
    Y = np.zeros((args.subsets, args.queries))
    for t in range(args.degree):
        np.add.at(Y, m.subsets[:, t].astype(np.int64), W)
    del W
    Y += 0.01 * rng.standard_normal(Y.shape)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, info = recover(m, Y, solver=args.solver, verbose=False, return_info=True)
    seconds = time.perf_counter() - start
    got = got.tocoo()
    found = set(zip(got.row.tolist(), got.col.tolist()))
    planted = set(zip(rows.tolist(), cols.tolist()))
    hit = len(found & planted)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"recover[{args.solver}] n={args.n:,} K={args.subsets} d={args.degree} Q={args.queries}: {seconds:.1f} s, "
        f"peak RSS {peak:.2f} GiB, max relative gap {info.gap.max():.2e}, iterations ≤ {info.n_iter.max()}, "
        f"precision {hit / max(len(found), 1):.3f} recall {hit / len(planted):.3f}"
    )
    for w in caught:
        print("warning:", w.message)


if __name__ == "__main__":
    main()
