"""Efficient ensembles: LDS against training time, serving time and storage (Pareto plots, PNG + HTML).

    OMP_NUM_THREADS=1 python benchmarks/ensemble_pareto.py [--benchmarks digits-mlp,mnist5k-mlp]
        [--methods trak,if,graddot] [--grid reduced|full] [--out ensemble-pareto] [--workers 2]

For each benchmark and attribution method (TRAK; influence function with EK-FAC; Grad-Dot), every ensemble
configuration of the grid is fitted and scored with ``dt.Ensemble``, and its LDS (Spearman, mean over the queries)
is measured against the benchmark's cached subset-retraining ground truth. Members: independent full-data models,
independent half-data models (TRAK's protocol), checkpoints of one run, dropout with fixed masks (``mask="member"``),
dropout with per-example masks (``mask="sample"``), TRAK's Q-only dropout, and LoRA adapters. The grid is
K ∈ {1, 2, 4, 8} models × M ∈ {1, 2, 4, 8, 16} members per model (``--grid full``); ``--grid reduced`` keeps the
corners that decide the comparison (1 model × every M, and K ∈ {2, 4} × 4 masks) so that it finishes on 2 CPU cores.

Costs, all measured in this process, one thread: training time = training the base models (each trained once, its
time charged to every configuration that uses it) + LoRA fine-tuning; serving time = the ensemble's fit + score;
storage = member weights + cached training features (reported apart). The paper's targets are then checked against
each independent ensemble of K_ref ∈ {2, 4, 8} models: the cheapest configuration with LDS ≥ 95% of its LDS, and the
ratio of its training time / serving time / storage to the independent ensemble's. Outputs in ``--out``:
``results.json``, ``pareto-<benchmark>-<method>.png`` and ``report.html`` (self-contained); ``--from-json`` redraws
them from an earlier ``results.json``. "efficient" in the targets = any configuration but the independent ones.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import datatrace as dt
from datatrace._utils import derive_seed
from datatrace.apps import report
from datatrace.benchmarks import get

KS, MS = (1, 2, 4, 8), (1, 2, 4, 8, 16)
REF_KS = (2, 4, 8)
FAMILIES = ("independent", "half", "checkpoints", "dropout", "dropout-sample", "q_only", "lora")
COLORS = {
    "independent": "#222222",
    "half": "#4c72b0",
    "checkpoints": "#8172b2",
    "dropout": "#dd8452",
    "dropout-sample": "#c44e52",
    "q_only": "#55a868",
    "lora": "#937860",
}


@dataclass
class Row:
    benchmark: str
    method: str
    family: str
    n_models: int
    n_members: int
    lds: float
    train_s: float
    serve_s: float
    weight_bytes: int
    feature_bytes: int
    peak_mem_bytes: int

    @property
    def storage_bytes(self) -> int:
        return self.weight_bytes + self.feature_bytes

    @property
    def label(self) -> str:
        return f"{self.family} K={self.n_models}" + (
            "" if self.family in ("independent", "half") else f" M={self.n_members}"
        )


def factories(task):
    return {
        "trak": lambda ms: dt.TRAK(ms, task, verbose=False),
        "if": lambda ms: dt.InfluenceFunction(ms, task, solver="ekfac", verbose=False),
        "graddot": lambda ms: dt.GradDot(ms, task, proj_dim="auto", verbose=False),
    }


def grid(method: str, size: str, n_checkpoints: int):
    """``(family, K, M)`` configurations; ``q_only`` only for TRAK."""
    full = size == "full"
    for k in KS:
        yield "independent", k, 1
        yield "half", k, 1
        for m in range(1, n_checkpoints + 1):
            if full or m == n_checkpoints:
                yield "checkpoints", k, m
    for family in ("dropout", "dropout-sample", "q_only", "lora"):
        if family == "q_only" and method != "trak":
            continue
        for k in KS:
            for m in MS:
                keep = full or (k == 1) or (m == 4 and k in (2, 4))
                if family in ("dropout-sample", "lora") and not full:
                    keep = k == 1 and m in (1, 4, 16) or (family == "lora" and k == 2 and m == 4)
                if keep:
                    yield family, k, m


class Models:
    """Base models trained once each (full data, random half, checkpoint runs), with their training times."""

    def __init__(self, bench, train, seed: int = 0):
        self.bench, self.train, self.seed = bench, train, seed
        self._cache: dict[tuple, tuple[list, float]] = {}

    def get(self, family: str, k: int) -> tuple[list, float]:
        """The first ``k`` base models of a family (lists of checkpoints for "checkpoints") and their training time."""
        out, total = [], 0.0
        for r in range(k):
            key = (family if family in ("half", "checkpoints") else "full", r)
            if key not in self._cache:
                self._cache[key] = self._train(*key)
            model, seconds = self._cache[key]
            out.append(model)
            total += seconds
        return out, total

    def _train(self, family: str, r: int):
        # The same subsets and seeds as dt.Ensemble(train_fn=...) uses, so that its results are reproduced here.
        data, seed = self.train, derive_seed(self.seed, r) % 2**31
        t0 = time.perf_counter()
        if family == "half":
            import numpy as np

            rng = np.random.default_rng(derive_seed(self.seed, "half-model", r))
            n = len(data)
            model = self.bench.train_fn(data.subset(np.sort(rng.choice(n, n // 2, replace=False))), seed)
        elif family == "checkpoints":
            model = self.bench.checkpoints(data, seed)[0]
        else:
            model = self.bench.train_fn(data, seed)
        return model, time.perf_counter() - t0


def run_config(bench_name, method, family, k, m, factory, models: Models, train, query, gt) -> Row:
    base_family = {"half": "half", "checkpoints": "checkpoints"}.get(family, "full")
    bases, train_s = models.get(base_family, k)
    if family == "checkpoints":
        members = [c for run in bases for c in run[-m:]]
        ens = dt.Ensemble(factory, "independent", models=members, verbose=False)
    elif family in ("independent", "half"):
        ens = dt.Ensemble(factory, "independent", models=bases, verbose=False)
    elif family == "lora":
        ens = dt.Ensemble(factory, "lora", models=bases, n_members=m, verbose=False)
    else:
        options = {"mask": "sample"} if family == "dropout-sample" else {"q_only": family == "q_only"}
        ens = dt.Ensemble(factory, "dropout", models=bases, n_members=m, verbose=False, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = ens.fit(train).score(query).values
    c = ens.costs_
    weights = c.weight_bytes
    if family == "checkpoints":  # every checkpoint of the run is stored, also those not used
        weights = sum(p.numel() * p.element_size() for run in bases for ck in run for p in ck.parameters())
    return Row(
        bench_name,
        method,
        family,
        k,
        m,
        float(dt.eval.lds(values, gt).mean),
        train_s + c.train_s,
        c.serve_s,
        weights,
        c.feature_bytes,
        c.peak_mem_bytes,
    )


def targets(rows: list[Row]) -> list[dict]:
    """Per independent ensemble of K_ref models: the cheapest configuration within 95% of its LDS, per cost."""
    out = []
    independent = {r.n_models: r for r in rows if r.family == "independent"}
    for k_ref in REF_KS:
        ref = independent.get(k_ref)
        if ref is None:
            continue
        good = [r for r in rows if r.lds >= 0.95 * ref.lds and r is not ref]
        entry = {"reference": f"independent K={k_ref}", "reference_lds": ref.lds}
        for cost, fields in (("train", "train_s"), ("serve", "serve_s"), ("storage", "storage_bytes")):
            scopes = (
                ("any", good),
                ("efficient", [r for r in good if r.family != "independent"]),
                ("q_only", [r for r in good if r.family == "q_only"]),
            )
            for scope, pool in scopes:
                if not pool:
                    entry[f"{cost}_{scope}"] = None
                    continue
                best = min(pool, key=lambda r: getattr(r, fields))
                entry[f"{cost}_{scope}"] = {
                    "config": best.label,
                    "lds": best.lds,
                    "ratio": getattr(best, fields) / getattr(ref, fields),
                }
        out.append(entry)
    return out


def pareto_png(rows: list[Row], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - optional
        raise SystemExit("The PNG plots need matplotlib: pip install 'datatrace[benchmarks]'.") from err
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), sharey=True)
    for ax, (attr, label) in zip(
        axes, (("train_s", "training time (s)"), ("serve_s", "serving time (s)"), ("storage_bytes", "storage (bytes)"))
    ):
        for family in FAMILIES:
            pts = [r for r in rows if r.family == family]
            if pts:
                ax.scatter([getattr(r, attr) for r in pts], [r.lds for r in pts], c=COLORS[family], label=family, s=28)
        ordered = sorted(rows, key=lambda r: getattr(r, attr))
        frontier, best = [], float("-inf")
        for r in ordered:
            if r.lds > best:
                frontier.append(r)
                best = r.lds
        ax.step([getattr(r, attr) for r in frontier], [r.lds for r in frontier], where="post", c="#999", lw=1)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("LDS")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def html_report(rows: list[Row], checks: dict, pngs: list[Path]) -> str:
    body = [
        '<p class="note">LDS (Spearman, mean over queries) against training time, serving time (fit + score) and '
        "storage (weights + cached features); grey line: Pareto frontier. Costs measured on one thread.</p>"
    ]
    for png in pngs:
        data = base64.b64encode(png.read_bytes()).decode()
        body.append(f'<h2>{png.stem}</h2><img src="data:image/png;base64,{data}" alt="{png.stem}">')
    for key, entries in checks.items():
        body.append(f"<h2>Targets: {key}</h2>")
        header = ["reference", "LDS", "training ≤ 25%", "serving ≤ 40% (q_only)", "serving", "storage ≤ 20%"]
        body.append(report.table(header, [_target_cells(e) for e in entries], align="left"))
    header = ["benchmark", "method", "configuration", "LDS", "train s", "serve s", "weights B", "features B"]
    cells = [
        [r.benchmark, r.method, r.label, f"{r.lds:.3f}", f"{r.train_s:.2f}", f"{r.serve_s:.2f}", r.weight_bytes]
        + [r.feature_bytes]
        for r in rows
    ]
    body += ["<h2>All configurations</h2>", report.table(header, cells)]
    return report.page("Efficient ensembles: Pareto fronts", "".join(body))


def _target_cells(entry: dict) -> list[str]:
    def show(x):
        return "none within 95%" if x is None else f"{x['ratio']:.0%} ({x['config']}, LDS {x['lds']:.3f})"

    return [
        entry["reference"],
        f"{entry['reference_lds']:.3f}",
        show(entry["train_efficient"]),
        show(entry["serve_q_only"]),
        show(entry["serve_efficient"]),
        show(entry["storage_efficient"]),
    ]


def redraw(out: Path, rows: list[Row]) -> None:
    checks, pngs = {}, []
    for key in dict.fromkeys((r.benchmark, r.method) for r in rows):
        mine = [r for r in rows if (r.benchmark, r.method) == key]
        checks[" ".join(key)] = targets(mine)
        pngs.append(out / f"pareto-{key[0]}-{key[1]}.png")
        pareto_png(mine, pngs[-1], f"{key[0]}: {key[1]}")
    (out / "results.json").write_text(json.dumps({"rows": [asdict(r) for r in rows], "targets": checks}, indent=1))
    (out / "report.html").write_text(html_report(rows, checks, pngs))
    print(json.dumps(checks, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", default="digits-mlp,mnist5k-mlp")
    parser.add_argument("--methods", default="trak,if,graddot")
    parser.add_argument("--grid", choices=("reduced", "full"), default="reduced")
    parser.add_argument("--out", default="ensemble-pareto")
    parser.add_argument("--workers", type=int, default=2, help="ground-truth retraining workers (cached after once)")
    parser.add_argument("--from-json", help="redraw plots and targets from a results.json of an earlier run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        redraw(out, [Row(**r) for r in json.loads(Path(args.from_json).read_text())["rows"]])
        return
    rows: list[Row] = []
    checks, pngs = {}, []
    for bench_name in args.benchmarks.split(","):
        bench = get(bench_name)
        train, query = bench.data()
        gt = bench.ground_truth(workers=args.workers, verbose=False)
        models = Models(bench, train)
        n_checkpoints = len(models.get("checkpoints", 1)[0][0])
        for method in args.methods.split(","):
            factory = factories(bench.task)[method]
            mine = []
            for family, k, m in grid(method, args.grid, n_checkpoints):
                row = run_config(bench_name, method, family, k, m, factory, models, train, query, gt)
                mine.append(row)
                print(
                    f"{bench_name} {method:8s} {row.label:28s} LDS {row.lds:.3f}  train {row.train_s:7.2f}s  "
                    f"serve {row.serve_s:7.2f}s  weights {row.weight_bytes:>9d}B  features {row.feature_bytes:>10d}B",
                    flush=True,
                )
            rows += mine
            checks[f"{bench_name} {method}"] = targets(mine)
            png = out / f"pareto-{bench_name}-{method}.png"
            pareto_png(mine, png, f"{bench_name}: {method}")
            pngs.append(png)
            (out / "results.json").write_text(
                json.dumps({"rows": [asdict(r) for r in rows], "targets": checks}, indent=1)
            )
            (out / "report.html").write_text(html_report(rows, checks, pngs))
    print(json.dumps(checks, indent=1))


if __name__ == "__main__":
    main()
