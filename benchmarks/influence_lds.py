"""Influence functions and LoGra on digits-logreg and digits-mlp: LDS, wall time, defaults against a sweep.

    OMP_NUM_THREADS=1 python benchmarks/influence_lds.py [--json out.json] [--only digits-mlp]

For every solver of ``dt.InfluenceFunction`` (explicit, CG, LiSSA, Arnoldi, KFAC, EK-FAC) and for ``dt.LoGra``:
LDS (Spearman, mean over the 100 queries, 95% bootstrap CI) against each benchmark's 64 retrainings on random 50%
subsets, and the wall time of ``fit`` + ``score`` (training gradients, Hessian or factors, and the 100 × 1,000
scores). The first setting of each method is its default; the sweep looks at query LDS, so "best" is optimistic by
construction — the defaults in the code were read off this table (goal: within 0.05 LDS of the best). The peer
pitfalls (damping 1e-8 for EK-FAC, 10 CG iterations) are included for reference. Settings that the method refuses
(e.g. the exact Hessian of the MLP, indefinite at small damping) are printed with the error.

Then, for EK-FAC alone: the time of the factor passes and the bytes of the factors, next to the explicit Hessian.
Times are for one thread (set ``OMP_NUM_THREADS=1`` on a shared machine; absolute times mean little elsewhere).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import datatrace as dt
from datatrace.attributors.kfac import fit_factors, kronecker_layers
from datatrace.benchmarks import get
from datatrace.grads import select_parameters

DAMPINGS = (0.03, 0.1, 0.3, 0.5, 1.0, 3.0)
KRONECKER_DAMPINGS = (0.01, 0.03, 0.1, 0.3, 1.0)


def configurations(model, task):
    """``(method, setting, factory)``; the first setting of each method is its default."""

    def influence(solver, **kw):
        return lambda: dt.InfluenceFunction(model, task, solver=solver, verbose=False, **kw)

    yield "IF explicit", "default (damping 0.5)", influence("explicit")
    for d in DAMPINGS:
        if d != 0.5:
            yield "IF explicit", f"damping={d}", influence("explicit", damping=d)
    yield "IF explicit", "hessian=exact", influence("explicit", hessian="exact")
    yield "IF explicit", "hessian=exact damping=3", influence("explicit", hessian="exact", damping=3.0)
    yield "IF CG", "default (damping 0.5, tol 1e-5)", influence("cg")
    yield "IF CG", "damping=1", influence("cg", damping=1.0)
    yield "IF CG", "max_iter=10 (peer default)", influence("cg", max_iter=10)
    yield "IF Arnoldi", "default (rank 128)", influence("arnoldi")
    for r in (32, 64, 256):
        yield "IF Arnoldi", f"rank={r}", influence("arnoldi", rank=r)
    yield "IF LiSSA", "default (depth 5000, batch 64)", influence("lissa")
    yield "IF LiSSA", "lissa_batch_size=256", influence("lissa", lissa_batch_size=256)
    for solver in ("kfac", "ekfac"):
        name = {"kfac": "IF KFAC", "ekfac": "IF EK-FAC"}[solver]
        yield name, "default (damping 0.1)", influence(solver)
        for d in KRONECKER_DAMPINGS:
            if d != 0.1:
                yield name, f"damping={d}", influence(solver, damping=d)
    yield "IF EK-FAC", "damping_abs=1e-8 (peer default)", influence("ekfac", damping_abs=1e-8)

    def logra(**kw):
        return lambda: dt.LoGra(model, task, verbose=False, **kw)

    yield "LoGra", "default (rank 64, EK-FAC, damping 0.1)", logra()
    for r in (4, 16, 32):
        yield "LoGra", f"rank={r}", logra(rank=r)
    for d in (0.03, 0.3):
        yield "LoGra", f"damping={d}", logra(damping=d)
    yield "LoGra", "precondition=identity", logra(precondition="identity")


def factor_cost(model, task, train) -> dict:
    """EK-FAC factor time (both passes) and storage, against the explicit Hessian's size."""
    names = select_parameters(model)
    layers = kronecker_layers(model, names, "ekfac")
    t0 = time.perf_counter()
    factors = fit_factors(model, task, train, layers, "ekfac", 512, verbose=False)
    seconds = time.perf_counter() - t0
    arrays = [*factors.q_in.values(), *factors.q_out.values(), *factors.eigenvalues.values()]
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "seconds": seconds,
        "factor_bytes": sum(a.numel() * a.element_size() for a in arrays),
        "explicit_hessian_bytes": 8 * n_params**2,
        "n_params": n_params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--only", help="run one benchmark (digits-logreg or digits-mlp)")
    parser.add_argument("--workers", type=int, default=2, help="processes for the ground truth (first run only)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", dt.DatatraceWarning)
    results, costs = [], {}
    for name in [args.only] if args.only else ["digits-logreg", "digits-mlp"]:
        bench = get(name)
        train, query = bench.data()
        gt = bench.ground_truth(workers=args.workers, verbose=False)
        model = bench.model(seed=0)
        print(f"\n{name}: {len(train)} training images, {len(query)} queries, {len(gt.masks)} retrained subsets")
        print(f"{'method':<12}{'setting':<40}{'LDS [95% CI]':<26}seconds")
        for method, setting, make in configurations(model, bench.task):
            t0 = time.perf_counter()
            try:
                res = dt.eval.lds(make().fit(train).score(query), gt)
            except dt.DatatraceError as e:
                print(f"{method:<12}{setting:<40}refused: {str(e)[:70]}")
                continue
            row = {"benchmark": name, "method": method, "setting": setting, "lds": res.mean, "ci": list(res.ci)}
            row["seconds"] = time.perf_counter() - t0
            results.append(row)
            ci = f"{res.mean:.3f} [{res.ci[0]:.3f}, {res.ci[1]:.3f}]"
            print(f"{method:<12}{setting:<40}{ci:<26}{row['seconds']:.1f}", flush=True)
        costs[name] = factor_cost(model, bench.task, train)
    print("\ndefaults against the best swept setting (LDS)")
    for name in dict.fromkeys(r["benchmark"] for r in results):
        for method in dict.fromkeys(r["method"] for r in results if r["benchmark"] == name):
            rows = [r for r in results if r["benchmark"] == name and r["method"] == method]
            best = max(rows, key=lambda r: r["lds"])
            print(
                f"{name:<15}{method:<12} default {rows[0]['lds']:.3f} ({rows[0]['seconds']:.1f} s)   "
                f"best {best['lds']:.3f} ({best['setting']})   gap {best['lds'] - rows[0]['lds']:.3f}"
            )
    print("\nEK-FAC factors (covariance pass + eigenvalue-correction pass)")
    for name, c in costs.items():
        print(
            f"{name:<15}{c['seconds']:.2f} s, {c['factor_bytes'] / 2**10:.0f} KiB of factors "
            f"(explicit Hessian of {c['n_params']:,} parameters: {c['explicit_hessian_bytes'] / 2**20:.1f} MiB)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "ekfac_factors": costs}, f, indent=1)


if __name__ == "__main__":
    main()
