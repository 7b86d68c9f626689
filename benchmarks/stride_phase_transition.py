"""Phase transition of STRIDE's sparse recovery: exact-support recovery rate over sparsity k and subsets K.

    OMP_NUM_THREADS=1 python benchmarks/stride_phase_transition.py [--n 2000] [--trials 10] [--out phase.svg]

For every (k, K) on a grid: ``trials`` planted problems y = M w + 0.01·noise with a balanced left-10-regular design
of K subsets over n examples and a k-sparse w (|w_j| ∈ [1, 2], random signs), solved by ``recover`` (FISTA,
λ = 0.1·λ_max, intercept fitted). A trial succeeds when support precision and recall are both ≥ 0.95. Prints the
success-rate table with the line K = 4·k·ln(n/k) marked, and writes an SVG heat map (white = 0, black = 1).
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np

from datatrace.stride import design, recover

KS = (2, 5, 10, 20, 40)
SUBSETS = (25, 50, 100, 200, 400, 800)


def success_rate(n: int, k: int, K: int, trials: int, seed: int) -> float:
    m = design(n, K, min(10, K), seed=seed)
    rng = np.random.default_rng(seed)
    W = np.zeros((n, trials))
    for t in range(trials):
        W[rng.choice(n, k, replace=False), t] = rng.choice([-1, 1], k) * rng.uniform(1, 2, k)
    Y = m.to_scipy() @ W + 0.01 * rng.standard_normal((K, trials))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = recover(m, Y, solver="fista", verbose=False).toarray()
    hit = ((got != 0) & (W != 0)).sum(0)
    precision = hit / np.maximum((got != 0).sum(0), 1)
    recall = hit / k
    return float(((precision >= 0.95) & (recall >= 0.95)).mean())


def svg(rates: np.ndarray, path: str) -> None:
    cell, pad = 40, 60
    width, height = pad + cell * len(SUBSETS), pad + cell * len(KS)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">']
    for i, k in enumerate(KS):
        parts.append(f'<text x="5" y="{pad + cell * i + 25}">k={k}</text>')
        for j in range(len(SUBSETS)):
            g = int(255 * (1 - rates[i, j]))
            x, y = pad + cell * j, pad + cell * i
            parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="rgb({g},{g},{g})"/>')
    for j, K in enumerate(SUBSETS):
        parts.append(f'<text x="{pad + cell * j + 5}" y="{pad - 10}">K={K}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", default="stride_phase_transition.svg")
    args = parser.parse_args()
    rates = np.array([[success_rate(args.n, k, K, args.trials, seed=i) for K in SUBSETS] for i, k in enumerate(KS)])
    print("success rate (rows k, columns K); * = K ≥ 4·k·ln(n/k)")
    print("k\\K   " + " ".join(f"{K:>6d}" for K in SUBSETS))
    for i, k in enumerate(KS):
        bound = 4 * k * math.log(args.n / k)
        cells = " ".join(f"{r:5.2f}{'*' if K >= bound else ' '}" for r, K in zip(rates[i], SUBSETS))
        print(f"{k:<5d} {cells}")
    svg(rates, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
