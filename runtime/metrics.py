"""Classification metrics shared by host fine-tuning and device evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def top1_accuracy(logits: np.ndarray, labels: np.ndarray, among: int | None = None) -> float | None:
    """Share of rows whose highest logit is their label; with ``among`` only the first ``among`` classes compete
    (the classes an older head knew).  None for no rows."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if len(labels) == 0:
        return None
    return float(np.mean(np.argmax(logits[:, :among] if among else logits, axis=1) == labels))


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, per-class accuracy (recall) and the confusion matrix (rows: truth)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    k = len(class_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        total = int(confusion[i].sum())
        if total:
            per_class[name] = {"accuracy": float(confusion[i, i] / total), "n": total}
    n = int(len(y_true))
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if n else float("nan"),
        "n": n,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "labels": list(class_names),
    }
