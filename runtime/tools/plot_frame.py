"""The frame every edgetl plot draws in, with Pillow (the runtime has no plotting library and the host needs none).

A white image, a title, a boxed plotting area, ticks and axis labels; :class:`Frame` maps data values to pixels.
Both sides use it: the device's drift plot (:mod:`.drift_plot`) and the host's accuracy-latency fronts
(``edgetl.plot``), so the two look alike and the axis code lives once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

LEFT, TOP, RIGHT_MARGIN = 80, 50, 30


@dataclass
class Frame:
    image: Image.Image
    draw: ImageDraw.ImageDraw
    font: ImageFont.ImageFont
    box: tuple[int, int, int, int]          # left, top, right, bottom of the plotting area
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def x(self, value: float) -> float:
        left, _, right, _ = self.box
        lo, hi = self.x_range
        return left + (value - lo) / (hi - lo) * (right - left)

    def y(self, value: float) -> float:
        _, top, _, bottom = self.box
        lo, hi = self.y_range
        return bottom - (value - lo) / (hi - lo) * (bottom - top)

    def text(self, xy: tuple[float, float], text: str, fill="black") -> None:
        self.draw.text(xy, text, fill=fill, font=self.font)


def open_frame(size: tuple[int, int], title: str, x_range: tuple[float, float], y_range: tuple[float, float],
               x_label: str, y_label: str, x_ticks: Sequence[tuple[float, str]], y_format: str,
               bottom_margin: int = 60) -> Frame:
    """The frame with its title, box, ticks (``x_ticks``: value and label; six evenly spaced y ticks written with
    ``y_format``) and axis labels drawn."""
    image = Image.new("RGB", size, "white")
    frame = Frame(image, ImageDraw.Draw(image), ImageFont.load_default(),
                  (LEFT, TOP, size[0] - RIGHT_MARGIN, size[1] - bottom_margin), x_range, y_range)
    left, top, right, bottom = frame.box
    frame.text((left, 15), title)
    frame.draw.rectangle(frame.box, outline="black")
    for k in range(6):
        value = y_range[0] + k * (y_range[1] - y_range[0]) / 5
        label = format(value, y_format)
        frame.draw.line((left - 5, frame.y(value), left, frame.y(value)), fill="black")
        frame.text((left - 8 - frame.draw.textlength(label, font=frame.font), frame.y(value) - 6), label)
    for value, label in x_ticks:
        frame.draw.line((frame.x(value), bottom, frame.x(value), bottom + 5), fill="black")
        frame.text((frame.x(value) - frame.draw.textlength(label, font=frame.font) / 2, bottom + 8), label)
    frame.text(((left + right) / 2 - frame.draw.textlength(x_label, font=frame.font) / 2, bottom + 28), x_label)
    frame.text((10, top - 20), y_label)
    return frame
