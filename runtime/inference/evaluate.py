"""Device-side evaluation of a bundle on labelled data."""

from __future__ import annotations

from ..data.sources import SPLITS, open_data
from ..errors import BelowMinAccuracyError, ConfigError
from ..progress import ProgressFactory, silent_progress
from .model import EdgeModel


def evaluate_bundle(
    model: EdgeModel,
    data_address: str,
    split: str | None = None,
    skip_bad: bool = False,
    progress: ProgressFactory = silent_progress,
    reject: bool = False,
    unknown: str | None = None,
) -> dict:
    """Evaluate on ``split`` of the data (default: its val split when it has one, else all); ``unknown``: data of
    classes the model does not know (any labels are ignored), for the unknown-input scorer's AUROC and the share
    of it accepted (see :meth:`EdgeModel.evaluate`).  Every file of the bundle is checked first (a deployment gate
    passes a bundle whole, not the files its job reads)."""
    model.bundle.verify_listed()
    if split is not None and split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}", option="split")
    data = open_data(data_address, skip_bad=skip_bad).remap_to(model.labels)
    chosen = split or ("val" if data.has_val else "all")
    unknown_data = open_data(unknown, skip_bad=skip_bad, labelled=False) if unknown is not None else None
    report = model.evaluate(data.split(chosen), skip_bad=skip_bad, progress=progress, reject=reject,
                            unknown_records=unknown_data.split("all") if unknown_data is not None else None)
    report["skipped"] = list(data.skipped) + (list(unknown_data.skipped) if unknown_data else []) + report["skipped"]
    report.update(data=data_address, split=chosen)
    if unknown is not None:
        report["unknown"]["data"] = unknown
    return report


def require_accuracy(report: dict, minimum: float) -> None:
    """Raise :class:`BelowMinAccuracyError` when ``report``'s accuracy is below ``minimum``: a deployment gate
    a script can test by exit code, after the report itself has been shown."""
    if report["accuracy"] < minimum:
        raise BelowMinAccuracyError(
            f"accuracy {report['accuracy']:.4f} on {report['data']} [{report['split']}] is below the required "
            f"{minimum:g}", option="min_accuracy")
