"""The run directory: what fine-tuning leaves for the exporters.

A run holds ``manifest.json`` (:class:`RunManifest`), the head as ``head.npz``,
the fine-tuned tail of the backbone as ``tail.pt`` when ``--train-last`` was
used, and ``metrics.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
    schema: str = RUN_SCHEMA

    def write(self, folder: Path) -> None:
        (folder / "manifest.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, folder: str | Path) -> "RunManifest":
        path = Path(folder) / "manifest.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise EdgetlError(f"{folder} is not a run directory (no manifest.json); run 'edgetl finetune' first") from exc
        except json.JSONDecodeError as exc:
            raise EdgetlError(f"{path} is not valid JSON: {exc}") from exc
        if data.get("schema") != RUN_SCHEMA:
            raise EdgetlError(f"{path} has schema {data.get('schema')!r}; this edgetl reads {RUN_SCHEMA}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise EdgetlError(f"{path} is missing fields: {exc}") from exc
