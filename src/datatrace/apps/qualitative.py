"""``datatrace report DIR``: a self-contained qualitative HTML report of a saved attribution run.

One card per query: the input (image, tabular row, or text with its continuation), and per method its top proponents
and opponents with their scores (text snippets escaped, tokens shaded by their score where token scores exist), the
histogram of the query's scores over the whole training set, and the query's LDS when the run was evaluated. The
page starts with the run's summary and, when present, the LDS chart (with confidence intervals) and the Recall@k
curves. Everything is inline — CSS, a small script (query filter, opponent toggle, card count), PNG images as data
URIs and charts as SVG — so the file opens offline and can be attached anywhere.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import report
from .runs import MethodSummary, Run, load_run

CSS = """
.query-card h3{margin:.2rem 0 .6rem;font-size:1.05rem}.input{min-width:150px}
.method{display:grid;grid-template-columns:1fr 1fr 260px;gap:1rem}
.snippet{font-family:ui-monospace,monospace;font-size:.75rem;white-space:pre-wrap;max-width:320px;
border:1px solid #ddd;border-radius:4px;padding:.3rem;margin:.2rem 0;text-align:left}
.cont{background:#fff3bf}.tok{border-radius:2px}.feat td{font-size:.75rem;padding:.05rem .3rem}
.controls{position:sticky;top:0;background:#fff;padding:.5rem 0;border-bottom:1px solid #ddd}
body.hide-opp .opp-list{display:none}
"""

SCRIPT = """
(function(){
  var cards=document.querySelectorAll('.query-card');
  document.getElementById('n-cards').textContent=String(cards.length);
  document.getElementById('filter').addEventListener('input',function(e){
    var q=e.target.value.toLowerCase(),shown=0;
    cards.forEach(function(c){var ok=c.dataset.search.indexOf(q)>=0;c.style.display=ok?'':'none';if(ok)shown++;});
    document.getElementById('n-cards').textContent=String(shown);
  });
  document.getElementById('show-opp').addEventListener('change',function(e){
    document.body.classList.toggle('hide-opp',!e.target.checked);
  });
})();
"""


def render_report(run: Run | str | os.PathLike, max_queries: int | None = None, thumbnail: int = 4) -> str:
    """The report of a run (a :class:`~datatrace.apps.runs.Run` or its directory) as one HTML string.

    Args:
        run: the run or its directory (loaded and fingerprint-checked by :func:`~datatrace.apps.runs.load_run`).
        max_queries: cards for the first this many queries only (default: all).
        thumbnail: upscaling factor of training-example images (query images are drawn twice as large).
    """
    run = run if isinstance(run, Run) else load_run(run)
    n_cards = run.info["n_query"] if max_queries is None else min(max_queries, run.info["n_query"])
    view = _View(run, thumbnail)
    body = [_summary(run), *_evaluation_charts(run)]
    body.append(
        '<div class="controls">Queries shown: <b id="n-cards">?</b> of '
        f'{n_cards} · filter <input id="filter" placeholder="query id, label, text"> · '
        '<label><input type="checkbox" id="show-opp" checked> opponents</label></div>'
    )
    body += [_card(run, view, q) for q in range(n_cards)]
    body.append(f"<script>{SCRIPT}</script>")
    title = f"datatrace report — {', '.join(run.methods)} ({run.info['modality']})"
    return report.page(title, f"<style>{CSS}</style>" + "".join(body))


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, **options: Any) -> Path:
    """Render the run in ``run_dir`` to ``out`` (default ``run_dir/report.html``) and return the path."""
    out = Path(run_dir) / "report.html" if out is None else Path(out)
    out.write_text(render_report(run_dir, **options))
    return out


class _View:
    """How one example of the run is drawn, by modality."""

    def __init__(self, run: Run, thumbnail: int):
        self.run, self.thumbnail = run, thumbnail
        self.modality = run.info["modality"]
        self.tensors = {"train": run.train.tensors(), "query": run.query.tensors()}
        self.texts = {"train": run.train_text, "query": run.query_text}
        self.class_names = run.info.get("class_names")

    def label(self, which: str, i: int) -> str:
        if self.modality == "text" and "id" in self.texts[which][i]:
            return str(self.texts[which][i]["id"])
        tensors = self.tensors[which]
        if len(tensors) < 2 or tensors[-1][i].numel() != 1:
            return ""
        y = int(tensors[-1][i]) if not tensors[-1].is_floating_point() else float(tensors[-1][i])
        name = self.class_names[y] if self.class_names and isinstance(y, int) and 0 <= y < len(self.class_names) else y
        return f"y={name}"

    def example(self, which: str, i: int, tokens: np.ndarray | None = None, large: bool = False) -> str:
        if self.modality == "text":
            entry = self.texts[which][i]
            return _text_snippet(entry, tokens, limit=600 if large else 280)
        x = self.tensors[which][0][i].float().numpy()
        if self.modality == "image":
            scale = self.thumbnail * (2 if large else 1)
            return report.img_tag(_image(x, self.run.info["image_shape"]), scale, f"{which} {i}")
        return _feature_table(x, self.run.info.get("feature_names"), 12 if large else 6)


def _card(run: Run, view: _View, q: int) -> str:
    label = view.label("query", q)
    text = run.query_text[q] if run.query_text else {}
    search = f"query {q} {label} " + (text.get("text", "") + text.get("continuation", ""))[:200]
    parts = [
        f'<div class="card query-card" data-search="{html.escape(search.lower())}">',
        f"<h3>query {q} {html.escape(label)}</h3>",
        f'<div class="row"><div class="ex input">{view.example("query", q, large=True)}</div><div>',
    ]
    for name, m in run.methods.items():
        lds = run.evaluation.get(name, {}).get("lds", {}).get("per_query")
        lds_note = f" · query LDS {lds[q]:.3f}" if lds is not None and lds[q] is not None else ""
        parts.append(f'<h4>{html.escape(name)}{lds_note}</h4><div class="method">')
        for kind, idx, val in (("pro", m.pro_idx[q], m.pro_val[q]), ("opp", m.opp_idx[q], m.opp_val[q])):
            title = "top proponents (training on them lowers the query's loss)" if kind == "pro" else "top opponents"
            parts.append(f'<div class="{kind}-list"><b class="{kind}">{title}</b><div class="row">')
            for p, (i, v) in enumerate(zip(idx, val)):
                tokens = m.pro_tokens[q, p] if kind == "pro" and m.pro_tokens is not None else None
                parts.append(
                    f'<div class="ex">{view.example("train", int(i), tokens)}#{int(i)} '
                    f'{html.escape(view.label("train", int(i)))}<br><span class="{kind}">{v:+.3g}</span></div>'
                )
            parts.append("</div></div>")
        parts.append(_histogram_svg(m, q) + "</div>")
    parts.append("</div></div></div>")
    return "".join(parts)


def _summary(run: Run) -> str:
    info = run.info
    source = info["data"].get("benchmark") or "embedded data files"
    rows = [
        (name, m.metadata.get("method", name), str(m.metadata.get("hyperparameters", ""))[:90])
        for name, m in run.methods.items()
    ]
    return (
        f'<p class="note">{info["n_query"]} queries × {info["n_train"]} training examples ({info["modality"]}); '
        f"data: {html.escape(str(source))}; fingerprints train {info['train_fingerprint']}, query "
        f"{info['query_fingerprint']}. Positive score = proponent (training on the example lowers the query's "
        f"loss); the top {info['k']} of each sign are shown.</p>"
        + report.table(["name", "method", "hyperparameters"], rows, align="left")
    )


def _evaluation_charts(run: Run) -> list[str]:
    charts = []
    lds = {n: e["lds"] for n, e in run.evaluation.items() if "lds" in e and e["lds"].get("mean") is not None}
    if lds:
        names = list(lds)
        charts.append(
            "<h2>LDS against retraining</h2>"
            + report.bar_chart_svg(
                names, [lds[n]["mean"] for n in names], [tuple(lds[n]["ci"]) for n in names], title="LDS (95% CI)"
            )
        )
    recall = {n: e["retrieval"]["recall"] for n, e in run.evaluation.items() if "retrieval" in e}
    if recall:
        charts.append("<h2>Retrieval of planted examples</h2>" + _recall_svg(recall))
    return charts


def _recall_svg(recall: dict[str, dict[str, float]], width: int = 520, height: int = 300) -> str:
    """Recall@k against k (log axis), one line per method."""
    left, right, top, bottom = 50, 140, 30, 40
    ks = sorted({int(k) for r in recall.values() for k in r})
    lo, hi = np.log10(ks[0]), np.log10(ks[-1]) if ks[-1] > ks[0] else np.log10(ks[0]) + 1

    def px(k: float) -> float:
        return left + (np.log10(k) - lo) / (hi - lo) * (width - left - right)

    def py(v: float) -> float:
        return height - bottom - v * (height - top - bottom)

    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    parts = [
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="none" '
        'stroke="#888"/>',
        f'<text x="{left}" y="18" font-size="14" font-weight="bold">Recall@k</text>',
    ]
    for t in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f'<text x="{left - 4}" y="{py(t) + 3:.1f}" font-size="10" text-anchor="end">{t:g}</text>')
    for k in ks:
        parts.append(f'<text x="{px(k):.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle">{k}</text>')
    for c, (name, r) in enumerate(recall.items()):
        color = colors[c % len(colors)]
        points = [(px(int(k)), py(v)) for k, v in sorted(r.items(), key=lambda kv: int(kv[0])) if v is not None]
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" '
            f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in points)}"/>'
        )
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in points]
        y = top + 14 + 16 * c
        parts.append(f'<text x="{width - right + 8}" y="{y}" font-size="11" fill="{color}">{html.escape(name)}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'
    )


def _histogram_svg(m: MethodSummary, q: int, width: int = 250, height: int = 120) -> str:
    """The query's score distribution over all training examples (log-count bars), zero marked."""
    counts, edges = np.asarray(m.hist[q]), np.asarray(m.hist_edges[q])
    left, bottom, top = 6, 22, 16
    bar_w = (width - 2 * left) / len(counts)
    heights = np.log1p(counts) / max(np.log1p(counts.max()), 1e-9) * (height - top - bottom)
    parts = [f'<text x="{left}" y="11" font-size="11">score histogram (log counts)</text>']
    for j, h in enumerate(heights):
        x = left + j * bar_w
        parts.append(
            f'<rect x="{x:.1f}" y="{height - bottom - h:.1f}" width="{max(bar_w - 1, 0.5):.1f}" height="{h:.1f}" '
            f'fill="#8da0cb"><title>[{edges[j]:.3g}, {edges[j + 1]:.3g}): {int(counts[j])}</title></rect>'
        )
    if edges[0] < 0 < edges[-1]:
        x0 = left + (0 - edges[0]) / (edges[-1] - edges[0]) * (width - 2 * left)
        parts.append(f'<line x1="{x0:.1f}" x2="{x0:.1f}" y1="{top}" y2="{height - bottom}" stroke="#c44e52"/>')
    parts.append(f'<text x="{left}" y="{height - 6}" font-size="10">{edges[0]:.3g}</text>')
    parts.append(f'<text x="{width - left}" y="{height - 6}" font-size="10" text-anchor="end">{edges[-1]:.3g}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'
    )


def _image(x: np.ndarray, shape: list[int] | None) -> np.ndarray:
    """An input as an (H, W) or (H, W, 3) image in [0, 1] (min-max scaled when outside [0, 1])."""
    img = x.reshape(shape) if shape else x
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    if img.min() < 0 or img.max() > 1:
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
    return img


def _feature_table(x: np.ndarray, names: list[str] | None, limit: int) -> str:
    x = x.reshape(-1)
    names = names or [f"x{j}" for j in range(len(x))]
    rows = "".join(
        f"<tr><td>{html.escape(str(names[j]))}</td><td>{x[j]:.3g}</td></tr>" for j in range(min(limit, len(x)))
    )
    more = f'<tr><td colspan="2">… {len(x) - limit} more</td></tr>' if len(x) > limit else ""
    return f'<table class="feat">{rows}{more}</table>'


def _text_snippet(entry: dict, tokens: np.ndarray | None, limit: int) -> str:
    """Escaped text (and continuation); with token scores, tokens shaded green (proponent) or red (opponent)."""
    if tokens is not None and entry.get("tokens") and np.isfinite(tokens).any():
        words = entry["tokens"]
        scale = float(np.nanmax(np.abs(tokens))) or 1.0
        spans = []
        for word, s in zip(words, tokens[: len(words)]):
            alpha = 0.0 if not np.isfinite(s) else min(abs(float(s)) / scale, 1.0) * 0.8
            rgb = "26,127,55" if s >= 0 else "179,38,30"
            spans.append(
                f'<span class="tok" style="background:rgba({rgb},{alpha:.2f})" title="{float(s):+.3g}">'
                f"{html.escape(word)}</span>"
            )
        return f'<div class="snippet">{"".join(spans)}</div>'
    text = entry.get("text", "")
    clipped = html.escape(text[:limit]) + ("…" if len(text) > limit else "")
    continuation = entry.get("continuation")
    cont = f'<span class="cont">{html.escape(continuation[:limit])}</span>' if continuation else ""
    return f'<div class="snippet">{clipped}{cont}</div>'
