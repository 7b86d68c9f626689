"""Noise ceiling of subset-retraining ground truth with and without common random numbers (CRN).

    python benchmarks/crn_noise_ceiling.py [--benchmarks digits-mlp,mnist1d-mlp] [--workers 2]

For each benchmark, computes its ground truth (its own n_subsets, fraction and seeds per subset) twice: with
independent training seeds per subset, and with CRN (every subset trained with the same seeds, so the same
initialisation and, for minibatch recipes, the same data order). Reports the noise ceiling (the LDS the expected
measurement would reach against the ground truth), the seed-to-seed correlation, and the wall time of each. This is
how the benchmarks' ``common_random_numbers`` setting was chosen; it looks at no attributor's scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from datatrace.benchmarks import get
from datatrace.eval import noise_ceiling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", default="digits-mlp,mnist1d-mlp")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"{'benchmark':<16}{'CRN':<6}{'noise ceiling [95% CI]':<28}{'seed-to-seed':<14}wall s")
    for name in args.benchmarks.split(","):
        for crn in (False, True):
            bench = dataclasses.replace(get(name), common_random_numbers=crn)
            t0 = time.perf_counter()
            gt = bench.ground_truth(workers=args.workers, verbose=False)
            ceiling = noise_ceiling(gt)
            interval = f"{ceiling.mean:.3f} [{ceiling.ci[0]:.3f}, {ceiling.ci[1]:.3f}]"
            print(
                f"{name:<16}{'yes' if crn else 'no':<6}{interval:<28}{ceiling.seed_to_seed:<14.3f}"
                f"{time.perf_counter() - t0:.0f}"
            )


if __name__ == "__main__":
    main()
