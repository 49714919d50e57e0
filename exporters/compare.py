"""Parity of every artifact in a bundle against its fp32 reference, Polygraphy-comparator style.

The same images go through each backbone artifact (with the numpy head) and
each fused model on every installed backend that can run it, each at the
precision its artifact declares; logits are compared with the fp32 ONNX
reference.  An artifact this CPU cannot run as stated (8-bit int8 without
VNNI) is compared on its exact reference backend only; a precision the
engine emulates or falls back from is named in the row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgetl.runtime.bundle.heads import load_head
from edgetl.runtime.bundle.manifest import BundleManifest, read_bundle_manifest
from edgetl.runtime.data.preprocess import preprocess_from_dict
from edgetl.runtime.data.reader import read_batches
from edgetl.runtime.data.sources import ImageRecord, open_data
from edgetl.runtime.data.text import TextPreprocess, padded_batches
from edgetl.runtime.engines.backends import available_backends, create_backend
from edgetl.runtime.errors import BundleError
from edgetl.runtime.machine import cpu_facts

REFERENCE = "onnx"


@dataclass
class ComparisonRow:
    artifact: str
    backend: str
    precision: str
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    images: int
    effective_precision: str = ""
    note: str = ""


def run_in_batches(runner, inputs: np.ndarray, batch_size: int, pad_id: int | None = None) -> np.ndarray:
    """An open backend's outputs over ``inputs`` in record order: batches in order, or a text model's padded ids
    (``pad_id``) in batches of similar length cut to their longest
    (:func:`~edgetl.runtime.data.text.padded_batches`)."""
    if pad_id is None:
        return np.concatenate([runner.infer(np.ascontiguousarray(inputs[start:start + batch_size]))
                               for start in range(0, len(inputs), batch_size)])
    out = None
    for rows, ids in padded_batches(inputs, pad_id, batch_size):
        result = runner.infer(ids)
        out = np.zeros((len(inputs), *result.shape[1:]), np.float32) if out is None else out
        out[rows] = result
    return out


def compare_bundle(bundle: str | Path, records: Sequence[ImageRecord], batch_size: int = 16,
                   manifest: BundleManifest | None = None) -> list[ComparisonRow]:
    """Every artifact of ``bundle`` against the fp32 reference on ``records`` (``manifest``: the bundle's, when the
    caller has read and verified it already)."""
    bundle = Path(bundle)
    manifest = manifest or read_bundle_manifest(bundle)
    head = load_head(bundle / manifest.head["file"])
    preprocess = preprocess_from_dict(manifest.preprocess, bundle)     # its tokenizer checked with the manifest
    # one matrix padded to the longest text, run by length as on the device
    if isinstance(preprocess, TextPreprocess):
        images = preprocess.encode([r.text for r in records])
    else:
        images = np.concatenate([b.images for b in read_batches(records, preprocess, batch_size)])
    here = available_backends()

    def logits(artifact, backend: str) -> tuple[np.ndarray, dict]:
        with create_backend(backend, bundle / artifact.file, precision=artifact.precision) as runner:
            out = run_in_batches(runner, images, batch_size, preprocess.pad_id)
            described = {"effective_precision": runner.effective_precision,
                         "note": runner.settings.get("precision_note", "")}
            return (head.logits(out) if artifact.role == "backbone" else out), described

    reference_artifact = manifest.artifact(REFERENCE)
    if "onnxruntime" not in here:
        raise BundleError("the fp32 reference runs on onnxruntime, which is not installed")
    reference, _ = logits(reference_artifact, "onnxruntime")
    flags = cpu_facts()["flags"]
    rows = []
    for artifact in manifest.artifacts:
        for backend in (artifact.backends or [artifact.backend]):
            if backend not in here or (artifact.name == REFERENCE and backend == "onnxruntime"):
                continue
            if artifact.precision == "int8" and not artifact.runs_on(flags) and not backend.endswith("-reference"):
                continue   # its kernels would saturate here; the reference row shows what it computes
            out, ran = logits(artifact, backend)
            diff = np.abs(out - reference)
            rows.append(ComparisonRow(
                artifact.name, backend, artifact.precision, float(diff.max()), float(diff.mean()),
                float(np.mean(out.argmax(1) == reference.argmax(1))), len(images), **ran,
            ))
    return rows


def rows_to_dicts(rows: list[ComparisonRow]) -> list[dict]:
    return [asdict(r) for r in rows]


@dataclass
class BundleComparison:
    """``edgetl compare``: the rows of every artifact run here, and the artifacts this CPU cannot run."""

    bundle: str
    data: str
    rows: list[ComparisonRow]
    not_run: list[dict] = field(default_factory=list)    # {"artifact", "backend", "needs": CPU flags}
    modality: str = "image"

    def to_json(self) -> dict:
        return {"bundle": self.bundle, "data": self.data, "reference": "onnx (onnxruntime, fp32)",
                "rows": rows_to_dicts(self.rows), "not_run": self.not_run}

    def lines(self) -> list[str]:
        """The comparison as a table: one line per artifact and backend."""
        inputs = "texts" if self.modality == "text" else "images"
        lines = [f"reference: onnx fp32 on onnxruntime; {self.rows[0].images if self.rows else 0} {inputs} of "
                 f"{self.data}",
                 f"{'artifact':22s} {'backend':21s} {'prec':5s} {'ran':5s} {'max|diff|':>10s} {'mean|diff|':>10s} "
                 f"{'top-1 agree':>11s}"]
        lines += [f"{r.artifact:22s} {r.backend:21s} {r.precision:5s} {r.effective_precision:5s} "
                  f"{r.max_abs_diff:10.3g} {r.mean_abs_diff:10.3g} {r.top1_agreement:11.3f}"
                  + (f"  ({r.note})" if r.note else "") for r in self.rows]
        lines += [f"{s['artifact']:22s} {s['backend']:21s} not run: its kernels need one of {', '.join(s['needs'])}"
                  for s in self.not_run]
        return lines


def source_data(bundle: str | Path) -> str | None:
    """The data the bundle was exported from, as its manifest names it (None when it names none)."""
    return read_bundle_manifest(bundle, verify=False).source_run.get("data")


def compare_on_data(bundle: str | Path, data: str, split: str | None = None, limit: int = 64) -> BundleComparison:
    """Compare every artifact of ``bundle`` on at most ``limit`` inputs of ``data`` spread evenly over ``split``
    (default: val when the data has one, else all), and list the artifacts whose kernels this CPU lacks."""
    manifest = read_bundle_manifest(bundle)
    source = open_data(data).remap_to(manifest.labels)
    records = source.split(split or ("val" if source.has_val else "all"))
    step = max(1, len(records) // limit)
    rows = compare_bundle(bundle, records[::step][:limit], manifest=manifest)
    compared = {(r.artifact, r.backend) for r in rows}
    flags = cpu_facts()["flags"]
    not_run = [{"artifact": a.name, "backend": b, "needs": a.requires_cpu} for a in manifest.artifacts
               if not a.runs_on(flags) for b in a.backends if (a.name, b) not in compared]
    return BundleComparison(str(bundle), data, rows, not_run, manifest.modality)
