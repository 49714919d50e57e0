"""The drift score per window as a PNG, in the frame every edgetl plot shares (:mod:`.plot_frame`)."""

from __future__ import annotations

from pathlib import Path

from .plot_frame import open_frame

SCORE = (60, 60, 200)
ALARM = (200, 40, 40)
LEVEL = (40, 140, 40)


def draw_drift(path: str | Path, scores: list[float], alarms: list[bool], threshold: float, title: str,
               x_label: str = "window", size: tuple[int, int] = (900, 500)) -> None:
    """Score per window joined by a line, windows over the alarm level in red, the level dashed in green."""
    values = [*scores, threshold]
    y_lo, y_hi = min(min(values), 0.0), max(values)
    pad = 0.05 * (y_hi - y_lo) or 1.0
    count = max(len(scores), 1)
    shown = min(count, 10)
    ticks = [(i, str(i)) for i in (round(k * (count - 1) / max(shown - 1, 1)) for k in range(shown))]
    frame = open_frame(size, title, (-0.5, count - 0.5), (y_lo - pad, y_hi + pad), x_label, "drift score", ticks,
                       ".2f")
    draw, (left, _, right, bottom) = frame.draw, frame.box
    x, y = frame.x, frame.y
    for x0 in range(left, right, 12):                                         # the alarm level, dashed
        draw.line((x0, y(threshold), min(x0 + 6, right), y(threshold)), fill=LEVEL, width=2)
    frame.text((right - 160, y(threshold) - 14), f"alarm level {threshold:.2f}", fill=LEVEL)
    if len(scores) > 1:
        draw.line([(x(i), y(v)) for i, v in enumerate(scores)], fill=SCORE, width=2)
    for i, (value, alarm) in enumerate(zip(scores, alarms)):
        color = ALARM if alarm else SCORE
        draw.ellipse((x(i) - 4, y(value) - 4, x(i) + 4, y(value) + 4), outline=color, fill=color)
    frame.text((left + 10, bottom - 20), f"{sum(alarms)} of {len(scores)} windows over the level (red)", fill=ALARM)
    frame.image.save(path, format="PNG")
