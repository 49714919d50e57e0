"""The declarative table of export formats, checked before any work starts.

Each format names its file suffix, precision, the runtime backends that run
it, and the exporter function.  Unknown names fail at once with the valid
ones and the closest match.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgetl.runtime.errors import ConfigError

ExportFunction = Callable[..., None]


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    precision: str
    backends: tuple[str, ...]
    export: ExportFunction
    tolerance: float
    options: frozenset[str] = field(default_factory=frozenset)

    def filename(self, role: str) -> str:
        return f"{role}{'' if self.name == 'onnx' else '-' + self.name}{self.suffix}"


def parse_formats(text: str, table: dict[str, ExportFormat]) -> list[ExportFormat]:
    """``"onnx,onnx-int8"`` -> formats, refusing unknown names with the closest match."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError("--format needs at least one format")
    chosen = []
    for name in names:
        if name not in table:
            close = difflib.get_close_matches(name, list(table), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown export format '{name}' (valid: {', '.join(table)}){hint}")
        if table[name] not in chosen:
            chosen.append(table[name])
    return chosen


def output_path(folder: Path, fmt: ExportFormat, role: str) -> Path:
    return folder / fmt.filename(role)
