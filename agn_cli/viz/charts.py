"""Charts for reports (grouped bars, lines), drawn with OpenCV: the demo's Dice, loss and speed figures."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import cv2
import numpy as np

from agn_cli.viz.draw import INK, LIGHT, SERIES_COLOURS, text, text_width


def _nice_ticks(value: float, target: int = 5) -> tuple[float, float]:
    """(axis top, tick step): a 1/2/2.5/5 x 10^k step giving about `target` ticks up to at least `value`."""
    if not math.isfinite(value) or value <= 0:
        return 1.0, 0.25
    raw = value / target
    exp = 10 ** math.floor(math.log10(raw))
    step = next(m * exp for m in (1, 2, 2.5, 5, 10) if raw <= m * exp)
    return step * math.ceil(value / step - 1e-9), step


def _tick_label(v: float, step: float) -> str:
    """As many decimals as the step needs (0.25 -> 2, 0.2 -> 1, 50 -> 0)."""
    decimals = 0
    while decimals < 4 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-9:
        decimals += 1
    return f"{v:.{decimals}f}"


def bar_chart(
    title: str,
    categories: Sequence[str],
    series: dict[str, Sequence[Optional[float]]],
    ymax: Optional[float] = None,
    fmt: str = "{:.2f}",
    ylabel: str = "",
) -> np.ndarray:
    """Grouped vertical bars with their values written on top; missing values (None/NaN) are marked 'n/a'."""
    n_cat, n_ser = len(categories), max(1, len(series))
    longest = max((text_width(line, 0.38) for c in categories for line in c.split("\n")), default=40)
    group_w = max(70, 28 * n_ser + 24, longest + 16)
    left, right, top, bottom = 60, 20, 46, 80
    width = max(420, left + right + group_w * n_cat)
    height = 356
    img = np.full((height, width, 3), 255, np.uint8)
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    top_value, step = _nice_ticks(ymax if ymax is not None else max(values, default=1.0) * 1.08)
    plot_h = height - top - bottom
    text(img, title, (left, 24), 0.55, INK, 1)
    for i in range(int(round(top_value / step)) + 1):  # grid lines and y ticks
        v = i * step
        y = top + plot_h - int(round(plot_h * v / top_value))
        cv2.line(img, (left, y), (width - right, y), LIGHT, 1)
        label = _tick_label(v, step)
        text(img, label, (left - 6 - text_width(label, 0.38), y + 4), 0.38)
    if ylabel:
        text(img, ylabel, (4, top - 10), 0.38)
    bar_w = max(10, (group_w - 24) // n_ser)
    for c, name in enumerate(categories):
        x0 = left + c * group_w + 12
        for s, vals in enumerate(series.values()):
            v = vals[c] if c < len(vals) else None
            x = x0 + s * bar_w
            colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
            if v is None or not math.isfinite(v):
                text(img, "n/a", (x, top + plot_h - 4), 0.32)
                continue
            h = int(round(plot_h * min(max(v, 0.0), top_value) / top_value))
            cv2.rectangle(img, (x, top + plot_h - h), (x + bar_w - 3, top + plot_h), colour, -1)
            label = fmt.format(v)
            text(img, label, (x + (bar_w - 3 - text_width(label, 0.32)) // 2, top + plot_h - h - 4), 0.32)
        for k, line in enumerate(name.split("\n")[:2]):  # category names may have two lines
            text(img, line, (x0 + (group_w - 24 - text_width(line, 0.38)) // 2, top + plot_h + 18 + 15 * k), 0.38)
    cv2.line(img, (left, top + plot_h), (width - right, top + plot_h), INK, 1)
    if len(series) > 1:  # legend
        x = left
        for s, sname in enumerate(series):
            cv2.rectangle(img, (x, height - 22), (x + 12, height - 10), SERIES_COLOURS[s % len(SERIES_COLOURS)], -1)
            text(img, sname, (x + 16, height - 11), 0.38)
            x += 30 + text_width(sname, 0.38)
    return img


def line_chart(title: str, series: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str = "", ylabel: str = "") -> np.ndarray:
    """Lines with markers on shared axes starting at y = 0."""
    width, height = 460, 320
    left, right, top, bottom = 56, 16, 44, 56
    img = np.full((height, width, 3), 255, np.uint8)
    xs = [x for xv, _ in series.values() for x in xv]
    ys = [y for _, yv in series.values() for y in yv if math.isfinite(y)]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi <= x_lo:
        x_hi = x_lo + 1
    y_hi, y_step = _nice_ticks(max(ys, default=1.0) * 1.05)
    plot_w, plot_h = width - left - right, height - top - bottom
    text(img, title, (left, 24), 0.55)

    def px(x: float, y: float) -> tuple[int, int]:
        return (left + int(plot_w * (x - x_lo) / (x_hi - x_lo)), top + plot_h - int(plot_h * min(max(y, 0), y_hi) / y_hi))

    for i in range(int(round(y_hi / y_step)) + 1):
        v = i * y_step
        y = top + plot_h - int(round(plot_h * v / y_hi))
        cv2.line(img, (left, y), (left + plot_w, y), LIGHT, 1)
        label = _tick_label(v, y_step)
        text(img, label, (left - 6 - text_width(label, 0.38), y + 4), 0.38)
    _, x_step = _nice_ticks(x_hi - x_lo, 5)
    x_step = float(max(1, math.ceil(x_step)))  # epochs: whole numbers
    for x_tick in np.arange(math.ceil(x_lo / x_step) * x_step, x_hi + 1e-9, x_step):
        p = px(float(x_tick), 0)
        label = f"{x_tick:.0f}"
        text(img, label, (p[0] - text_width(label, 0.38) // 2, top + plot_h + 16), 0.38)
    cv2.line(img, (left, top + plot_h), (left + plot_w, top + plot_h), INK, 1)
    cv2.line(img, (left, top), (left, top + plot_h), INK, 1)
    if xlabel:
        text(img, xlabel, (left + plot_w // 2 - text_width(xlabel, 0.4) // 2, height - 22), 0.4)
    if ylabel:
        text(img, ylabel, (4, top - 10), 0.38)
    lx = left
    for s, (name, (xv, yv)) in enumerate(series.items()):
        colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
        pts = [px(float(x), float(y)) for x, y in zip(xv, yv) if math.isfinite(y)]
        for a, b in zip(pts[:-1], pts[1:]):
            cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 3, colour, -1, cv2.LINE_AA)
        cv2.rectangle(img, (lx, height - 12), (lx + 12, height - 2), colour, -1)
        text(img, name, (lx + 16, height - 3), 0.38)
        lx += 30 + text_width(name, 0.38)
    return img
