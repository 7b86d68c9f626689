"""Write the tinylm-micro ground truth and full-data model as a test fixture (tests/fixtures/lm/tinylm-micro/).

    python benchmarks/make_tinylm_micro_fixture.py [--workers 2] [--out tests/fixtures/lm/tinylm-micro]

Runs the benchmark's ground truth, 32 subsets × 2 seeds with common random numbers (64 trainings of ≈ 4 s on one
thread; ≈ 3 min with 2 workers), and trains the full-data model with seed 0. Files:

- ``masks.npy`` (32 × 500 bool) and ``run_measurements.npy`` (32 subsets × 2 seeds × 100 queries, float32);
- ``model.safetensors``: the full-data model (what the attribution test explains);
- ``meta.json``: benchmark name/version, the training and query fingerprints (the test refuses a fixture whose
  corpus no longer matches the code that generates it) and the training seeds of the two runs per subset.

The test (tests/lm/test_micro_benchmark.py) uses these instead of retraining, so CI checks LM attribution quality
in seconds without depending on bit-exact retraining across machines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_model

from datatrace.benchmarks import get

DEFAULT_OUT = Path(__file__).parents[1] / "tests" / "fixtures" / "lm" / "tinylm-micro"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = get("tinylm-micro")
    train, query = bench.data()
    start = time.perf_counter()
    gt = bench.ground_truth(workers=args.workers, cache=False)
    retrain_s = time.perf_counter() - start
    model = bench.model(seed=0)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.npy"):
        old.unlink()
    np.save(args.out / "masks.npy", gt.masks)
    np.save(args.out / "run_measurements.npy", gt.run_measurements.astype(np.float32))
    save_model(model, str(args.out / "model.safetensors"))
    meta = {
        "benchmark": bench.name,
        "version": bench.version,
        "train_fingerprint": train.fingerprint(),
        "query_fingerprint": query.fingerprint(),
        "run_seeds": gt.seeds[0].tolist(),
        "model_seed": 0,
        "retraining_seconds": round(retrain_s, 1),
        "workers": args.workers,
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    sizes = {p.name: p.stat().st_size for p in sorted(args.out.iterdir())}
    print(f"wrote {args.out} in {retrain_s:.0f} s of retraining: {sizes}")


if __name__ == "__main__":
    main()
