"""Build a bundle from a run directory: export, check, evaluate, write atomically.

Each backbone artifact is checked against the torch model on real images
from the run's validation split, then evaluated on the whole split through
the device runtime, so the manifest records the accuracy the device will
actually see and its drop against the torch reference.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetl import __version__
from edgetl.backbones import create_backbone
from edgetl.heads import torch_head
from edgetl.run import RunManifest
from edgetl.runtime.backends import create_backend
from edgetl.runtime.data import ImageRecord, LabeledData, open_data
from edgetl.runtime.errors import DataError, EdgetlError
from edgetl.runtime.fsutil import atomic_directory
from edgetl.runtime.heads import load_head
from edgetl.runtime.manifest import BUNDLE_SCHEMA_VERSION, Artifact, BundleManifest, FileEntry
from edgetl.runtime.model import EdgeModel
from edgetl.runtime.preprocess import PreprocessConfig
from edgetl.runtime.progress import ProgressFactory, silent_progress
from edgetl.runtime.reader import read_batches

from . import DEFAULT_FORMATS, resolve_formats
from .onnx import INPUT_NAME, check_export

CHECK_IMAGES = 16


@dataclass
class ExportResult:
    bundle: Path
    manifest: BundleManifest


def rebuild_feature_model(run: RunManifest, run_dir: Path) -> nn.Module:
    """The backbone as fine-tuned in the run: frozen part + (trained) tail, in eval mode."""
    info = run.backbone
    backbone = create_backbone(info["name"], info.get("weights"))
    if backbone.weights_sha256() != info["weights_sha256"]:
        raise EdgetlError(
            f"the weights of backbone {info['name']} differ from those the run was trained with; "
            "install the same weights or pass the same --weights file"
        )
    frozen, tail = backbone.split(int(info["train_last"]))
    if "tail" in run.files:
        state = torch.load(run_dir / run.files["tail"], map_location="cpu", weights_only=True)
        tail.load_state_dict(state)
    return nn.Sequential(frozen, tail).eval()


def validation_records(run: RunManifest, data_address: str | None) -> list[ImageRecord]:
    """The run's validation images, found again in its data (or in ``data_address``)."""
    address = data_address or run.data_address
    try:
        data: LabeledData = open_data(address)
    except EdgetlError as exc:
        raise DataError(
            f"cannot reach the run's data {address} to check the export on real images ({exc}); "
            "pass --data to point at a copy"
        ) from exc
    data = data.remap_to(run.class_names)
    by_source = {r.source: r for r in data.split("all")}
    if data_address:  # a moved copy: match by path relative to the data root
        by_source.update({_relative(r.source, address): r for r in data.split("all")})
    records = [by_source.get(s) or by_source.get(_relative(s, run.data_address)) for s in run.val_sources]
    missing = sum(r is None for r in records)
    if missing:
        raise DataError(f"{missing} of the run's {len(records)} validation images are no longer in {address}")
    return records


def _relative(source: str, root: str) -> str:
    try:
        return str(Path(source).relative_to(root))
    except ValueError:
        return source


def _check_batch(records: list[ImageRecord], preprocess: PreprocessConfig) -> np.ndarray:
    step = max(1, len(records) // CHECK_IMAGES)
    sample = records[::step][:CHECK_IMAGES]
    return np.concatenate([b.images for b in read_batches(sample, preprocess, CHECK_IMAGES)])


def _artifact_accuracy(
    bundle: Path, artifact: Artifact, records: list[ImageRecord], preprocess: PreprocessConfig,
    progress: ProgressFactory,
) -> float:
    """Top-1 accuracy of one artifact, run exactly as the device runs it."""
    if artifact.role == "backbone":
        with EdgeModel(bundle, artifact=artifact.name) as model:
            return model.evaluate(records, progress=progress)["accuracy"]
    correct = 0
    with create_backend(artifact.backend, bundle / artifact.file) as backend:
        for batch in read_batches(records, preprocess, 32):
            predicted = np.argmax(backend.infer(batch.images), axis=1)
            correct += int(np.sum(predicted == np.array([records[i].label for i in batch.indices])))
    return correct / len(records)


def export_run(
    run_dir: str | Path,
    out: str | Path,
    formats: str = DEFAULT_FORMATS,
    data_address: str | None = None,
    overwrite: bool = False,
    progress: ProgressFactory = silent_progress,
    log=lambda message: None,
) -> ExportResult:
    """Export a run to a bundle folder; nothing is written unless every check passes."""
    chosen = resolve_formats(formats)
    if Path(out).exists() and not overwrite:
        raise EdgetlError(f"{out} already exists; choose another --out or pass --overwrite")
    run_dir = Path(run_dir)
    run = RunManifest.read(run_dir)
    preprocess = PreprocessConfig.from_dict(run.preprocess)
    head = load_head(run_dir / run.files["head"])
    records = validation_records(run, data_address)
    check_images = _check_batch(records, preprocess)
    feature_model = rebuild_feature_model(run, run_dir)
    fused = nn.Sequential(feature_model, torch_head(head)).eval()

    with atomic_directory(out, overwrite=overwrite) as staging:
        artifacts: list[Artifact] = []
        diffs: dict[str, float] = {}
        for fmt in chosen:
            for role, module, output in (("backbone", feature_model, "features"), ("model", fused, "logits")):
                path = staging / fmt.filename(role)
                log(f"exporting {path.name} ({fmt.name}, {fmt.precision})")
                fmt.export(module, path, preprocess.input_size, output)
                diffs[path.name] = check_export(module, path, check_images, fmt.tolerance, output)
                entry = FileEntry.of(staging, path.name)
                artifacts.append(Artifact(
                    name=fmt.name if role == "backbone" else f"{fmt.name}-fused",
                    format=fmt.name, precision=fmt.precision, backend=fmt.backends[0],
                    role="backbone" if role == "backbone" else "fused",
                    file=entry.file, sha256=entry.sha256, size=entry.size,
                    input_name=INPUT_NAME, output_name=output, max_abs_diff=diffs[path.name],
                ))
        shutil.copyfile(run_dir / run.files["head"], staging / "head.npz")
        head_entry = FileEntry.of(staging, "head.npz")
        manifest = BundleManifest(
            schema_version=BUNDLE_SCHEMA_VERSION,
            edgetl_version=__version__,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            backbone={k: run.backbone[k] for k in ("name", "weights_sha256", "weights_source", "feature_dim", "train_last")},
            preprocess=run.preprocess,
            labels=list(run.class_names),
            feature_dim=int(run.backbone["feature_dim"]),
            head={"kind": head.kind, "file": head_entry.file, "sha256": head_entry.sha256, "size": head_entry.size},
            artifacts=artifacts,
            reference_accuracy=run.val_accuracy,
            validation={"check_images": int(len(check_images)), "max_abs_diff": diffs,
                        "evaluated_on": f"{run.data_address} (run validation split, {len(records)} images)"},
            source_run={"path": str(run_dir.resolve()), "created": run.created, "data": run.data_address},
        )
        manifest.write(staging)
        for artifact in artifacts:
            log(f"evaluating {artifact.name} on {len(records)} validation images")
            accuracy = _artifact_accuracy(staging, artifact, records, preprocess, progress)
            artifact.accuracy = accuracy
            artifact.accuracy_drop = round((run.val_accuracy - accuracy) * 100.0, 4)
        manifest.write(staging)
    return ExportResult(Path(out), manifest)
