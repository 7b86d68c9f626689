"""STRIDE on digits-mlp: LDS and time next to TRAK, Grad-Dot, Grad-Cos and LoGra; ablations; operator fidelity;
fit time against n.

    OMP_NUM_THREADS=1 python benchmarks/stride_lds.py [--bench digits-mlp]
        [--parts compare,ablation,ceiling,fidelity,fit_n] [--ablations "steps 1000;rank=16"] [--json out.json]

- ``compare``: every method at its defaults, and STRIDE with λ chosen on held-out subsets, on the benchmark's model
  (seed 0) and ground truth (64 random halves × 2 seeds): LDS (Spearman, mean over the 100 queries, 95% bootstrap
  CI) and wall time of ``fit`` + ``score``.
- ``ablation``: STRIDE with one setting changed at a time (K, d, rank, layer/mode, each loss term, refinement,
  damping, λ, solver, back-projection instead of the Lasso). These numbers look at query LDS. Most defaults come from
  stride-spec.md §9 and were only re-checked here; the logit-mode rank (64) and the refinement's damping (1) were
  chosen from this table on digits-mlp, never from mnist5k-mlp.
- ``fidelity``: do the operators reproduce the effect of the subsets they stand for? For 40 subsets k, the base
  model is fine-tuned 30 full-batch Adam steps (lr 1e-3) on (mean training loss + mean loss on subset k), and,
  as control, on the mean training loss alone; the measured effect on query x is loss_control(x) − loss_k(x).
  Reported: Spearman between y_{x,k} and that effect over all (x, k) pairs, and over k of the per-subset mean.
- ``ceiling``: how far sparse recovery and logit-mode operators can go. TRAK's scores τ (all parameters; the last
  layer only, the parameters a logit-mode operator perturbs; the first layer only) are turned into exact responses
  y = Mτ on STRIDE's default design and recovered by the same Lasso (alpha 0.1 and "heldout"): LDS of τ, and of the
  recovery.
- ``fit_n``: STRIDE fit time for n = 250, 500, 1000 training examples (K = 1000 fixed, 300 steps): the cost of a
  step depends on neither n nor K.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings

import numpy as np
import torch
from scipy.stats import spearmanr

import datatrace as dt
from datatrace.benchmarks import get
from datatrace.benchmarks.recipes import l2_penalty
from datatrace.stride import auto_size, backproject, design, recover

PARTS = ("compare", "ablation", "ceiling", "fidelity", "fit_n")


def timed(make, train, query):
    start = time.perf_counter()
    scores = make().fit(train).score(query)
    values = scores.values
    return values, time.perf_counter() - start


def compare(bench, model, train, query, gt, out):
    methods = {
        "STRIDE": lambda: dt.STRIDE(model, bench.task, verbose=False),
        "STRIDE (alpha heldout)": lambda: dt.STRIDE(model, bench.task, alpha="heldout", verbose=False),
        "TRAK": lambda: dt.TRAK(model, bench.task, verbose=False),
        "Grad-Dot": lambda: dt.GradDot(model, bench.task, verbose=False),
        "Grad-Cos": lambda: dt.GradCos(model, bench.task, verbose=False),
        "LoGra": lambda: dt.LoGra(model, bench.task, verbose=False),
    }
    for name, make in methods.items():
        values, seconds = timed(make, train, query)
        res = dt.eval.lds(values, gt)
        out.append({"part": "compare", "method": name, "lds": res.mean, "ci": list(res.ci), "seconds": seconds})
        print(f"{name:34s} {res} (mean {res.mean:.4f})  {seconds:6.1f} s", flush=True)


ABLATIONS = {
    "default (K=1000, d=10, r=64, logit, stab 10, lin 0, Newton, damping 1, alpha 0.1)": {},
    "K=250": {"n_subsets": 250},
    "K=500": {"n_subsets": 500},
    "K=2000": {"n_subsets": 2000},
    "d=1": {"degree": 1},
    "d=5": {"degree": 5},
    "d=20": {"degree": 20},
    "rank=4": {"rank": 4},
    "rank=16": {"rank": 16},
    "rank=32": {"rank": 32},
    "activation mode, layer 0 (first Linear)": {"mode": "activation", "layer": 0},
    "activation mode, layer 1 (hidden ReLU)": {"mode": "activation", "layer": 1},
    "stability off": {"stability": 0.0},
    "stability 1": {"stability": 1.0},
    "stability 30": {"stability": 30.0},
    "linearity 1": {"linearity": 1.0},
    "no Newton refinement (Adam iterate)": {"refine": "none"},
    "no Newton refinement, rank=16": {"refine": "none", "rank": 16},
    "damping 0": {"damping": 0.0},
    "damping 0.3": {"damping": 0.3},
    "damping 3": {"damping": 3.0},
    "steps 1000": {"steps": 1000},
    "steps 1000, early stopping (patience 4)": {"steps": 1000, "patience": 4},
    "alpha 0.03": {"alpha": 0.03},
    "alpha 0.3": {"alpha": 0.3},
    "alpha heldout": {"alpha": "heldout"},
    "solver fista": {"solver": "fista"},
    "alpha heldout, solver fista": {"alpha": "heldout", "solver": "fista"},
    "no tie-break": {"tie_break": False},
}


def ablation(bench, model, train, query, gt, out, names=None):
    unknown = set(names or ()) - set(ABLATIONS)
    if unknown:
        raise SystemExit(f"unknown ablations {sorted(unknown)}; valid: {list(ABLATIONS)}")
    for name, kw in ABLATIONS.items():
        if names and name not in names:
            continue
        a = dt.STRIDE(model, bench.task, verbose=False, **kw)
        start = time.perf_counter()
        a.fit(train)
        values = a.score(query).values
        seconds = time.perf_counter() - start
        res = dt.eval.lds(values, gt)
        out.append({"part": "ablation", "setting": name, "lds": res.mean, "ci": list(res.ci), "seconds": seconds})
        print(f"{name:62s} {res}  {seconds:6.1f} s", flush=True)
        if not kw:
            Y = a.responses(query)
            bp = backproject(a.design_, Y.T).T
            res = dt.eval.lds(bp, gt)
            out.append({"part": "ablation", "setting": "back-projection Mᵀy/d", "lds": res.mean, "ci": list(res.ci)})
            print(f"{'back-projection Mᵀy/d (same operators)':62s} {res}", flush=True)


def ceiling(bench, model, train, query, gt, out):
    membership = design(len(train), *auto_size(len(train)), seed=0)
    first = next(model.named_children())[0] + "."
    first_layer = [name for name, _ in model.named_parameters() if name.startswith(first)]
    for label, params in (("all", "all"), ("last layer", "last"), ("first layer", first_layer)):
        tau = dt.TRAK(model, bench.task, params=params, verbose=False).fit(train).score(query).values
        row = {"part": "ceiling", "params": label, "lds": dt.eval.lds(tau, gt).mean}
        Y = membership.to_scipy() @ tau.T.astype(np.float64)
        for alpha in (0.1, "heldout"):
            W = recover(membership, Y, alpha=alpha, verbose=False).toarray().T
            row[f"lds_recovered_alpha_{alpha}"] = dt.eval.lds(W, gt).mean
        out.append(row)
        print(
            f"TRAK ({label} parameters): LDS {row['lds']:.3f}; through M and the Lasso: alpha 0.1 "
            f"{row['lds_recovered_alpha_0.1']:.3f}, heldout {row['lds_recovered_alpha_heldout']:.3f}",
            flush=True,
        )


def fine_tuned(model, x, y, weight_idx, steps=30, lr=1e-3, l2=1e-3):
    m = copy.deepcopy(model).train().requires_grad_(True)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    ce = torch.nn.functional.cross_entropy
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = ce(m(x), y) + l2_penalty(m, l2)
            if weight_idx is not None:
                loss = loss + ce(m(x[weight_idx]), y[weight_idx])
            loss.backward()
            opt.step()
    return m.eval()


def fidelity(bench, model, train, query, out, n_subsets=40):
    a = dt.STRIDE(model, bench.task, verbose=False).fit(train)
    Y = a.responses(query)
    x, y = train.tensors()
    xq, yq = query.tensors()
    with torch.no_grad():
        control = bench.task.loss(fine_tuned(model, x, y, None), (xq, yq))
    ks = np.random.default_rng(0).choice(a.n_subsets_, n_subsets, replace=False)
    effects = []
    for k in ks:
        members = torch.as_tensor(a.design_.members(int(k)))
        with torch.no_grad():
            effects.append((control - bench.task.loss(fine_tuned(model, x, y, members), (xq, yq))).numpy())
    effects = np.stack(effects, 1)  # (Q, n_subsets)
    pairs = spearmanr(Y[:, ks].ravel(), effects.ravel())[0]
    per_query = np.nanmean([spearmanr(Y[q, ks], effects[q])[0] for q in range(len(Y))])
    out.append({"part": "fidelity", "spearman_pairs": pairs, "spearman_per_query_mean": per_query})
    print(f"operator fidelity: Spearman(y, fine-tuning effect) over pairs {pairs:.3f}, per query mean {per_query:.3f}")


def fit_n(bench, model, train, out):
    for n in (250, 500, 1000):
        a = dt.STRIDE(model, bench.task, n_subsets=1000, degree=10, verbose=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # n·d/K < 10 members per subset at small n: expected here
            a.fit(train.subset(np.arange(n)))
        out.append({"part": "fit_n", "n": n, "fit_seconds": a.fit_seconds_})
        print(f"fit n={n:5d}: {a.fit_seconds_:.1f} s (operator training)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default="digits-mlp")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--ablations", help="only these ablation settings, separated by ';' (default: all)")
    parser.add_argument("--json")
    args = parser.parse_args()
    parts = args.parts.split(",")
    bench = get(args.bench)
    train, query = bench.data()
    model = bench.model()
    gt = bench.ground_truth(workers=1) if {"compare", "ablation", "ceiling"} & set(parts) else None
    out: list[dict] = []
    if "compare" in parts:
        compare(bench, model, train, query, gt, out)
    if "ceiling" in parts:
        ceiling(bench, model, train, query, gt, out)
    if "fidelity" in parts:
        fidelity(bench, model, train, query, out)
    if "fit_n" in parts:
        fit_n(bench, model, train, out)
    if "ablation" in parts:
        ablation(bench, model, train, query, gt, out, args.ablations and args.ablations.split(";"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)


if __name__ == "__main__":
    main()
