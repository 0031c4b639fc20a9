"""Equity and drawdown charts without plotting libraries: self-contained HTML with inline
SVG (no scripts, no CDN), or a PNG drawn pixel by pixel (zlib + the PNG chunk format,
https://www.w3.org/TR/png/)."""

from __future__ import annotations

import bisect
import html
import struct
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

from qtd.errors import ConfigError
from qtd.metrics import drawdown_series

W, H_EQ, H_DD, PAD = 960, 320, 160, 50
_MAX_POINTS = 2000


def _thin(ts: Sequence[int], ys: Sequence[float]) -> tuple[list[int], list[float]]:
    step = max(1, len(ys) // _MAX_POINTS)
    idx = list(range(0, len(ys), step))
    if idx[-1] != len(ys) - 1:
        idx.append(len(ys) - 1)
    return [ts[i] for i in idx], [ys[i] for i in idx]


def _scale(ts: Sequence[int], ys: Sequence[float], top: int, height: int,
           lo: float, hi: float) -> list[tuple[float, float]]:
    t0, t1 = ts[0], ts[-1] if ts[-1] > ts[0] else ts[0] + 1
    span = hi - lo or 1.0
    return [(PAD + (t - t0) / (t1 - t0) * (W - 2 * PAD),
             top + height - (y - lo) / span * height) for t, y in zip(ts, ys, strict=True)]


def _day(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1e9, UTC).strftime("%Y-%m-%d")


Marker = tuple[int, str]
"""A trade marker: ``(UTC ns, "buy" | "sell")``, drawn on the equity line at that time."""
_MARK_COLOR = {"buy": (44, 160, 44), "sell": (214, 39, 40)}


def _marker_points(ts: Sequence[int], equity: Sequence[float], markers: Sequence[Marker],
                   lo: float, hi: float) -> list[tuple[float, float, str]]:
    """Each marker at its time on the equity curve (the last point at or before it)."""
    out = []
    for t, side in markers:
        i = max(bisect.bisect_right(ts, t) - 1, 0)
        (x, y), = _scale([ts[0], ts[i], ts[-1]], [lo, equity[i], hi], PAD, H_EQ, lo, hi)[1:2]
        out.append((x, y, side))
    return out


def _svg_markers(points: list[tuple[float, float, str]]) -> str:
    shapes = []
    for x, y, side in points:
        r, g, b = _MARK_COLOR.get(side, (0, 0, 0))
        tip = y - 6 if side == "buy" else y + 6  # buy: triangle up, sell: down
        base = y + 3 if side == "buy" else y - 3
        shapes.append(f'<polygon class="trade {side}" fill="rgb({r},{g},{b})" '
                      f'points="{x - 4:.1f},{base:.1f} {x + 4:.1f},{base:.1f} '
                      f'{x:.1f},{tip:.1f}"><title>{side}</title></polygon>')
    return "".join(shapes)


def svg(ts: Sequence[int], equity: Sequence[float], title: str = "",
        markers: Sequence[Marker] = ()) -> str:
    """An SVG document: equity (top) with a triangle per trade marker (buy green up, sell
    red down) and drawdown in % (bottom) against time."""
    t, eq = _thin(ts, equity)
    _, dd = _thin(ts, [-100 * d for d in drawdown_series(equity)])
    lo, hi = min(eq), max(eq)
    pe = _scale(t, eq, PAD, H_EQ, lo, hi)
    dmin = min(dd) or -1.0
    pd_ = _scale(t, dd, 2 * PAD + H_EQ, H_DD, dmin, 0.0)
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in pe)
    base = 2 * PAD + H_EQ
    area = f"{PAD},{base} " + " ".join(f"{x:.1f},{y:.1f}" for x, y in pd_) + \
        f" {W - PAD},{base}"
    height = 3 * PAD + H_EQ + H_DD
    text = [(PAD, PAD - 12, html.escape(title)), (PAD, PAD + H_EQ + 16, _day(ts[0])),
            (W - PAD - 70, PAD + H_EQ + 16, _day(ts[-1])),
            (W - PAD + 4, PAD + 10, f"{hi:,.0f}"), (W - PAD + 4, PAD + H_EQ, f"{lo:,.0f}"),
            (W - PAD + 4, base + H_DD, f"{dmin:.1f}%"), (PAD, base - 4, "drawdown")]
    labels = "".join(f'<text x="{x}" y="{y}" font-size="12" font-family="sans-serif">{s}</text>'
                     for x, y, s in text)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
            f'viewBox="0 0 {W} {height}"><rect width="100%" height="100%" fill="white"/>'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{line}"/>'
            f'<polygon fill="#d62728" fill-opacity="0.5" points="{area}"/>{labels}'
            f'{_svg_markers(_marker_points(ts, equity, markers, lo, hi))}</svg>')


