"""Labelled text sources: a CSV with a header naming ``text`` and ``label`` (or ``category`` / ``intent``) and an
optional ``split`` column, or the JSONL equivalent (one object per line with the same keys).

The same rules as image sources (:mod:`.sources`): splits ``train`` / ``val`` given for every row or none, a bad row
(an empty text, a missing label) is a one-line error naming the file and line unless ``skip_bad`` leaves it out,
and a file that is not UTF-8 is refused.  Records are named ``FILE:LINE`` (stable while the file is).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError
from .rows import parse_split, records_by_split
from .text import MAX_TEXT_CHARS, TextRecord, check_text

LABEL_KEYS = ("label", "category", "intent")
UNLABELLED = "unlabelled"


def names_texts(header: list[str]) -> bool:
    """A CSV header of labelled texts: a ``text`` column and a label column (an image CSV starts ``path,label``)."""
    cells = [cell.strip().lower() for cell in header]
    return "text" in cells and any(key in cells for key in LABEL_KEYS)


def _csv_rows(path: Path, handle, labelled: bool) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(handle)
    header = [cell.strip().lower() for cell in next(reader, [])]
    label_key = next((key for key in LABEL_KEYS if key in header), None)
    if label_key is None and labelled:
        raise DataError(f"{path}: the header names no label column (one of {', '.join(LABEL_KEYS)})")
    columns = {"text": header.index("text")}
    if label_key is not None:
        columns["label"] = header.index(label_key)
    if "split" in header:
        columns["split"] = header.index("split")
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        yield line_no, {key: row[i] if i < len(row) else "" for key, i in columns.items()}


def _jsonl_rows(path: Path, handle, labelled: bool) -> Iterator[tuple[int, dict]]:
    for line_no, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line_no}: not a JSON object ({exc.msg})") from exc
        if not isinstance(item, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(item).__name__}")
        label = next((item[key] for key in LABEL_KEYS if key in item), "")
        yield line_no, {"text": item.get("text"), "label": label, "split": item.get("split") or ""}


def read_texts(path: Path, skip_bad: bool, labelled: bool = True
               ) -> tuple[list[str], dict[str, list[TextRecord]], list[str]]:
    """The texts of a CSV or JSONL file: (class names, records by split, skipped rows).  ``labelled=False`` (texts
    to cluster) accepts rows without a label; they all get the class ``unlabelled``."""
    rows: list[tuple[str, str, tuple[str, str]]] = []
    skipped: list[str] = []
    try:      # utf-8-sig: a byte-order mark (as spreadsheets save CSV) is not part of the header
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = _jsonl_rows if path.suffix.lower() == ".jsonl" else _csv_rows
            for line_no, row in reader(path, handle, labelled):
                where = f"{path}:{line_no}"
                try:
                    text = check_text(row["text"], where)
                    label = row.get("label")
                    if (label is None or str(label).strip() == "") and not labelled:
                        label = UNLABELLED
                    if not isinstance(label, (str, int)) or isinstance(label, bool) or not str(label).strip():
                        raise DataError(f"{where}: the label is missing")
                except DataError as exc:
                    if not skip_bad:
                        raise DataError(f"{exc}; fix the row, or skip bad rows", remedy="skip_bad") from None
                    skipped.append(str(exc))
                    continue
                rows.append((str(label).strip(), parse_split(row.get("split"), where), (where, text)))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except csv.Error as exc:       # a cell over the csv module's limit (131,072 characters)
        raise DataError(f"{path}: {exc} (a text may have at most {MAX_TEXT_CHARS} characters)") from exc
    if not rows:
        raise DataError(f"{path} lists no texts")
    class_names, splits = records_by_split(path, rows, lambda row, label: TextRecord(row[0], label, row[1]))
    return class_names, splits, skipped
