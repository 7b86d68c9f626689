"""LoGra where full per-example gradients cannot be held: peak memory and time against the gradients' size.

    OMP_NUM_THREADS=1 python benchmarks/influence_logra_memory.py [--hidden 4096] [--n-train 512] [--rank 64]

A 4-layer MLP (1024 → hidden → hidden → hidden → 10; 37.8M parameters at hidden 4096) on random data. Per-example
gradients of one batch of 64 would take 64 × P × 4 bytes (9.7 GB at hidden 4096), those of the whole training set
n × P × 4 bytes. ``dt.LoGra`` (EK-FAC in the projected space) fits on the training set and scores 100 queries; the
script reports its wall time, the peak resident memory of the process above what it held before ``fit`` (model and
data included in the baseline), and the size of its stored features. Each run is a fresh process, so the peak is
LoGra's own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

RUN = """
import json, resource, sys, time, torch, datatrace as dt
hidden, n_train, rank = (int(a) for a in sys.argv[1:4])
torch.manual_seed(0)
layers = [torch.nn.Linear(1024, hidden), torch.nn.ReLU()]
for _ in range(2):
    layers += [torch.nn.Linear(hidden, hidden), torch.nn.ReLU()]
model = torch.nn.Sequential(*layers, torch.nn.Linear(hidden, 10)).eval()
x, y = torch.randn(n_train + 100, 1024), torch.randint(0, 10, (n_train + 100,))
train, query = (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
attr = dt.LoGra(model, dt.ClassificationTask(), rank=rank, batch_size=64, verbose=False).fit(train)
values = attr.score(query).values
seconds = time.perf_counter() - t0
print(json.dumps({
    "n_params": sum(p.numel() for p in model.parameters()),
    "seconds": seconds,
    "peak_extra_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before,
    "feature_bytes": 4 * n_train * attr.feature_dim_,
    "finite": bool(torch.isfinite(torch.from_numpy(values)).all()),
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--rank", type=int, default=64)
    args = parser.parse_args()
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(args.hidden), str(args.n_train), str(args.rank)],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    gib = 2**30
    print(f"model: {r['n_params']:,} parameters; LoGra rank {args.rank}, EK-FAC, {args.n_train} training examples")
    print(
        f"full per-example gradients: {64 * r['n_params'] * 4 / gib:.1f} GiB per batch of 64, "
        f"{args.n_train * r['n_params'] * 4 / gib:.1f} GiB for the training set"
    )
    print(
        f"LoGra: fit + score 100 queries in {r['seconds']:.1f} s; peak memory above baseline "
        f"{r['peak_extra_bytes'] / gib:.2f} GiB; stored features {r['feature_bytes'] / 2**20:.1f} MiB; "
        f"finite scores: {r['finite']}"
    )


if __name__ == "__main__":
    main()
