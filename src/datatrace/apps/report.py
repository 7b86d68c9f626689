"""Self-contained HTML reports: inline CSS, images as embedded PNG, charts as inline SVG (no CDN, no matplotlib)."""

from __future__ import annotations

import base64
import html
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse}td,th{padding:.3rem .6rem;border-bottom:1px solid #ddd;text-align:right}
.card{border:1px solid #ccc;border-radius:8px;padding:1rem;margin:1rem 0}
.row{display:flex;gap:.6rem;flex-wrap:wrap;align-items:flex-start}
.method{display:grid;grid-template-columns:1fr 1fr;gap:1.5rem;margin-bottom:.8rem}
.ex{text-align:center;font-size:.75rem}.ex img{image-rendering:pixelated;border:1px solid #999;display:block}
.left td,.left th{text-align:left}
.pro{color:#1a7f37}.opp{color:#b3261e}.note{color:#666;font-size:.85rem}
"""


def png_bytes(image: np.ndarray, scale: int = 1) -> bytes:
    """Encode a grey ``(H, W)`` or colour ``(H, W, 3)`` image with values in [0, 1] as PNG (upscaled by ``scale``)."""
    img = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
    img = img.repeat(scale, axis=0).repeat(scale, axis=1)
    pixels = (img * 255).round().astype(np.uint8)
    h, w = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2 if pixels.ndim == 3 else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def img_tag(image: np.ndarray, scale: int = 6, alt: str = "") -> str:
    data = base64.b64encode(png_bytes(image, scale)).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def bar_chart_svg(
    labels: Sequence[str],
    values: Sequence[float],
    intervals: Sequence[tuple[float, float]] | None = None,
    title: str = "",
    width: int = 520,
    bar_height: int = 28,
    reference: tuple[float, str] | None = None,
) -> str:
    """Horizontal bar chart with optional interval whiskers, as an inline SVG string (values in [−1, 1] or wider).

    ``reference=(value, label)`` adds a dashed vertical line, e.g. a noise ceiling.
    """
    extra = [reference[0]] if reference and np.isfinite(reference[0]) else []
    lo = min(0.0, *values, *(i[0] for i in intervals or []), *extra)
    hi = max(0.0, *values, *(i[1] for i in intervals or []), *extra, 1e-9)
    left, right, top = 140, 56, 30  # the right margin holds the value labels
    span = width - left - right

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * span

    parts = [f'<text x="{left}" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>']
    for k, (label, v) in enumerate(zip(labels, values)):
        y = top + k * (bar_height + 8)
        x0, x1 = sorted((x(0), x(v)))
        label_y = y + bar_height * 0.65
        parts.append(f'<text x="{left - 8}" y="{label_y}" font-size="13" text-anchor="end">{html.escape(label)}</text>')
        parts.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{bar_height}" fill="#4c72b0"/>')
        end = x(v)
        if intervals:
            a, b = x(intervals[k][0]), x(intervals[k][1])
            end = max(end, a, b)
            mid = y + bar_height / 2
            parts.append(f'<line x1="{a:.1f}" x2="{b:.1f}" y1="{mid}" y2="{mid}" stroke="#222" stroke-width="2"/>')
            parts += [
                f'<line x1="{e:.1f}" x2="{e:.1f}" y1="{mid - 6}" y2="{mid + 6}" stroke="#222" stroke-width="2"/>'
                for e in (a, b)
            ]
        parts.append(f'<text x="{end + 6:.1f}" y="{label_y}" font-size="11">{v:.3f}</text>')
    bottom = top + len(values) * (bar_height + 8) + 2
    parts.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top - 4}" y2="{bottom}" stroke="#888"/>')
    if extra:
        parts.append(_reference_line(x(extra[0]), x(extra[0]), top - 4, bottom, reference[1], vertical=True))
    height = bottom + (20 if extra else 8)  # room for the reference line's label below the bars
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'
    )


def page(title: str, body: str) -> str:
    """A complete HTML document with the report stylesheet inlined."""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "right") -> str:
    """An HTML table of escaped cells; ``align="left"`` for text columns."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    style = "" if align == "right" else f' class="{align}"'
    return f"<table{style}><tr>{head}</tr>{body}</table>"


def _reference_line(x1: float, x2: float, y1: float, y2: float, label: str, vertical: bool) -> str:
    """A dashed line with its label: below a vertical line, above the right end of a horizontal one."""
    anchor = (
        f'x="{x1:.1f}" y="{y2 + 13:.1f}" text-anchor="middle"'
        if vertical
        else f'x="{x2 - 4:.1f}" y="{y1 - 4:.1f}" text-anchor="end"'
    )
    return (
        f'<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{y1:.1f}" y2="{y2:.1f}" stroke="#c44e52" stroke-dasharray="5,4"/>'
        f'<text {anchor} font-size="11" fill="#c44e52">{html.escape(label)}</text>'
    )


def scatter_svg(
    xs: Sequence[float],
    ys: Sequence[float],
    labels: Sequence[str],
    x_label: str = "",
    y_label: str = "",
    title: str = "",
    log_x: bool = True,
    reference: tuple[float, str] | None = None,
    width: int = 520,
    height: int = 340,
) -> str:
    """Labelled scatter plot as an inline SVG string; ``reference=(y, label)`` adds a dashed horizontal line."""
    left, right, top, bottom = 60, 30, 34, 44
    tx = np.log10(np.maximum(np.asarray(xs, dtype=float), 1e-9)) if log_x else np.asarray(xs, dtype=float)
    extra = [reference[0]] if reference and np.isfinite(reference[0]) else []
    x_lo, x_hi = float(tx.min()), float(tx.max())
    y_lo, y_hi = min(0.0, *ys, *extra), max(*ys, *extra, 1e-9)
    x_pad, y_pad = max(x_hi - x_lo, 1e-9) * 0.1 + (0.5 if x_hi == x_lo else 0), (y_hi - y_lo) * 0.08 or 0.1
    x_lo, x_hi, y_lo, y_hi = x_lo - x_pad, x_hi + x_pad, y_lo - y_pad, y_hi + y_pad

    def px(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * (width - left - right)

    def py(v: float) -> float:
        return height - bottom - (v - y_lo) / (y_hi - y_lo) * (height - top - bottom)

    parts = [
        f'<text x="{left}" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
        'fill="none" stroke="#888"/>',
        f'<text x="{(width + left - right) / 2:.0f}" y="{height - 8}" font-size="12" text-anchor="middle">'
        f"{html.escape(x_label)}</text>",
        f'<text x="14" y="{(height + top - bottom) / 2:.0f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {(height + top - bottom) / 2:.0f})">{html.escape(y_label)}</text>',
    ]
    if log_x:
        decades = range(int(np.floor(x_lo)), int(np.ceil(x_hi)) + 1)
        x_ticks = [np.log10(m * 10.0**e) for e in decades for m in (1, 2, 5)]
    else:
        x_ticks = list(nice_ticks(x_lo, x_hi))
    for t in (t for t in x_ticks if x_lo <= t <= x_hi):
        text = f"{10**t:g}" if log_x else f"{t:g}"
        parts.append(
            f'<text x="{px(t):.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle">{text}</text>'
        )
    for t in nice_ticks(y_lo, y_hi):
        parts.append(f'<text x="{left - 4}" y="{py(t) + 3:.1f}" font-size="10" text-anchor="end">{t:g}</text>')
    if extra:
        parts.append(_reference_line(left, width - right, py(extra[0]), py(extra[0]), reference[1], vertical=False))
    for v, y, label in zip(tx, ys, labels):
        parts.append(f'<circle cx="{px(v):.1f}" cy="{py(y):.1f}" r="5" fill="#4c72b0"/>')
        parts.append(f'<text x="{px(v) + 7:.1f}" y="{py(y) - 6:.1f}" font-size="11">{html.escape(label)}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'
    )


def nice_ticks(lo: float, hi: float, target: int = 5) -> np.ndarray:
    """Round tick values (multiples of 1, 2 or 5 × 10^e) inside [lo, hi], about ``target`` of them."""
    raw = (hi - lo) / target
    base = 10.0 ** np.floor(np.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    return np.round(np.arange(np.ceil(lo / step) * step, hi + step * 1e-9, step), 10) + 0.0  # no "-0"


def plain(obj: Any) -> Any:
    """Convert to JSON/YAML-safe builtins (tuples → lists, numpy scalars and arrays → Python, other → repr)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj if isinstance(obj, (int, float, str, bool, type(None))) else repr(obj)
