"""The run directory: what fine-tuning leaves for the exporters.

A run holds ``manifest.json`` (:class:`RunManifest`), the head as ``head.npz``,
the fine-tuned tail of the backbone as ``tail.pt`` when ``--train-last`` was
used, and ``metrics.json``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from edgetl.runtime.bundle.manifest import PREPROCESS_TABLE
from edgetl.runtime.documents import Origin, Table, build, read_document, table_of, to_json
from edgetl.runtime.errors import EdgetlError

RUN_SCHEMA = "edgetl.run/1"


@dataclass
class RunManifest:
    """Everything needed to rebuild, export and evaluate a fine-tuned model."""

    edgetl_version: str
    created: str
    data_address: str
    class_names: list[str]
    split: dict            # {"source": "data" | "seeded", "val_fraction", "seed"}
    train_sources: list[str]
    val_sources: list[str]
    backbone: dict         # {"name", "weights", "weights_sha256", "feature_dim", "train_last", "freeze_stage"}
    preprocess: dict
    head: dict             # HeadConfig.to_dict()
    compute: dict          # {"device", "precision"}
    cache: dict            # {"key", "dir", "hit"}
    timings: dict
    val_accuracy: float
    files: dict = field(default_factory=lambda: {"head": "head.npz"})
    selection: dict | None = None   # the 'edgetl select' table, when --backbone auto chose the backbone
    schema: str = RUN_SCHEMA

    def write(self, folder: Path) -> None:
        (folder / "manifest.json").write_text(to_json(self))

    @classmethod
    def read(cls, folder: str | Path) -> RunManifest:
        """The run's description, every key checked: a damaged or hand-edited file is a one-line error."""
        path = Path(folder) / "manifest.json"
        origin = Origin(str(path), EdgetlError, "run 'edgetl finetune' again")
        data = read_document(path, origin, (RUN_SCHEMA,), what="an edgetl run description",
                             missing=f"{folder} is not a run directory (no manifest.json); run 'edgetl finetune' first")
        return build(cls, data, origin, _run_table())


@functools.cache
def _run_table() -> Table:
    """What the exporters read from a run; blocks kept for the record (split, compute, cache, timings) are tables."""
    return table_of(
        RunManifest,
        backbone=Table({"name": str, "weights": str | None, "weights_sha256": str, "weights_source": str,
                        "feature_dim": int, "train_last": int, "freeze_stage": int},
                       optional=("weights", "weights_source", "freeze_stage"), closed=False),
        preprocess=PREPROCESS_TABLE,
        head=Table({"kind": str}, closed=False),
        files=Table({"head": str, "tail": str}, optional=("tail",), closed=False),
    )
