"""LDS of every gradient attributor on digits-logreg and digits-mlp: defaults against the best swept setting.

    python benchmarks/digits_lds.py [--json out.json]

Ground truth: each benchmark's 64 retrainings on random 50% subsets (cached in the datatrace cache dir). The sweep
looks at query LDS, so "best" is optimistic by construction; the point is to show how far the defaults are from it
(goal: within 0.05). TracIn needs the checkpoints and learning rates of a first-order training run, so it is reported
on digits-mlp (Adam, constant lr) only; digits-logreg is fitted by L-BFGS.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

import datatrace as dt
from datatrace.benchmarks import get
from datatrace.benchmarks.digits import train_mlp_checkpoints

RIDGES = (0.1, 0.3, 0.5, 1.0, 3.0)
PROJ_DIMS = ("auto", 512, 1024, 4096)


def configurations(name: str, bench, train):
    """``(method, setting, factory)`` for every swept configuration; the first of each method is its default."""
    model = bench.model(seed=0)
    for params in ("all", "last"):
        yield (
            "Grad-Dot",
            f"params={params}",
            lambda p=params: dt.GradDot(model, bench.task, params=p, verbose=False),
        )
    for params in ("all", "last"):
        yield (
            "Grad-Cos",
            f"params={params}",
            lambda p=params: dt.GradCos(model, bench.task, params=p, verbose=False),
        )
    if name == "digits-mlp":
        for n_ckpt in (3, 1, 6):
            ckpts = train_mlp_checkpoints(train, 0, n_ckpt)
            yield (
                "TracIn",
                f"checkpoints={n_ckpt}",
                lambda c=ckpts: dt.TracIn(c, bench.task, lrs=[1e-2] * len(c), verbose=False),
            )
    for proj_dim in PROJ_DIMS:
        for ridge in (0.5,) + tuple(r for r in RIDGES if r != 0.5):
            yield (
                "TRAK",
                f"proj_dim={proj_dim} ridge={ridge}",
                lambda d=proj_dim, r=ridge: dt.TRAK(model, bench.task, proj_dim=d, ridge=r, verbose=False),
            )
    halves = [np.random.default_rng(i).choice(len(train), len(train) // 2, replace=False) for i in range(5)]
    models = [bench.train_fn(train.subset(h), i) for i, h in enumerate(halves)]
    for ridge in (0.5,) + tuple(r for r in RIDGES if r != 0.5):
        yield (
            "TRAK-5 (half-data models)",
            f"ridge={ridge}",
            lambda r=ridge: dt.TRAK(models, bench.task, ridge=r, verbose=False),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore", dt.DatatraceWarning)
    results = []
    for name in ("digits-logreg", "digits-mlp"):
        bench = get(name)
        train, query = bench.data()
        t0 = time.perf_counter()
        gt = bench.ground_truth(workers=args.workers, verbose=False)
        print(
            f"\n{name}: ground truth {len(gt.masks)} subsets ({time.perf_counter() - t0:.1f} s, cached after first run)"
        )
        for method, setting, make in configurations(name, bench, train):
            t0 = time.perf_counter()
            res = dt.eval.lds(make().fit(train).score(query), gt)
            results.append(
                {
                    "benchmark": name,
                    "method": method,
                    "setting": setting,
                    "lds": res.mean,
                    "ci": list(res.ci),
                    "seconds": time.perf_counter() - t0,
                }
            )
        print(f"{'method':<28}{'default LDS [95% CI]':<28}{'best LDS [95% CI]':<28}best setting")
        for method in dict.fromkeys(r["method"] for r in results if r["benchmark"] == name):
            rows = [r for r in results if r["benchmark"] == name and r["method"] == method]
            default, best = rows[0], max(rows, key=lambda r: r["lds"])

            def fmt(r):
                return f"{r['lds']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"

            print(f"{method:<28}{fmt(default):<28}{fmt(best):<28}{best['setting']}  (default: {default['setting']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
