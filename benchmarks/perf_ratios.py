"""Speed ratios of the core kernels, measured in one run (absolute times mean little on shared machines).

    python benchmarks/perf_ratios.py

1. Per-example gradients (torch.func vmap, ``datatrace.grads``) ÷ one plain forward + backward of the mean loss
   over the same batch. Target ≤ 2×. Also shown: the floor that any method producing a dense (B × P) gradient
   matrix pays, the time to allocate and write B × P floats; for dense layers it alone exceeds 2× the backward.
   For comparison, LoGra's factorised projection (never forms a per-example gradient): its ``fit`` on the same
   batch (rank 16, identity preconditioner, store write included) ÷ the same plain forward + backward.
2. Projection throughput (``datatrace.projection.RandomProjector``) ÷ ``torch.matmul`` throughput on the same
   (B × P) @ (P × k) product. Target ≥ 0.5. Reported with R cached (fits ``cache_bytes``) and regenerated per call.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

import datatrace as dt
from datatrace.grads import per_example_gradients, select_parameters
from datatrace.projection import RandomProjector


def timed(fn, repeats: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def grad_ratio(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    task = dt.ClassificationTask()
    names = select_parameters(model)

    def plain():
        model.zero_grad()
        task.loss(model, (x, y)).mean().backward()

    def per_example():
        per_example_gradients(model, task.loss, (x, y), names)

    n_params = sum(p.numel() for p in model.parameters())
    a, b = timed(per_example), timed(plain)
    floor = timed(lambda: torch.empty(len(x), n_params).fill_(1.0))
    logra = timed(lambda: dt.LoGra(model, task, rank=16, precondition="identity", verbose=False).fit((x, y)))
    print(
        f"  {name:<32} P={n_params:>8,} B={len(x):>4}  per-example {a * 1e3:7.1f} ms  plain {b * 1e3:6.1f} ms  "
        f"ratio {a / b:6.2f}× (target ≤ 2)  B×P write floor {floor / b:6.2f}×  LoGra-16 fit {logra / b:5.2f}×"
    )


def projection_ratio(batch: int, in_dim: int, out_dim: int) -> None:
    x = torch.randn(batch, in_dim)
    cached = RandomProjector(in_dim, out_dim, seed=0)
    regenerated = RandomProjector(in_dim, out_dim, seed=0, cache_bytes=0)
    dense = cached.matrix()
    t_mm = timed(lambda: torch.matmul(x, dense))
    t_cached = timed(lambda: cached(x))
    t_regen = timed(lambda: regenerated(x), repeats=3)
    print(
        f"  B={batch:>5} P={in_dim:>7,} k={out_dim:>5}  matmul {t_mm * 1e3:7.1f} ms  "
        f"cached {t_mm / t_cached:4.2f}×  regenerated {t_mm / t_regen:4.2f}× of matmul throughput (target ≥ 0.5)"
    )


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("1. per-example gradients ÷ plain forward+backward")
    grad_ratio(
        "digits MLP 64-64-10",
        nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval(),
        torch.randn(1000, 64),
        torch.randint(0, 10, (1000,)),
    )
    grad_ratio(
        "MNIST MLP 784-512-256-10",
        nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)).eval(),
        torch.randn(256, 784),
        torch.randint(0, 10, (256,)),
    )
    cnn = nn.Sequential(
        nn.Conv2d(1, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 5 * 5, 10),
    ).eval()
    grad_ratio("CNN on 28×28 (2 conv + linear)", cnn, torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,)))
    print("2. projection throughput ÷ torch.matmul throughput")
    projection_ratio(256, 100_000, 1024)
    projection_ratio(2048, 100_000, 1024)


if __name__ == "__main__":
    main()
