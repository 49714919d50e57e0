"""Labelled image sources: image folders, CSV files and built-in data sets (:mod:`.builtin`); texts:
:mod:`.text_sources`.

Listing data is torch-free so that the device runtime (``evaluate``,
``update``) reads the same layouts as the host.  A source resolves to a
:class:`LabeledData`: class names plus named splits of :class:`ImageRecord`.
Nothing is decoded here; decoding errors surface where images are read.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .rows import parse_split, records_by_split
from .text import TextPreprocess, TextRecord, check_text
from .text_sources import names_texts, read_texts

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
SPLIT_NAMES = ("train", "val")
#: What evaluation may read: a data source's val split (the default where there is one), train, or all of it.
SPLITS = ("val", "train", "all")


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One labelled image: a file path, in-memory pixels for built-in sets, or the encoded bytes of an image file
    a service received.

    ``source`` is a stable identifier (the path, ``builtin:NAME#index``, or the request's element) used in error
    messages, split records and cache keys.
    """

    source: str
    label: int
    pixels: np.ndarray | None = None
    encoded: bytes | None = None

    modality = "image"

    @property
    def image(self):
        """What :func:`edgetl.runtime.data.preprocess.load_image` accepts."""
        if self.encoded is not None:
            return self.encoded
        return self.pixels if self.pixels is not None else self.source

    def content_digest(self) -> bytes:
        """sha256 of the image bytes (file content, received bytes or pixel buffer): the same file has the same
        digest whether it came from disk or over the network."""
        if self.encoded is not None:
            return hashlib.sha256(self.encoded).digest()
        if self.pixels is not None:
            return hashlib.sha256(np.ascontiguousarray(self.pixels).tobytes()).digest()
        try:
            return hashlib.sha256(Path(self.source).read_bytes()).digest()
        except OSError as exc:
            raise DataError(f"cannot read {self.source}: {exc.strerror or exc}") from exc


@dataclass
class LabeledData:
    """Class names and named splits (``train``, ``val`` or ``all``)."""

    address: str
    class_names: list[str]
    splits: dict[str, list[ImageRecord]]
    recommended_image_size: int | None = None
    recommended_crop_pct: float | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def modality(self) -> str:
        """``image`` or ``text`` (:class:`~edgetl.runtime.data.text.TextRecord`): what the records hold."""
        first = next((r for records in self.splits.values() for r in records), None)
        return first.modality if first is not None else "image"

    @property
    def has_val(self) -> bool:
        return "val" in self.splits

    def split(self, name: str) -> list[ImageRecord]:
        """``train``, ``val`` or ``all`` (every record of every split)."""
        if name == "all":
            return [record for records in self.splits.values() for record in records]
        if name not in self.splits:
            raise DataError(
                f"{self.address} has no '{name}' split (it has: {', '.join(sorted(self.splits))})"
            )
        return self.splits[name]

    def records_and_names(self, split: str = "all") -> tuple[list, list[str]]:
        """The records of ``split`` and their class names (what an update learns); a :class:`DataError` when it
        holds none."""
        records = self.split(split)
        if not records:
            raise DataError(f"{self.address} holds no {self.modality}s")
        return records, [self.class_names[r.label] for r in records]

    def remap_to(self, class_names: Sequence[str]) -> LabeledData:
        """Re-index labels onto ``class_names`` (e.g. a bundle's), refusing unknown classes."""
        index = {name: i for i, name in enumerate(class_names)}
        unknown = [name for name in self.class_names if name not in index]
        if unknown:
            raise DataError(
                f"{self.address} has classes the model does not know: {', '.join(unknown)} "
                f"(known: {', '.join(class_names)})"
            )
        mapping = [index[name] for name in self.class_names]
        splits = {split: [dataclasses.replace(r, label=mapping[r.label]) for r in records]
                  for split, records in self.splits.items()}
        return LabeledData(self.address, list(class_names), splits, self.recommended_image_size,
                           self.recommended_crop_pct, list(self.skipped))


def input_records(inputs: Sequence, preprocess) -> list:
    """Unlabelled records of what a user gives to classify: image paths (or encoded bytes), or a text model's texts
    (each checked: a string, not empty, not oversized)."""
    if isinstance(preprocess, TextPreprocess):
        for text in inputs:
            if isinstance(text, str) and Path(text).suffix.lower() in IMAGE_EXTENSIONS and Path(text).is_file():
                raise DataError(f"{text} is an image file, but the model reads texts")
        return [TextRecord(text, -1, check_text(text, f"text {n + 1}")) for n, text in enumerate(inputs)]
    return [ImageRecord(f"image[{n}]", -1, encoded=i) if isinstance(i, bytes) else ImageRecord(str(i), -1)
            for n, i in enumerate(inputs)]


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded per-class split into (train indices, val indices).

    Every class with at least two samples keeps at least one in each split, so
    validation accuracy is defined for every class.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    train: list[int] = []
    val: list[int] = []
    for cls in np.unique(labels_arr):
        members = np.flatnonzero(labels_arr == cls)
        rng.shuffle(members)
        n_val = int(round(len(members) * val_fraction))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        else:
            n_val = 0
        val.extend(int(i) for i in members[:n_val])
        train.extend(int(i) for i in members[n_val:])
    return sorted(train), sorted(val)


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))


def _list_class_folder(root: Path, class_names: list[str], skip_bad: bool, skipped: list[str]) -> list[ImageRecord]:
    records: list[ImageRecord] = []
    for label, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not _is_hidden(p))
        images = []
        for path in files:
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(path)
            elif skip_bad:
                skipped.append(str(path))
            else:
                raise DataError(
                    f"{path} is not an image file (extension '{path.suffix}'); remove it, or skip bad files",
                    remedy="skip_bad",
                )
        if not images:
            raise DataError(f"class folder {folder} holds no images")
        records.extend(ImageRecord(str(p), label) for p in images)
    return records


