"""Efficient ensembles: LDS against training time, serving time and storage (Pareto plots, PNG + HTML).

    OMP_NUM_THREADS=1 python benchmarks/ensemble_pareto.py [--benchmarks digits-mlp,mnist5k-mlp,tinylm-micro]
        [--methods trak,if,graddot] [--grid reduced|full|SPEC] [--out ensemble-pareto] [--workers 2]

For each benchmark and attribution method (TRAK; influence function with EK-FAC; Grad-Dot), every ensemble
configuration of the grid is fitted and scored with ``dt.Ensemble``, and its LDS (Spearman, mean over the queries)
is measured against the benchmark's cached subset-retraining ground truth. Members: independent full-data models,
independent half-data models (TRAK's protocol), checkpoints of one run, dropout with fixed masks (``mask="member"``),
dropout with per-example masks (``mask="sample"``), TRAK's Q-only dropout, and LoRA adapters. The grid is
K ∈ {1, 2, 4, 8} models × M ∈ {1, 2, 4, 8, 16} members per model (``--grid full``); ``--grid reduced`` keeps the
corners that decide the comparison (1 model × every M, and K ∈ {2, 4} × 4 masks) so that it finishes on 2 CPU cores.
A SPEC names the configurations, e.g. ``"independent=1,2,4,8;half=1,2,4,8;dropout=1,4,8,16;lora=1,4"``: for
``independent``, ``half`` and ``checkpoints`` the numbers are K (checkpoints: the last ``n_checkpoints`` of each
run); for ``dropout``, ``dropout-sample``, ``q_only`` and ``lora`` they are M on one model, or ``KxM``.
Benchmarks without training checkpoints (the language models ``tinylm-micro`` and ``tinylm-fortunes``) have no
checkpoint rows. Language models get EK-FAC influence on their ``nn.Linear`` layers (the registry's ``if-ekfac``).

Costs, all measured in this process, one thread: training time = training the base models (each trained once, its
time charged to every configuration that uses it) + LoRA fine-tuning; serving time = the ensemble's fit + score;
storage = member weights + cached training features (reported apart). The paper's targets are then checked against
each independent ensemble of K_ref ∈ {2, 4, 8} models: the cheapest configuration with LDS ≥ 95% of its LDS, and the
ratio of its training time / serving time / weight storage / feature storage to the independent ensemble's (the
paper's storage claim is about weights; TRAK's cached features are reported apart because they dominate). "efficient"
= any configuration but the independent ones; "paper" = the paper's own kinds (dropout, Q-only, LoRA). Every row also
carries its cost ratios to the independent ensemble with as many members (K·M), where that one was measured.
Outputs in ``--out``: ``results.json``, ``table.md``, ``pareto-<benchmark>-<method>.png`` and ``report.html``
(self-contained); ``--from-json a.json,b.json`` merges and redraws earlier runs' ``results.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import datatrace as dt
from datatrace._utils import derive_seed
from datatrace.apps import report
from datatrace.benchmarks import get
from datatrace.benchmarks.methods import layer_params
from datatrace.errors import InputError

KS, MS = (1, 2, 4, 8), (1, 2, 4, 8, 16)
REF_KS = (2, 4, 8)
FAMILIES = ("independent", "half", "checkpoints", "dropout", "dropout-sample", "q_only", "lora")
MODEL_FAMILIES = ("independent", "half", "checkpoints")  # grid numbers are K; for the others M (or KxM)
PAPER_FAMILIES = ("dropout", "dropout-sample", "q_only", "lora")
#: Costs compared with the reference ensembles: Row attribute and its name in the targets.
COSTS = (("train_s", "train"), ("serve_s", "serve"), ("weight_bytes", "weights"), ("feature_bytes", "features"))
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
    lds_ci: tuple[float, float] | None = None

    @property
    def storage_bytes(self) -> int:
        return self.weight_bytes + self.feature_bytes

    @property
    def size(self) -> int:
        """Number of members whose scores are combined (K·M)."""
        return self.n_models * self.n_members

    @property
    def label(self) -> str:
        return f"{self.family} K={self.n_models}" + (
            "" if self.family in ("independent", "half") else f" M={self.n_members}"
        )


def factories(task):
    return {
        "trak": lambda ms: dt.TRAK(ms, task, verbose=False),
        "if": lambda ms: dt.InfluenceFunction(ms, task, solver="ekfac", params=layer_params(ms[0]), verbose=False),
        "graddot": lambda ms: dt.GradDot(ms, task, proj_dim="auto", verbose=False),
    }


def grid(method: str, size: str, n_checkpoints: int):
    """``(family, K, M)`` configurations; ``q_only`` only for TRAK, ``checkpoints`` only with ``n_checkpoints``."""
    if size not in ("reduced", "full"):
        yield from parse_grid(size, method, n_checkpoints)
        return
    full = size == "full"
    for k in KS:
        yield "independent", k, 1
        yield "half", k, 1
        for m in range(1, n_checkpoints + 1):
            if full or m == n_checkpoints:
                yield "checkpoints", k, m
    for family in PAPER_FAMILIES:
        if family == "q_only" and method != "trak":
            continue
        for k in KS:
            for m in MS:
                keep = full or (k == 1) or (m == 4 and k in (2, 4))
                if family in ("dropout-sample", "lora") and not full:
                    keep = k == 1 and m in (1, 4, 16) or (family == "lora" and k == 2 and m == 4)
                if keep:
                    yield family, k, m


def parse_grid(spec: str, method: str, n_checkpoints: int):
    """``(family, K, M)`` from ``"family=a,b;family=KxM,..."`` (see the module docstring)."""
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        family, _, values = part.partition("=")
        family = family.strip()
        if family not in FAMILIES or not re.fullmatch(r"\s*\d+(x\d+)?(\s*,\s*\d+(x\d+)?)*\s*", values):
            raise InputError(
                f"Bad grid entry {part!r}: write family=N,N,... (or KxM for member families) with a family in "
                f"{', '.join(FAMILIES)}."
            )
        if family == "q_only" and method != "trak" or family == "checkpoints" and not n_checkpoints:
            continue
        for value in values.split(","):
            k, _, m = value.strip().partition("x")
            if family in MODEL_FAMILIES:
                yield family, int(value), n_checkpoints if family == "checkpoints" else 1
            else:
                yield (family, int(k), int(m)) if m else (family, 1, int(k))


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
    lds = dt.eval.lds(values, gt)
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
        float(lds.mean),
        train_s + c.train_s,
        c.serve_s,
        weights,
        c.feature_bytes,
        c.peak_mem_bytes,
        (float(lds.ci[0]), float(lds.ci[1])),
    )


def targets(rows: list[Row]) -> list[dict]:
    """Per independent ensemble of K_ref models: the cheapest configuration within 95% of its LDS, per cost.

    Scopes: ``any`` configuration, ``efficient`` (all but the independent ones), ``paper`` (dropout, Q-only, LoRA)
    and ``q_only``; costs: training time, serving time, weight bytes and feature bytes, each checked on its own.
    """
    out = []
    independent = {r.n_models: r for r in rows if r.family == "independent"}
    for k_ref in REF_KS:
        ref = independent.get(k_ref)
        if ref is None:
            continue
        good = [r for r in rows if r.lds >= 0.95 * ref.lds and r is not ref]
        entry = {"reference": f"independent K={k_ref}", "reference_lds": ref.lds}
        scopes = (
            ("any", good),
            ("efficient", [r for r in good if r.family != "independent"]),
            ("paper", [r for r in good if r.family in PAPER_FAMILIES]),
            ("q_only", [r for r in good if r.family == "q_only"]),
        )
        for field, cost in COSTS:
            for scope, pool in scopes:
                best = min(pool, key=lambda r: getattr(r, field), default=None)
                entry[f"{cost}_{scope}"] = best and {
                    "config": best.label,
                    "lds": best.lds,
                    "ratio": getattr(best, field) / getattr(ref, field),
                }
        out.append(entry)
    return out


def same_size_ratios(rows: list[Row]) -> dict[int, dict[str, float]]:
    """Per row (by index): its costs divided by those of the independent ensemble with as many members (K·M), for
    the rows of the same benchmark and method whose reference was measured."""
    refs = {(r.benchmark, r.method, r.n_models): r for r in rows if r.family == "independent"}
    out = {}
    for i, r in enumerate(rows):
        ref = refs.get((r.benchmark, r.method, r.size))
        if ref is not None:
            out[i] = {cost: getattr(r, field) / getattr(ref, field) for field, cost in COSTS if getattr(ref, field)}
    return out


def markdown_table(rows: list[Row]) -> str:
    """The rows as a Markdown table: LDS with its 95% CI, trained models, costs and ratios to independent K·M."""
    ratios = same_size_ratios(rows)
    lines = [
        "| benchmark | method | configuration | LDS [95% CI] | trained models | train s | serve s | weights | features "
        "| vs independent K·M: train / serve / weights / features |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        ci = f" [{r.lds_ci[0]:.3f}, {r.lds_ci[1]:.3f}]" if r.lds_ci else ""
        ratio = ratios.get(i)
        vs = " / ".join(f"{ratio[c]:.2f}" for _, c in COSTS) if ratio else "—"
        lines.append(
            f"| {r.benchmark} | {r.method} | {r.label} | {r.lds:.3f}{ci} | {trained_models(r)} | {r.train_s:.1f} | "
            f"{r.serve_s:.1f} | {_bytes(r.weight_bytes)} | {_bytes(r.feature_bytes)} | {vs} |"
        )
    return "\n".join(lines) + "\n"


def trained_models(row: Row) -> str:
    """Training runs from scratch. A half-data run costs half a full one only if the recipe scales with the data
    (full-batch digits/MNIST recipes); the language models train a fixed number of minibatch steps whatever the data.
    """
    return f"{row.n_models}" + {"half": " (half data)", "lora": " + LoRA fine-tuning"}.get(row.family, "")


def _bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


#: Pareto panels: Row attribute and axis label.
PANELS = (
    ("train_s", "training time (s)"),
    ("serve_s", "serving time (s)"),
    ("weight_bytes", "weight storage (bytes)"),
    ("feature_bytes", "feature storage (bytes)"),
)


def pareto_png(rows: list[Row], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - optional
        raise SystemExit("The PNG plots need matplotlib: pip install 'datatrace[benchmarks]'.") from err
    fig, axes = plt.subplots(1, len(PANELS), figsize=(20, 5), sharey=True)
    for ax, (attr, label) in zip(axes, PANELS):
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
        '<p class="note">LDS (Spearman, mean over queries) against training time, serving time (fit + score), weight '
        "storage and cached-feature storage; grey line: Pareto frontier. Costs measured on one thread. The paper's "
        "storage target (≤ 20%) is about weights; features are shown apart.</p>"
    ]
    for png in pngs:
        data = base64.b64encode(png.read_bytes()).decode()
        body.append(f'<h2>{png.stem}</h2><img src="data:image/png;base64,{data}" alt="{png.stem}">')
    for key, entries in checks.items():
        body.append(f"<h2>Targets: {key}</h2>")
        header = ["reference", "LDS", "training ≤ 25%", "serving ≤ 40% (q_only)", "serving", "weights ≤ 20%"]
        body.append(report.table(header + ["features"], [_target_cells(e) for e in entries], align="left"))
    ratios = same_size_ratios(rows)
    header = ["benchmark", "method", "configuration", "LDS [95% CI]", "trained models", "train s", "serve s"]
    header += ["weights B", "features B"] + [f"{c} vs indep. K·M" for _, c in COSTS]
    cells = []
    for i, r in enumerate(rows):
        ci = f" [{r.lds_ci[0]:.3f}, {r.lds_ci[1]:.3f}]" if r.lds_ci else ""
        ratio = [f"{ratios[i][c]:.2f}" if i in ratios else "—" for _, c in COSTS]
        cells.append(
            [r.benchmark, r.method, r.label, f"{r.lds:.3f}{ci}", trained_models(r), f"{r.train_s:.2f}"]
            + [f"{r.serve_s:.2f}", r.weight_bytes, r.feature_bytes, *ratio]
        )
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
        show(entry["weights_efficient"]),
        show(entry["features_efficient"]),
    ]


def redraw(out: Path, rows: list[Row]) -> dict:
    """Targets, Pareto PNGs, ``results.json``, ``table.md`` and ``report.html`` for ``rows``; returns the targets."""
    checks, pngs = {}, []
    for key in dict.fromkeys((r.benchmark, r.method) for r in rows):
        mine = [r for r in rows if (r.benchmark, r.method) == key]
        checks[" ".join(key)] = targets(mine)
        pngs.append(out / f"pareto-{key[0]}-{key[1]}.png")
        pareto_png(mine, pngs[-1], f"{key[0]}: {key[1]}")
    (out / "results.json").write_text(json.dumps({"rows": [asdict(r) for r in rows], "targets": checks}, indent=1))
    (out / "table.md").write_text(markdown_table(rows))
    (out / "report.html").write_text(html_report(rows, checks, pngs))
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", default="digits-mlp,mnist5k-mlp")
    parser.add_argument("--methods", default="trak,if,graddot")
    parser.add_argument("--grid", default="reduced", help="reduced, full, or a SPEC (see the module docstring)")
    parser.add_argument("--out", default="ensemble-pareto")
    parser.add_argument("--workers", type=int, default=2, help="ground-truth retraining workers (cached after once)")
    parser.add_argument("--from-json", help="merge and redraw earlier runs' results.json files (comma-separated)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        rows = [Row(**r) for path in args.from_json.split(",") for r in json.loads(Path(path).read_text())["rows"]]
        print(json.dumps(redraw(out, rows), indent=1))
        print(markdown_table(rows))
        return
    rows: list[Row] = []
    for bench_name in args.benchmarks.split(","):
        bench = get(bench_name)
        train, query = bench.data()
        gt = bench.ground_truth(workers=args.workers, verbose=False)
        models = Models(bench, train)
        n_checkpoints = len(models.get("checkpoints", 1)[0][0]) if bench.checkpoints is not None else 0
        for method in args.methods.split(","):
            factory = factories(bench.task)[method]
            for family, k, m in grid(method, args.grid, n_checkpoints):
                row = run_config(bench_name, method, family, k, m, factory, models, train, query, gt)
                rows.append(row)
                print(
                    f"{bench_name} {method:8s} {row.label:28s} LDS {row.lds:.3f}  train {row.train_s:7.2f}s  "
                    f"serve {row.serve_s:7.2f}s  weights {row.weight_bytes:>9d}B  features {row.feature_bytes:>10d}B",
                    flush=True,
                )
            checks = redraw(out, rows)
    print(json.dumps(checks, indent=1))
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
