"""Scatter plots of accuracy against latency with the Pareto front, in the frame the runtime's plots share
(:mod:`edgetl.runtime.tools.plot_frame`: Pillow, no plotting library).

Used by ``edgetl bench`` (artifacts of a bundle) and ``edgetl select`` (candidate backbones, with a budget line).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetl.runtime.tools.plot_frame import open_frame

FRONT = (200, 40, 40)
OTHER = (60, 60, 200)


@dataclass(frozen=True)
class Point:
    x: float                 # latency, ms
    y: float                 # accuracy or score
    label: str
    front: bool = False
    spread: float = 0.0      # +/- on y, drawn as an error bar


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of (latency, accuracy) points no other point beats on both (lower latency, higher accuracy)."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for j, (l2, a2) in enumerate(points)
                        if j != i)
        if not dominated:
            front.append(i)
    return front


def draw_front(path: Path, points: list[Point], title: str, x_label: str, y_label: str,
               vline: tuple[float, str] | None = None, size=(900, 600)) -> None:
    """Points, the front joined and filled, an optional vertical line (a latency budget), labels kept apart."""
    xs = [p.x for p in points] + ([vline[0]] if vline else [])
    bounded = all(0.0 <= p.y <= 1.0 for p in points)     # accuracies: error bars stop at 0 and 1
    lows = [max(p.y - p.spread, 0.0) if bounded else p.y - p.spread for p in points] or [0.0]
    highs = [min(p.y + p.spread, 1.0) if bounded else p.y + p.spread for p in points] or [1.0]
    x_lo, x_hi = 0.0, (max(xs) * 1.1 if xs else 1.0) or 1.0
    y_lo, y_hi = min(lows) - 0.01, min(1.0, max(highs) + 0.01) if bounded else max(highs) + 0.01
    y_hi = y_hi if y_hi > y_lo else y_lo + 0.02
    ticks = [(v, f"{v:.2f}") for v in (x_lo + k * (x_hi - x_lo) / 5 for k in range(6))]
    frame = open_frame(size, title, (x_lo, x_hi), (y_lo, y_hi), x_label, y_label, ticks, ".3f", bottom_margin=70)
    draw, font, (left, top, right, bottom) = frame.draw, frame.font, frame.box
    x, y = frame.x, frame.y
    if not points:
        frame.text((left + 10, top + 10), "nothing to plot")
        frame.image.save(path)
        return
    if vline is not None:
        for y0 in range(top, bottom, 12):     # dashed
            draw.line((x(vline[0]), y0, x(vline[0]), min(y0 + 6, bottom)), fill=(40, 140, 40), width=2)
        frame.text((x(vline[0]) + 4, top + 4), vline[1], fill=(40, 140, 40))
    front = sorted((p for p in points if p.front), key=lambda p: p.x)
    if len(front) > 1:
        draw.line([(x(p.x), y(p.y)) for p in front], fill=FRONT, width=2)
    placed: list[tuple[float, float, float, float]] = []
    for p in sorted(points, key=lambda p: (p.x, -p.y)):
        cx, cy = x(p.x), y(p.y)
        color = FRONT if p.front else OTHER
        if p.spread:
            low, high = (max(p.y - p.spread, 0.0), min(p.y + p.spread, 1.0)) if bounded else \
                (p.y - p.spread, p.y + p.spread)
            draw.line((cx, y(low), cx, y(high)), fill=color, width=1)
        draw.ellipse((cx - 5, cy - 5, cx + 5, cy + 5), outline=color, fill=color if p.front else None, width=2)
        width = draw.textlength(p.label, font=font)
        lx = cx + 8 if cx + 8 + width < size[0] - 5 else cx - 8 - width     # keep labels inside the image
        for dy in (-12, 4, -26, 18, -40, 32, -54, 46):                          # first free slot near the point
            box = (lx, cy + dy, lx + width, cy + dy + 12)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        frame.text((box[0], box[1]), p.label)
    frame.text((right - 230, bottom - 20), "filled, joined: Pareto front", fill=FRONT)
    frame.image.save(path)
