"""Write a data source (e.g. ``builtin:digits``) as an image folder with train/ and val/ (labelled texts: as
``texts.csv`` with a split column).

The same data can then be copied to a device and read by ``edgetl-rt`` as
plain image files (any tool can open them).  In-memory images are saved as
PNG (lossless); files are copied as they are.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from edgetl.runtime.data.sources import ImageRecord, open_data, stratified_split
from edgetl.runtime.errors import DataError
from edgetl.runtime.fsutil import atomic_directory


@dataclass(frozen=True)
class ExportedData:
    """What :func:`export_data` wrote: inputs per split, and whether they are images or texts."""

    counts: dict[str, int]
    modality: str


def export_image_folder(
    address: str,
    out: str | Path,
    classes: list[str] | None = None,
    overwrite: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, int]:
    """Write ``address`` (optionally a subset of classes) to ``out``; returns images (or texts) per split."""
    return export_data(address, out, classes, overwrite, val_fraction, seed).counts


def export_data(
    address: str,
    out: str | Path,
    classes: list[str] | None = None,
    overwrite: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> ExportedData:
    """Write ``address`` (optionally a subset of classes) to ``out``: an image folder, or labelled texts as
    ``texts.csv``."""
    data = open_data(address)
    if classes is not None:
        unknown = [c for c in classes if c not in data.class_names]
        if unknown:
            raise DataError(f"{address} has no classes {', '.join(unknown)} (it has {', '.join(data.class_names)})")
        keep = {data.class_names.index(c) for c in classes}
    else:
        keep = set(range(len(data.class_names)))
    splits = dict(data.splits)
    if "all" in splits:
        pool = splits.pop("all")
        train_idx, val_idx = stratified_split([r.label for r in pool], val_fraction, seed)
        splits = {"train": [pool[i] for i in train_idx], "val": [pool[i] for i in val_idx]}
    if data.modality == "text":
        return ExportedData(_export_texts(data, splits, keep, out, overwrite), "text")
    counts: dict[str, int] = {}
    with atomic_directory(out, overwrite=overwrite) as staging:
        for split, records in splits.items():
            chosen = [r for r in records if r.label in keep]
            for position, record in enumerate(chosen):
                folder = staging / split / data.class_names[record.label]
                folder.mkdir(parents=True, exist_ok=True)
                _write_record(record, folder, position)
            counts[split] = len(chosen)
    return ExportedData(counts, "image")


def _export_texts(data, splits: dict, keep: set[int], out: str | Path, overwrite: bool) -> dict[str, int]:
    """Texts go to ``out/texts.csv`` (``text,label,split``), which every edgetl command reads."""
    counts: dict[str, int] = {}
    with atomic_directory(out, overwrite=overwrite) as staging:
        with open(staging / "texts.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label", "split"])
            for split, records in splits.items():
                chosen = [r for r in records if r.label in keep]
                writer.writerows((r.text, data.class_names[r.label], split) for r in chosen)
                counts[split] = len(chosen)
    return counts


def _write_record(record: ImageRecord, folder: Path, position: int) -> None:
    if record.pixels is not None:
        index = record.source.rsplit("#", 1)[-1]
        Image.fromarray(record.pixels).save(folder / f"{index}.png")
    else:
        source = Path(record.source)
        shutil.copyfile(source, folder / f"{position:06d}_{source.name}")
