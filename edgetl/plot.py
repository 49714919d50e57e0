"""Scatter plots of accuracy against latency with the Pareto front, drawn with Pillow (no plotting library).

Used by ``edgetl bench`` (artifacts of a bundle) and ``edgetl select`` (candidate backbones, with a budget line).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

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
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = 80, 50, size[0] - 30, size[1] - 70
    draw.text((left, 15), title, fill="black", font=font)
    draw.rectangle((left, top, right, bottom), outline="black")
    if not points:
        draw.text((left + 10, top + 10), "nothing to plot", fill="black", font=font)
        image.save(path)
        return
    xs = [p.x for p in points] + ([vline[0]] if vline else [])
    bounded = all(0.0 <= p.y <= 1.0 for p in points)     # accuracies: error bars stop at 0 and 1
    lows = [max(p.y - p.spread, 0.0) if bounded else p.y - p.spread for p in points]
    highs = [min(p.y + p.spread, 1.0) if bounded else p.y + p.spread for p in points]
    x_lo, x_hi = 0.0, max(xs) * 1.1 or 1.0
    y_lo, y_hi = min(lows) - 0.01, min(1.0, max(highs) + 0.01) if bounded else max(highs) + 0.01
    y_hi = y_hi if y_hi > y_lo else y_lo + 0.02
    x = lambda v: left + (v - x_lo) / (x_hi - x_lo) * (right - left)      # noqa: E731
    y = lambda v: bottom - (v - y_lo) / (y_hi - y_lo) * (bottom - top)    # noqa: E731
    for k in range(6):
        xv, yv = x_lo + k * (x_hi - x_lo) / 5, y_lo + k * (y_hi - y_lo) / 5
        draw.line((x(xv), bottom, x(xv), bottom + 5), fill="black")
        draw.text((x(xv) - 12, bottom + 8), f"{xv:.2f}", fill="black", font=font)
        draw.line((left - 5, y(yv), left, y(yv)), fill="black")
        draw.text((left - 55, y(yv) - 6), f"{yv:.3f}", fill="black", font=font)
    draw.text(((left + right) // 2 - 40, bottom + 30), x_label, fill="black", font=font)
    draw.text((10, top - 20), y_label, fill="black", font=font)
    if vline is not None:
        for y0 in range(top, bottom, 12):     # dashed
            draw.line((x(vline[0]), y0, x(vline[0]), min(y0 + 6, bottom)), fill=(40, 140, 40), width=2)
        draw.text((x(vline[0]) + 4, top + 4), vline[1], fill=(40, 140, 40), font=font)
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
        draw.text((box[0], box[1]), p.label, fill="black", font=font)
    draw.text((right - 230, bottom - 20), "filled, joined: Pareto front", fill=FRONT, font=font)
    image.save(path)
