"""Self-contained HTML reports: inline CSS, images as embedded PNG, charts as inline SVG (no CDN, no matplotlib)."""

from __future__ import annotations

import base64
import html
import struct
import zlib
from collections.abc import Sequence

import numpy as np

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse}td,th{padding:.3rem .6rem;border-bottom:1px solid #ddd;text-align:right}
.card{border:1px solid #ccc;border-radius:8px;padding:1rem;margin:1rem 0}
.row{display:flex;gap:.6rem;flex-wrap:wrap;align-items:flex-start}
.method{display:grid;grid-template-columns:1fr 1fr;gap:1.5rem;margin-bottom:.8rem}
.ex{text-align:center;font-size:.75rem}.ex img{image-rendering:pixelated;border:1px solid #999;display:block}
.pro{color:#1a7f37}.opp{color:#b3261e}.note{color:#666;font-size:.85rem}
"""


def png_bytes(image: np.ndarray, scale: int = 1) -> bytes:
    """Encode a grey ``(H, W)`` image with values in [0, 1] as PNG (nearest-neighbour upscaled by ``scale``)."""
    img = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
    img = np.kron(img, np.ones((scale, scale)))
    pixels = (img * 255).round().astype(np.uint8)
    h, w = pixels.shape
    raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
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
) -> str:
    """Horizontal bar chart with optional interval whiskers, as an inline SVG string (values in [−1, 1] or wider)."""
    lo = min(0.0, *values, *(i[0] for i in intervals or []))
    hi = max(0.0, *values, *(i[1] for i in intervals or []), 1e-9)
    left, right, top = 140, 30, 30
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
        if intervals:
            a, b = x(intervals[k][0]), x(intervals[k][1])
            mid = y + bar_height / 2
            parts.append(f'<line x1="{a:.1f}" x2="{b:.1f}" y1="{mid}" y2="{mid}" stroke="#222" stroke-width="2"/>')
            parts += [
                f'<line x1="{e:.1f}" x2="{e:.1f}" y1="{mid - 6}" y2="{mid + 6}" stroke="#222" stroke-width="2"/>'
                for e in (a, b)
            ]
        parts.append(f'<text x="{x(v) + 4:.1f}" y="{y - 2}" font-size="11">{v:.3f}</text>')
    height = top + len(values) * (bar_height + 8) + 10
    parts.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top - 4}" y2="{height - 8}" stroke="#888"/>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'
    )


def page(title: str, body: str) -> str:
    """A complete HTML document with the report stylesheet inlined."""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
