"""LDS of LM attributors and surface baselines on tinylm-fortunes, with fit/score wall time and peak memory.

    python benchmarks/tinylm_fortunes.py [--workers 2] [--methods trak,gradcos,...] [--json out.json]
        [--benchmark tinylm-fortunes]

The same as ``datatrace bench tinylm-fortunes --methods tfidf,bm25,graddot,gradcos,trak,logra,if-ekfac``, printed
as the README's Markdown table. Ground truth: the benchmark's 64 random 30% subsets, each retrained from scratch with
2 common-random-number seeds, measurements averaged (128 trainings of ≈ 10–15 s on one thread: ≈ 15–40 min with 2
workers depending on machine load, then cached under the datatrace cache dir). The attributed model is the full-data
model with seed 0; every method uses its registry defaults (nothing tuned on this ground truth): Grad-Dot/Cos and TRAK
project all parameters to 2,048 dimensions, LoGra and EK-FAC work on the linear layers (attention, MLP,
unembedding). Fit = training features (gradients, projection, kernel or factors); score = query features plus the
full 200 × 2,000 matrix; peak memory = largest resident-set increase during fit + score. The noise ceiling bounds
every LDS. ``--benchmark tinylm-micro`` runs the same table on the synthetic micro benchmark.
"""

from __future__ import annotations

import argparse

from datatrace.benchmarks.run import caption, markdown_table, run_bench

METHODS = "tfidf,bm25,graddot,gradcos,trak,logra,if-ekfac"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="tinylm-fortunes")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--workers", type=int, default=2, help="processes for the ground-truth retraining")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    result = run_bench(args.benchmark, args.methods, workers=args.workers)
    print(markdown_table([result]))
    print(caption(result))
    if args.json:
        result.to_json(args.json)


if __name__ == "__main__":
    main()
