"""The shape of an export format and the up-front check of a format request.

Unknown names and options a format does not take fail before any work
starts, listing the valid ones and the closest match.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

from edgetl.runtime.errors import ConfigError


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    precision: str
    backends: tuple[str, ...]
    build: Callable | None          # None: the fp32 ONNX export every bundle starts from
    attempts: int
    tolerance: float | None         # max |diff| against torch; None where only accuracy is gated
    options: frozenset[str] = field(default_factory=frozenset)
    gate_hint: str = ""             # what to try instead when the accuracy gate fails
    requires_cpu: tuple[str, ...] = ()   # CPU flags (any of) without which it does not run as stated
    modalities: tuple[str, ...] = ("image", "text")   # the models it is built for

    def filename(self, role: str = "backbone") -> str:
        return f"{role}{'' if self.name == 'onnx' else '-' + self.name}{self.suffix}"

    def precision_with(self, options: dict) -> str:
        return "fp16" if options.get("fp16") and "fp16" in self.options else self.precision


def parse_formats(text: str, table: dict[str, ExportFormat], options: dict) -> list[ExportFormat]:
    """``"onnx,onnx-int8"`` -> formats; refuse unknown names and options nobody takes."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError("needs at least one format", option="format")
    chosen: list[ExportFormat] = []
    for name in names:
        if name not in table:
            close = difflib.get_close_matches(name, list(table), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown export format '{name}' (valid: {', '.join(table)}){hint}")
        if table[name] not in chosen:
            chosen.append(table[name])
    order = list(table)
    chosen.sort(key=lambda f: order.index(f.name))   # table order: formats that share files come after their source
    for option, value in options.items():
        if value and not any(option in f.options for f in chosen):
            takers = [f.name for f in table.values() if option in f.options]
            raise ConfigError(
                f"option --{option} applies to none of the chosen formats ({', '.join(f.name for f in chosen)}); "
                f"formats that take it: {', '.join(takers) or 'none'}"
            )
    return chosen
