"""The drift score per window as a PNG, drawn with Pillow (the runtime has no plotting library)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SCORE = (60, 60, 200)
ALARM = (200, 40, 40)
LEVEL = (40, 140, 40)


def draw_drift(path: str | Path, scores: list[float], alarms: list[bool], threshold: float, title: str,
               x_label: str = "window", size: tuple[int, int] = (900, 500)) -> None:
    """Score per window joined by a line, windows over the alarm level in red, the level dashed in green."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = 80, 50, size[0] - 30, size[1] - 60
    draw.text((left, 15), title, fill="black", font=font)
    draw.rectangle((left, top, right, bottom), outline="black")
    values = [*scores, threshold]
    y_lo, y_hi = min(min(values), 0.0), max(values)
    pad = 0.05 * (y_hi - y_lo) or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad
    count = max(len(scores), 1)
    x = lambda i: left + (i + 0.5) / count * (right - left)                  # noqa: E731
    y = lambda v: bottom - (v - y_lo) / (y_hi - y_lo) * (bottom - top)       # noqa: E731
    for k in range(6):
        value = y_lo + k * (y_hi - y_lo) / 5
        draw.line((left - 5, y(value), left, y(value)), fill="black")
        draw.text((left - 60, y(value) - 6), f"{value:.2f}", fill="black", font=font)
    for k in range(min(count, 10)):
        i = round(k * (count - 1) / max(min(count, 10) - 1, 1))
        draw.line((x(i), bottom, x(i), bottom + 5), fill="black")
        draw.text((x(i) - 6, bottom + 8), str(i), fill="black", font=font)
    draw.text(((left + right) // 2 - 20, bottom + 28), x_label, fill="black", font=font)
    draw.text((10, top - 20), "drift score", fill="black", font=font)
    for x0 in range(left, right, 12):                                         # the alarm level, dashed
        draw.line((x0, y(threshold), min(x0 + 6, right), y(threshold)), fill=LEVEL, width=2)
    draw.text((right - 160, y(threshold) - 14), f"alarm level {threshold:.2f}", fill=LEVEL, font=font)
    if len(scores) > 1:
        draw.line([(x(i), y(v)) for i, v in enumerate(scores)], fill=SCORE, width=2)
    for i, (value, alarm) in enumerate(zip(scores, alarms)):
        color = ALARM if alarm else SCORE
        draw.ellipse((x(i) - 4, y(value) - 4, x(i) + 4, y(value) + 4), outline=color, fill=color)
    draw.text((left + 10, bottom - 20), f"{sum(alarms)} of {len(scores)} windows over the level (red)",
              fill=ALARM, font=font)
    image.save(path, format="PNG")
