"""``edgetl-rt drift``: the drift score of a batch of inputs, window by window in their order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.sources import IMAGE_EXTENSIONS, SPLITS, input_records, open_data
from ..errors import ConfigError, DataError
from ..progress import ProgressFactory, silent_progress
from .drift import DEFAULT_FALSE_ALARMS, DEFAULT_WINDOW, METHOD, WindowScore, detector_for, score_windows
from .features import backbone_features
from .model import EdgeModel


@dataclass
class DriftReport:
    """Per-window drift scores of DATA against the training statistics, and the alarm level they meet."""

    bundle: str
    data: str
    split: str
    n: int
    window: int
    method: str
    threshold: float
    false_alarms_per_1000: float
    alarms: int
    windows: list[WindowScore]
    calibration: dict
    head_version: int | None
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"bundle": self.bundle, "data": self.data, "split": self.split, "n": self.n, "window": self.window,
                "method": self.method, "threshold": self.threshold,
                "false_alarms_per_1000": self.false_alarms_per_1000, "alarms": self.alarms,
                "windows": [w.to_json() for w in self.windows], "calibration": self.calibration,
                "head_version": self.head_version, "skipped": self.skipped}


def drift_bundle(model: EdgeModel, data_address: str, window: int = DEFAULT_WINDOW,
                 false_alarms: float = DEFAULT_FALSE_ALARMS, seed: int = 0, split: str | None = None,
                 skip_bad: bool = False, progress: ProgressFactory = silent_progress) -> DriftReport:
    """Score DATA (its labels, if any, are ignored) in consecutive windows of ``window`` inputs, in order; the last
    window may be shorter and is scored against its own size's alarm level."""
    if window < 2:
        raise ConfigError(f"must be at least 2, got {window}", option="window")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}", option="split")
    records, chosen, skipped = _records(model, data_address, split, skip_bad)
    if len(records) < 2:
        raise DataError(f"{data_address} holds {len(records)} input(s); drift needs at least 2")
    detector = detector_for(model.bundle, false_alarms=false_alarms, seed=seed)
    found = backbone_features(model, records, model.adapter, skip_bad=skip_bad, progress=progress,
                              label="drift")
    if len(found.kept) < 2:
        raise DataError(f"{data_address}: fewer than 2 inputs could be read")
    predicted = np.argmax(model.head.logits(found.values), axis=1)
    scores = score_windows(detector, found.values, model.labels, window, predicted=predicted)
    full = window if len(found.kept) >= window else len(found.kept)
    return DriftReport(str(model.bundle.path), str(data_address), chosen, len(found.kept), window, METHOD,
                       detector.level(full).threshold, detector.false_alarms, sum(w.alarm for w in scores), scores,
                       detector.calibration(full), model.head_version, skipped + found.skipped)


def _records(model: EdgeModel, data_address: str, split: str | None, skip_bad: bool) -> tuple[list, str, list[str]]:
    """DATA's records in order: a folder of images without class folders is read as they are, by name; anything
    else as ``open_data`` reads it (labels ignored)."""
    path = Path(data_address)
    if path.is_dir() and not any(p.is_dir() for p in path.iterdir()):
        files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if files and split in (None, "all"):
            return input_records(files, model.preprocess), "all", []
    data = open_data(data_address, skip_bad=skip_bad, labelled=False)
    chosen = split or "all"
    return data.split(chosen), chosen, list(data.skipped)
