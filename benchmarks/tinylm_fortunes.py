"""LDS of LM attributors and surface baselines on tinylm-fortunes, with fit/score wall time and peak memory.

    python benchmarks/tinylm_fortunes.py [--workers 2] [--threads 2] [--json out.json] [--benchmark tinylm-fortunes]

Ground truth: the benchmark's 64 random 30% subsets, each retrained from scratch with 2 common-random-number seeds,
measurements averaged (128 trainings; ≈ 15–40 min with 2 workers depending on machine load, then cached under the
datatrace cache dir). The attributed model is the full-data model with seed 0. The table also gives the noise
ceiling: the Spearman correlation between the two seeds' measurements (mean over queries), which bounds what any
attributor can reach against one seed. Every setting below is fixed in advance (no tuning on this ground truth);
``proj_dim`` 2048 is TRAK's ``"auto"`` default.

Costs: fit = per-example training features (gradients, projection, kernel); score = query features plus the full
(200 × 2000) score matrix. Peak memory = largest resident-set increase during fit + score, sampled every 5 ms.
``--benchmark tinylm-micro`` runs the same table on the synthetic micro benchmark.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import datatrace as dt
from _measure import Cost, load_average
from datatrace.benchmarks import get
from datatrace.benchmarks.tinylm import average_replicates, noise_ceiling

LAST_BLOCK = ["blocks.1", "ln_f", "head"]


def methods(model, task):
    """``(name, attributor)`` pairs, fixed before looking at any LDS."""
    return [
        ("TRAK (proj 2048)", dt.TRAK(model, task, proj_dim=2048, verbose=False)),
        ("TRAK (proj 4096)", dt.TRAK(model, task, proj_dim=4096, verbose=False)),
        ("Grad-Cos (all, proj 2048)", dt.GradCos(model, task, proj_dim=2048, verbose=False)),
        ("Grad-Cos (last block + head)", dt.GradCos(model, task, params=LAST_BLOCK, verbose=False)),
        ("Grad-Dot (all, proj 2048)", dt.GradDot(model, task, proj_dim=2048, verbose=False)),
        ("TF-IDF (char 4-grams)", dt.lm.TfidfSimilarity()),
        ("BM25 (words)", dt.lm.BM25()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="tinylm-fortunes")
    parser.add_argument("--workers", type=int, default=2, help="processes for the ground-truth retraining")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for attribution")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    bench = get(args.benchmark)
    print(f"{bench.name}: {bench.description}; {load_average()}")
    start = time.perf_counter()
    replicates = bench.replicate_ground_truths(workers=args.workers)
    gt = average_replicates(replicates)
    ceiling = noise_ceiling(replicates)
    print(f"ground truth: {len(gt.masks)} subsets × {len(replicates)} seeds in {time.perf_counter() - start:.0f} s")
    torch.set_num_threads(args.threads)
    train, query = bench.data()
    model = bench.model(seed=0)
    rows = []
    for name, attr in methods(model, bench.task):
        with Cost() as total:
            with Cost() as fit:
                attr.fit(train)
            with Cost() as score:
                scores = dt.eval.lds(dt.Scores.from_array(attr.score(query).values), gt)
        rows.append(
            {
                "method": name,
                "lds": scores.mean,
                "ci": scores.ci,
                "fit_s": fit.seconds,
                "score_s": score.seconds,
                "peak_mib": total.peak_mib,
            }
        )
        r = rows[-1]
        print(
            f"{name:30s} {scores}  fit {r['fit_s']:6.1f} s  score {r['score_s']:5.1f} s  peak +{r['peak_mib']:.0f} MiB"
        )
    print(f"\nnoise ceiling (Spearman between the 2 seeds, mean over queries): {ceiling:.3f}; {load_average()}\n")
    print("| method | LDS [95% CI] | fit s | score s | peak MiB |\n|---|---|---|---|---|")
    for r in rows:
        ci = f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
        print(f"| {r['method']} | {r['lds']:.3f} {ci} | {r['fit_s']:.1f} | {r['score_s']:.1f} | {r['peak_mib']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": bench.name, "noise_ceiling": ceiling, "rows": rows, "load": load_average()}, f)


if __name__ == "__main__":
    main()