def _open_folder(root: Path, skip_bad: bool) -> LabeledData:
    skipped: list[str] = []
    split_dirs = {name: root / name for name in SPLIT_NAMES if (root / name).is_dir()}
    if "train" in split_dirs:
        class_names = [p.name for p in _class_dirs(split_dirs["train"])]
        splits = {}
        for split, folder in split_dirs.items():
            extra = [p.name for p in _class_dirs(folder) if p.name not in class_names]
            if extra:
                raise DataError(f"{folder} has classes missing from train/: {', '.join(extra)}")
            splits[split] = _list_class_folder(folder, class_names, skip_bad, skipped)
    elif "val" in split_dirs:
        class_names = [p.name for p in _class_dirs(split_dirs["val"])]
        splits = {"val": _list_class_folder(split_dirs["val"], class_names, skip_bad, skipped)}
    else:
        class_names = [p.name for p in _class_dirs(root)]
        splits = {"all": _list_class_folder(root, class_names, skip_bad, skipped)}
    if not class_names:
        raise DataError(f"{root} has no class subfolders (expected ROOT/CLASS/IMAGE or ROOT/train/CLASS/IMAGE)")
    return LabeledData(str(root), class_names, splits, skipped=skipped)


def _open_csv(path: Path, skip_bad: bool) -> LabeledData:
    rows: list[tuple[str, str, tuple[int, str]]] = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if not row or all(not cell.strip() for cell in row):
                    continue
                if line_no == 1 and row[0].strip().lower() == "path":
                    continue
                if len(row) < 2 or not row[1].strip():
                    raise DataError(f"{path}:{line_no}: expected 'path,label[,split]', got {row!r}")
                split = parse_split(row[2] if len(row) > 2 else "", f"{path}:{line_no}")
                rows.append((row[1].strip(), split, (line_no, row[0].strip())))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not a UTF-8 CSV file") from exc
    if not rows:
        raise DataError(f"{path} lists no images")
    skipped: list[str] = []

    def image(payload: tuple[int, str], label: int) -> ImageRecord | None:
        line_no, rel = payload
        image_path = (path.parent / rel) if not Path(rel).is_absolute() else Path(rel)
        if not image_path.is_file():
            if skip_bad:
                skipped.append(str(image_path))
                return None
            raise DataError(f"{path}:{line_no}: image file {image_path} does not exist")
        return ImageRecord(str(image_path), label)

    class_names, splits = records_by_split(path, rows, image)
    return LabeledData(str(path), class_names, splits, skipped=skipped)


def _open_builtin(name: str) -> LabeledData:
    """A shipped set (:mod:`edgetl.runtime.data.builtin`) with its fixed, seeded train/val split."""
    from .builtin import builtin_dataset  # only a builtin: address pays for it

    spec = builtin_dataset(name)
    arrays = spec.load_arrays()
    train_idx, val_idx = stratified_split(arrays.labels, spec.val_fraction, spec.split_seed)

    def records(indices: list[int]) -> list[ImageRecord]:
        return [ImageRecord(f"builtin:{name}#{i}", int(arrays.labels[i]), arrays.images[i]) for i in indices]

    return LabeledData(f"builtin:{name}", arrays.class_names, {"train": records(train_idx), "val": records(val_idx)},
                       spec.recommended_image_size, spec.recommended_crop_pct)


def _names_text(path: Path) -> bool:
    """A CSV whose header starts with ``text``, or names a ``text`` and a label column, holds texts
    (:mod:`.text_sources`); an image CSV's first cell is ``path`` or an image's path."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except csv.Error:             # an oversized first cell: a text file's reader says so on its line
        return True
    return names_texts(header) or [cell.strip().lower() for cell in header][:1] == ["text"]


def open_data(address: str | Path, skip_bad: bool = False, labelled: bool = True) -> LabeledData:
    """Resolve a data address: ``builtin:NAME``, an image folder, a CSV file of images, or a CSV / JSONL file of
    labelled texts (``labelled=False``: texts without labels are accepted, as ``cluster`` reads them)."""
    text = str(address)
    if text.startswith("builtin:"):
        return _open_builtin(text[len("builtin:"):])
    path = Path(text)
    if not path.exists():
        raise DataError(f"data not found: {path} (expected an image folder, a CSV file or builtin:NAME)")
    if path.is_dir():
        data = _open_folder(path, skip_bad)
    elif path.suffix.lower() == ".jsonl" or (path.suffix.lower() == ".csv" and _names_text(path)):
        class_names, splits, skipped = read_texts(path, skip_bad, labelled)
        data = LabeledData(str(path), class_names, splits, skipped=skipped)
    elif path.suffix.lower() == ".csv":
        data = _open_csv(path, skip_bad)
    else:
        raise DataError(f"{path} is neither a folder, a .csv nor a .jsonl file")
    return data


def check_trainable(data: LabeledData) -> None:
    """Refuse data that cannot train a classifier (fewer than two non-empty classes)."""
    counts = np.bincount([r.label for r in data.split("all")], minlength=len(data.class_names))
    empty = [name for name, count in zip(data.class_names, counts) if count == 0]
    if empty:
        raise DataError(f"{data.address}: classes without images: {', '.join(empty)}")
    if len(data.class_names) < 2:
        raise DataError(
            f"{data.address} has a single class ({data.class_names[0] if data.class_names else 'none'}); "
            "a classifier needs at least two"
        )


