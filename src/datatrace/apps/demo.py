"""``datatrace demo``: attribute a digits MLP's test predictions end to end and check them against retraining.

Trains the ``digits-mlp`` benchmark model (seconds), scores 100 test images against 1,000 training images with TRAK
and Grad-Cos, measures each method's LDS against subset-retraining ground truth, prints a table and writes a
self-contained HTML report with the top proponents and opponents of a few test images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ..attributors import TRAK, GradCos
from ..benchmarks import get
from ..eval import lds
from . import report
from .report import plain as _plain

METHODS = {"TRAK": TRAK, "Grad-Cos": GradCos}


def run_demo(
    out_dir: str | Path = "datatrace-demo",
    n_subsets: int = 64,
    workers: int = 2,
    n_cards: int = 4,
    top: int = 5,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the demo; returns ``{method: {"lds", "ci", "fit_s", "score_s"}}`` and writes ``out_dir/report.html``."""
    from rich.console import Console
    from rich.table import Table

    console = Console(quiet=not verbose)
    bench = get("digits-mlp")
    train, query = bench.data()
    console.print(f"[bold]datatrace demo[/] — {bench.description}")
    model = bench.model(seed=0)
    x_query, y_query = query.tensors()
    with torch.no_grad():
        probs = torch.softmax(model(x_query), dim=1)
    accuracy = float((probs.argmax(1) == y_query).float().mean())
    console.print(f"model trained: test accuracy on the queries {accuracy:.1%}")

    console.print(
        f"ground truth: retraining on {n_subsets} random 50% subsets ({workers} workers; cached after the first run)"
    )
    gt = bench.ground_truth(workers=workers, n_subsets=n_subsets, verbose=verbose)

    results, scores = {}, {}
    for name, cls in METHODS.items():
        t0 = time.perf_counter()
        attr = cls(model, bench.task, verbose=verbose).fit(train)
        t1 = time.perf_counter()
        scores[name] = attr.score(query)
        t2 = time.perf_counter()
        res = lds(scores[name], gt)
        results[name] = {"lds": res.mean, "ci": list(res.ci), "fit_s": t1 - t0, "score_s": t2 - t1}

    table = Table(title="LDS against subset retraining (Spearman, 95% bootstrap CI over queries)")
    for col in ("method", "LDS", "95% CI", "fit s", "score s"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['lds']:.3f}",
            f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
            f"{r['fit_s']:.2f}",
            f"{r['score_s']:.2f}",
        )
    console.print(table)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = _report_html(train, query, probs, scores, results, n_cards, top, accuracy, n_subsets)
    (out / "report.html").write_text(html)
    config = {
        "benchmark": bench.name,
        "version": bench.version,
        "n_subsets": n_subsets,
        "workers": workers,
        "methods": {n: scores[n].metadata["hyperparameters"] for n in METHODS},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(_plain(config), sort_keys=False))
    console.print(f"report: {out / 'report.html'}")
    return results


def _report_html(train, query, probs, scores, results, n_cards, top, accuracy, n_subsets) -> str:
    x_train, y_train = train.tensors()
    x_query, y_query = query.tensors()
    names = list(results)
    chart = report.bar_chart_svg(
        names,
        [results[n]["lds"] for n in names],
        [tuple(results[n]["ci"]) for n in names],
        title="LDS per method",
    )
    rows = [
        (
            n,
            f"{r['lds']:.3f}",
            f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
            f"{r['fit_s']:.2f}",
            f"{r['score_s']:.2f}",
        )
        for n, r in results.items()
    ]
    body = [
        f'<p class="note">digits MLP 64-64-10, 1,000 training images, {len(y_query)} test queries, test accuracy '
        f"{accuracy:.1%}. Ground truth: {n_subsets} retrainings on random 50% subsets. Positive score = proponent "
        "(training on the image lowers the query's loss).</p>",
        chart,
        report.table(["method", "LDS", "95% CI", "fit s", "score s"], rows),
        "<h2>Test images and their most influential training images</h2>",
    ]
    tops = {n: (s.topk(top, largest=True), s.topk(top, largest=False)) for n, s in scores.items()}
    for q in range(min(n_cards, len(y_query))):
        pred = int(probs[q].argmax())
        card = [
            '<div class="card query-card"><div class="row"><div class="ex">',
            report.img_tag(x_query[q].reshape(8, 8).numpy(), 10, f"query {q}"),
            f"query {q}<br>label {int(y_query[q])}<br>predicted {pred} ({float(probs[q, pred]):.0%})</div><div>",
        ]
        for name in names:
            (pv, pi), (ov, oi) = tops[name]
            card.append('<div class="method">')
            for kind, vals, idx in (("pro", pv, pi), ("opp", ov, oi)):
                label = "proponents" if kind == "pro" else "opponents"
                card.append(f'<div><b>{name}</b> — top {label}<div class="row">')
                for v, i in zip(vals[q], idx[q]):
                    card.append(
                        f'<div class="ex">{report.img_tag(x_train[i].reshape(8, 8).numpy(), 6, f"train {i}")}'
                        f'#{i} y={int(y_train[i])}<br><span class="{kind}">{v:+.3g}</span></div>'
                    )
                card.append("</div></div>")
            card.append("</div>")
        card.append("</div></div></div>")
        body.append("".join(card))
    return report.page("datatrace demo — digits MLP", "".join(body))
