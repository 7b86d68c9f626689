"""The README's results table: ``datatrace bench`` on every built-in benchmark, as one Markdown table.

    python benchmarks/bench_all.py [--workers 2] [--json results.json] [--methods graddot,gradcos,tracin,trak,trak-5]

Equivalent to running, for each built-in benchmark NAME,
``datatrace bench NAME --methods graddot,gradcos,tracin,trak,trak-5 --json NAME.json`` (``tracin`` is left out
where the benchmark provides no checkpoints). Ground truth comes from the datatrace cache (computed on first use).
"""

from __future__ import annotations

import argparse
import json

from datatrace.benchmarks import BENCHMARKS
from datatrace.benchmarks.methods import parse_methods
from datatrace.benchmarks.run import markdown_table, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", default="graddot,gradcos,tracin,trak,trak-5")
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    parser.add_argument("--json", help="write every run's results here")
    args = parser.parse_args()
    results = []
    for name in args.benchmarks.split(","):
        bench = BENCHMARKS[name]
        methods = [m.name for m in parse_methods(args.methods) if not m.missing(bench)]
        results.append(run_bench(name, methods, workers=args.workers, verbose=False))
        print(markdown_table(results[-1:]), flush=True)
    print()
    print(markdown_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in results], f, indent=1)


if __name__ == "__main__":
    main()