def write_html(path: Path, ts: Sequence[int], equity: Sequence[float], title: str,
               summary: str = "", markers: Sequence[Marker] = ()) -> None:
    """Write a self-contained HTML page: title, the SVG chart (with ``markers``) and
    ``summary`` (preformatted report text)."""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title></head><body>{svg(ts, equity, title, markers)}"
            f"<pre>{html.escape(summary)}</pre></body></html>\n")
    path.write_text(page)


def _png_markers(px: bytearray, height: int, points: list[tuple[float, float, str]]) -> None:
    for mx, my, side in points:
        paint = bytes(_MARK_COLOR.get(side, (0, 0, 0)))
        for y in range(int(my) - 3, int(my) + 4):
            for x in range(int(mx) - 3, int(mx) + 4):
                if 0 <= x < W and 0 <= y < height:
                    px[(y * W + x) * 3:(y * W + x) * 3 + 3] = paint


def write_png(path: Path, ts: Sequence[int], equity: Sequence[float],
              markers: Sequence[Marker] = ()) -> None:
    """Write an RGB PNG: equity line (blue, top) with a 7x7 square per trade marker (buy
    green, sell red) and drawdown (red, bottom)."""
    t, eq = _thin(ts, equity)
    _, dd = _thin(ts, [-d for d in drawdown_series(equity)])
    height = 3 * PAD + H_EQ + H_DD
    px = bytearray(b"\xff" * (W * height * 3))
    for pts, color in ((_scale(t, eq, PAD, H_EQ, min(eq), max(eq)), (31, 119, 180)),
                       (_scale(t, dd, 2 * PAD + H_EQ, H_DD, min(dd) or -1.0, 0.0),
                        (214, 39, 40))):
        for (x0, y0), (x1, y1) in pairwise(pts):
            n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
            for i in range(n + 1):
                x, y = int(x0 + (x1 - x0) * i / n), int(y0 + (y1 - y0) * i / n)
                if 0 <= x < W and 0 <= y < height:
                    o = (y * W + x) * 3
                    px[o:o + 3] = bytes(color)
    _png_markers(px, height, _marker_points(ts, equity, markers, min(equity), max(equity)))
    raw = b"".join(b"\x00" + bytes(px[r * W * 3:(r + 1) * W * 3]) for r in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", W, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                     chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def write_chart(path: Path, ts: Sequence[int], equity: Sequence[float], title: str = "",
                summary: str = "", markers: Sequence[Marker] = ()) -> None:
    """``.html``/``.htm`` → :func:`write_html`, ``.png`` → :func:`write_png` (``markers``:
    the trades, drawn on the equity line).

    Raises:
        ConfigError: another extension, or an empty curve.
    """
    if len(equity) < 2:
        raise ConfigError(f"--plot {path}: fewer than two equity points", source=str(path))
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        write_html(path, ts, equity, title, summary, markers)
    elif suffix == ".png":
        write_png(path, ts, equity, markers)
    else:
        raise ConfigError(f"--plot {path}: use a .html or .png file name", source=str(path),
                          field="plot", value=str(path), rule=".html or .png")
