"""Where every labelled file (an image CSV, a text CSV or JSONL) ends: its rows become class names and records by
split, with one set of rules (splits ``train`` / ``val`` on every row or none; classes sorted by name)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from ..errors import DataError

R = TypeVar("R")
SPLIT_VALUES = ("train", "val", "all")


def parse_split(cell: object, where: str) -> str:
    """A row's split: ``train``, ``val``, or ``all`` for an empty cell."""
    split = str(cell or "").strip().lower() or "all"
    if split not in SPLIT_VALUES:
        raise DataError(f"{where}: unknown split '{str(cell).strip()}' (use train or val)")
    return split


def records_by_split(path: Path, rows: Sequence[tuple[str, str, object]], make: Callable[[object, int], R | None]
                     ) -> tuple[list[str], dict[str, list[R]]]:
    """(class names, records by split) of ``rows`` (label, split, payload); ``make(payload, class index)`` builds a
    row's record, or returns None to leave it out."""
    class_names = sorted({label for label, _, _ in rows})
    index = {name: i for i, name in enumerate(class_names)}
    splits: dict[str, list[R]] = {}
    for label, split, payload in rows:
        record = make(payload, index[label])
        if record is not None:
            splits.setdefault(split, []).append(record)
    if "all" in splits and len(splits) > 1:
        raise DataError(f"{path}: either give every row a split or none")
    return class_names, splits
