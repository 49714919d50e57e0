"""Build a bundle from a run directory: export, check, gate on accuracy, write atomically.

Every bundle starts from the fp32 ONNX export of the fine-tuned backbone
(plus a fused backbone+head model), checked against torch on real images.
Each further format is derived from it and measured on the run's whole
validation split with the runtime backend that will run it; an artifact that
loses more than ``--max-accuracy-drop`` points against fp32 is rebuilt with
its fallbacks, and if it still fails the export fails and writes nothing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetl import __version__
from edgetl.backbones import create_backbone
from edgetl.devices import get_profile
from edgetl.heads import torch_head
from edgetl.run import RunManifest
from edgetl.runtime.bundle.heads import Head, load_head
from edgetl.runtime.bundle.manifest import BUNDLE_SCHEMA_VERSION, MANIFEST_NAME, Artifact, BundleManifest, FileEntry
from edgetl.runtime.bundle.signature import BUNDLE_SIGNATURE
from edgetl.runtime.bundle.unknown import DEFAULT_KEEP, DEFAULT_METHOD
from edgetl.runtime.data.preprocess import PreprocessConfig, preprocess_from_dict
from edgetl.runtime.data.sources import ImageRecord, LabeledData, open_data
from edgetl.runtime.data.text import TextPreprocess
from edgetl.runtime.documents import utc_now
from edgetl.runtime.engines.backends import create_backend, installed
from edgetl.runtime.errors import (
    AccuracyGateError,
    ConfigError,
    DataError,
    EdgetlError,
    ExportValidationError,
    MissingDependencyError,
)
from edgetl.runtime.fsutil import atomic_directory
from edgetl.runtime.machine import cpu_facts
from edgetl.runtime.metrics import top1_accuracy
from edgetl.runtime.progress import ProgressFactory, silent_progress
from edgetl.runtime.signing import SigningKey, load_signing_key, sign_file
from edgetl.unknown_choice import check_export_settings

from . import DEFAULT_FORMATS, EXPORT_FORMATS, ExportFormat, resolve_formats
from .calibration import DEFAULT_CALIBRATION_SIZE, ExportData
from .check_data import write_check_data
from .compare import run_in_batches
from .context import BuildContext
from .learning_data import write_learning_data, write_unknown
from .onnx import INPUT_NAME, check_export, export_onnx, max_abs_difference
from .targets import formats_for_target, target_block

CHECK_IMAGES = 16
DEFAULT_MAX_ACCURACY_DROP = 1.0


@dataclass
class ExportResult:
    bundle: Path
    manifest: BundleManifest


def rebuild_feature_model(run: RunManifest, run_dir: Path) -> tuple[nn.Module, PreprocessConfig | TextPreprocess]:
    """The backbone as fine-tuned in the run (frozen part + trained tail, in eval mode) and its preprocessing (a
    text encoder's tokenizer read from its folder, checked to be the one the run used)."""
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
    preprocess = preprocess_from_dict(run.preprocess)
    if isinstance(preprocess, TextPreprocess):
        preprocess = backbone.pretrained.preprocess()
        if preprocess.to_dict() != run.preprocess:
            raise EdgetlError(f"the tokenizer of {info['name']} differs from the one the run was trained with")
    return nn.Sequential(frozen, tail).eval(), preprocess


def run_records(run: RunManifest, data_address: str | None) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """The run's (train, val) images, found again in its data (or in ``data_address``)."""
    address = data_address or run.data_address
    noun = "texts" if run.preprocess.get("kind") == "text" else "images"
    try:
        data: LabeledData = open_data(address)
    except EdgetlError as exc:
        raise DataError(
            f"cannot reach the run's data {address} to check the export on real {noun} ({exc}); "
            "give DATA to point at a copy"
        ) from exc
    data = data.remap_to(run.class_names)
    by_source = {r.source: r for r in data.split("all")}
    if data_address:  # a moved copy: match by path relative to the data root
        by_source.update({_relative(r.source, address): r for r in data.split("all")})

    def find(sources: list[str]) -> list[ImageRecord]:
        found = [by_source.get(s) or by_source.get(_relative(s, run.data_address)) for s in sources]
        missing = sum(r is None for r in found)
        if missing:
            raise DataError(f"{missing} of the run's {len(found)} {noun} are no longer in {address}")
        return found

    return find(run.train_sources), find(run.val_sources)


def _relative(source: str, root: str) -> str:
    try:
        return str(Path(source).relative_to(root))
    except ValueError:
        return source


@dataclass(frozen=True)
class Measurement:
    """How this machine measures a format: with which backend, and how faithful that is (``MEASUREMENTS``)."""

    backend: str | None
    measured: str
    note: str = ""


def measurement_plan(fmt: ExportFormat, cpu_flags) -> Measurement:
    """Measure a format as the device will run it where this CPU can; else exactly on the float reference
    (int8 Q/DQ), else in OpenVINO's bf16 emulation (decided once the backend reports what it ran), else not."""
    found = installed(fmt.backends)
    if not found:
        raise MissingDependencyError(fmt.backends[0], fmt.backends[0], f"measuring the {fmt.name} artifact")
    native = not fmt.requires_cpu or bool(set(fmt.requires_cpu) & set(cpu_flags))
    if native:
        exact = found[0].endswith("-reference")   # TensorRT-form int8 measured by fake-quantization
        return Measurement(found[0], "exact" if exact else "as-deployed",
                           f"measured on {found[0]}, not on {fmt.backends[0]}" if exact else "")
    lacking = f"this CPU has none of {', '.join(fmt.requires_cpu)}"
    if "onnxruntime-reference" in found:
        return Measurement("onnxruntime-reference", "exact",
                           f"{lacking}: measured exactly by float fake-quantization (onnxruntime-reference)")
    if fmt.precision == "bf16" and "openvino" in found:
        return Measurement("openvino", "emulated", f"{lacking}: measured in OpenVINO's bf16 emulation")
    return Measurement(None, "not-measured", f"{lacking} and no engine here computes it exactly")


def artifact_accuracy(backend: str, path: Path, head: Head | None, images: np.ndarray, labels: np.ndarray,
                      batch_size: int = 32, precision: str = "fp32", pad_id: int | None = None) -> tuple[float, str]:
    """Top-1 accuracy of an artifact run exactly as the device runs it, and the precision the engine reports
    it computed in (an engine may fall back, e.g. OpenVINO runs bf16 as f32 on a CPU without AVX-512).

    ``head`` follows a backbone artifact; ``None`` means the file itself outputs logits (fused).  ``pad_id``: the
    inputs are a text model's padded ids, run in batches by length as the device runs them.
    """
    with create_backend(backend, path, precision=precision) as runner:
        outputs = run_in_batches(runner, images, batch_size, pad_id)
        ran = runner.effective_precision
    return top1_accuracy(head.logits(outputs) if head is not None else outputs, labels), ran


def _check_rows(n: int) -> np.ndarray:
    """Positions of the (at most ``CHECK_IMAGES``) validation images every check uses, spread over the split."""
    return np.arange(0, n, max(1, n // CHECK_IMAGES))[:CHECK_IMAGES]


def _entry(staging: Path, fmt: ExportFormat, files: list[str], role: str, output: str, options: dict,
           backend: str) -> Artifact:
    main = FileEntry.of(staging, files[0])
    companions = [FileEntry.of(staging, name).__dict__ for name in files[1:]]
    return Artifact(
        name=fmt.name if role == "backbone" else f"{fmt.name}-fused", format=fmt.name,
        precision=fmt.precision_with(options), backend=fmt.backends[0], role=role,
        file=main.file, sha256=main.sha256, size=main.size, input_name=INPUT_NAME, output_name=output,
        backends=list(fmt.backends), companions=companions, evaluated_with=backend,
    )


def export_run(
    run_dir: str | Path,
    out: str | Path,
    formats: str | None = None,
    data_address: str | None = None,
    overwrite: bool = False,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    options: dict | None = None,
    progress: ProgressFactory = silent_progress,
    log=lambda message: None,
    target: str | None = None,
    sign_key: str | Path | None = None,
    unknown_method: str = DEFAULT_METHOD,
    unknown_keep: float = DEFAULT_KEEP,
) -> ExportResult:
    """Export a run to a bundle folder; nothing is written unless every check passes.

    ``target`` names a device profile (or a profile's .toml path): its formats are built, on top of
    any ``formats`` given, and the bundle records the profile so the device picks the right artifact.
    ``sign_key``: an ed25519 private key file; the bundle is signed (``manifest.sig``) before it is renamed into
    place, so it never exists unsigned (the key is read first: a bad key fails before any work).
    ``unknown_method`` and ``unknown_keep``: the unknown-input scorer (or ``auto``: chosen by leave-classes-out,
    :mod:`edgetl.unknown_choice`) and the share of val inputs its threshold keeps
    (:mod:`edgetl.runtime.bundle.unknown`).
    """
    check_export_settings(unknown_method, unknown_keep)
    signer = _signer(sign_key, out)
    options = dict(options or {})
    profile = get_profile(target) if target else None
    if profile is not None:
        target_formats, target_options = formats_for_target(profile)
        formats = target_formats + (f",{formats}" if formats else "")
        options.update({k: v for k, v in target_options.items() if v})
    chosen = resolve_formats(formats or DEFAULT_FORMATS, options)
    if Path(out).exists() and not overwrite:
        raise EdgetlError(f"{out} already exists; choose another --out or pass --overwrite")
    if calibration_size < 1:
        raise ConfigError(f"must be at least 1, got {calibration_size}", option="calib")
    run_dir = Path(run_dir)
    run = RunManifest.read(run_dir)
    head = load_head(run_dir / run.files["head"])
    train_records, val_records = run_records(run, data_address)
    feature_model, preprocess = rebuild_feature_model(run, run_dir)
    if profile is not None and isinstance(preprocess, TextPreprocess):
        raise ConfigError("device profiles (--target) describe image models; export a text model with --format",
                          option="target")
    unfit = [f.name for f in chosen if preprocess.kind not in f.modalities]
    if unfit:
        raise ConfigError(f"{', '.join(unfit)} is not built for {preprocess.kind} models (for a text encoder's int8 "
                          "use onnx-int8-dynamic or openvino-int8)", option="format")
    fused = nn.Sequential(feature_model, torch_head(head)).eval()
    data = ExportData(preprocess, train_records, val_records, calibration_size, progress)
    try:
        with atomic_directory(out, overwrite=overwrite) as staging:
            labels = data.val_labels
            rows = _check_rows(len(labels))
            check = np.ascontiguousarray(data.val_images[rows])
            base = EXPORT_FORMATS["onnx"]
            artifacts: list[Artifact] = []
            for role, module, output in (("backbone", feature_model, "features"), ("model", fused, "logits")):
                path = staging / base.filename(role)
                log(f"exporting {path.name} (onnx, fp32)")
                export_onnx(module, path, preprocess.example(2), output)
                diff = check_export(module, path, check, base.tolerance, output)
                artifact = _entry(staging, base, [path.name], "backbone" if role == "backbone" else "fused",
                                  output, options, "onnxruntime")
                artifact.max_abs_diff = diff
                artifacts.append(artifact)
            reference, _ = artifact_accuracy("onnxruntime", staging / base.filename(), head, data.val_images, labels,
                                             pad_id=preprocess.pad_id)
            for artifact in artifacts:
                artifact.accuracy, artifact.accuracy_drop = reference, 0.0
                artifact.accuracy_by_arch = {cpu_facts()["arch"]: reference}
            artifacts[1].accuracy, _ = artifact_accuracy("onnxruntime", staging / base.filename("model"), None,
                                                         data.val_images, labels, pad_id=preprocess.pad_id)
            artifacts[1].accuracy_drop = round((reference - artifacts[1].accuracy) * 100.0, 4)
            artifacts[1].accuracy_by_arch = {cpu_facts()["arch"]: artifacts[1].accuracy}
            ctx = BuildContext(staging, staging / base.filename(), data, head, options, max_accuracy_drop, log)
            for fmt in chosen:
                if fmt.build is None:
                    continue
                artifacts.append(_build_gated(ctx, fmt, feature_model, check, reference, labels, options))
            shutil.copyfile(run_dir / run.files["head"], staging / "head.npz")
            if isinstance(preprocess, TextPreprocess):     # the device tokenizes with the model's own file
                shutil.copyfile(preprocess.path, staging / preprocess.tokenizer)
            log("computing the features the device keeps learning from (learning/features.npz)")
            learning = write_learning_data(staging, staging / base.filename(), data)
            unknown = write_unknown(staging, head, unknown_method, unknown_keep, log)
            check_entry = write_check_data(staging, staging / base.filename(), head,
                                           [val_records[i] for i in rows], preprocess, artifacts)
            head_entry = FileEntry.of(staging, "head.npz")
            manifest = BundleManifest(
                schema_version=BUNDLE_SCHEMA_VERSION,
                edgetl_version=__version__,
                created=utc_now(),
                backbone={k: run.backbone[k] for k in
                          ("name", "weights_sha256", "weights_source", "feature_dim", "train_last")},
                preprocess=run.preprocess,
                labels=list(run.class_names),
                feature_dim=int(run.backbone["feature_dim"]),
                head={"kind": head.kind, "file": head_entry.file, "sha256": head_entry.sha256,
                      "size": head_entry.size},
                artifacts=artifacts,
                reference_accuracy=reference,
                validation={
                    "check_images": int(len(check)),
                    "evaluated_on": f"{run.data_address} (run validation split, {len(labels)} "
                                    f"{'texts' if preprocess.kind == 'text' else 'images'})",
                    "max_accuracy_drop": max_accuracy_drop,
                    "calibration_images": min(calibration_size, len(train_records)),
                    "torch_val_accuracy": run.val_accuracy,
                },
                source_run={"path": str(run_dir.resolve()), "created": run.created, "data": run.data_address},
                target=target_block(profile, preprocess.input_size) if profile is not None else {},
                learning=learning,
                check=check_entry,
                unknown=unknown,
            )
            manifest.write(staging)
            if signer is not None:
                sign_file(staging / MANIFEST_NAME, signer, staging / BUNDLE_SIGNATURE)
    finally:
        data.close()
    return ExportResult(Path(out), manifest)


def _signer(sign_key: str | Path | None, out: str | Path) -> SigningKey | None:
    """The signing key, read before the export starts; a key inside the bundle it would sign is refused."""
    if sign_key is None:
        return None
    if Path(sign_key).resolve().is_relative_to(Path(out).resolve()):
        raise ConfigError(f"key file {sign_key} lies inside the bundle {out}; keep keys out of what they sign",
                          option="sign_key")
    return load_signing_key(sign_key)


def _build_gated(ctx: BuildContext, fmt: ExportFormat, feature_model: nn.Module, check: np.ndarray,
                 reference: float, labels: np.ndarray, options: dict) -> Artifact:
    """Build ``fmt``, retrying with its fallbacks until the accuracy drop is within the limit.

    A format this CPU cannot compute at all (bf16 without bf16 or its emulation) is built once and
    recorded as not measured: the device checks it before it is ever chosen."""
    plan = measurement_plan(fmt, cpu_facts()["flags"])
    precision = fmt.precision_with(options)
    path = ctx.staging / fmt.filename()
    attempts: list[str] = []
    accuracy: float | None = None
    for attempt in range(fmt.attempts):
        ctx.log(f"exporting {path.name} ({fmt.name}, attempt {attempt + 1} of at most {fmt.attempts})")
        result = fmt.build(ctx, path, attempt)
        if plan.backend is None:
            ctx.log(f"  {fmt.name}: not measured here ({plan.note})")
            break
        accuracy, ran = artifact_accuracy(plan.backend, ctx.staging / result.files[0], ctx.head,
                                          ctx.data.val_images, labels, precision=precision,
                                          pad_id=ctx.data.preprocess.pad_id)
        if ran != precision:   # the engine fell back (bf16 on a CPU that cannot even emulate it)
            plan = Measurement(None, "not-measured", f"this CPU cannot compute {precision}: {plan.backend} ran it "
                                                     f"in {ran}")
            accuracy = None
            ctx.log(f"  {fmt.name}: not measured here ({plan.note})")
            break
        drop = (reference - accuracy) * 100.0
        attempts.append(f"{', '.join(result.notes)} -> {accuracy:.4f}")
        ctx.log(f"  {fmt.name}: val accuracy {accuracy:.4f}, drop {drop:+.2f} points on {plan.backend}"
                + (f" ({plan.measured})" if plan.measured != "as-deployed" else ""))
        if drop <= ctx.max_accuracy_drop:
            break
    else:
        raise AccuracyGateError(fmt.name, reference, accuracy, ctx.max_accuracy_drop, attempts, fmt.gate_hint)
    diff = (max_abs_difference(feature_model, ctx.staging / result.files[0], check, plan.backend, precision)
            if plan.backend else None)
    if fmt.tolerance is not None and precision == "fp32" and diff is not None and diff > fmt.tolerance:
        raise ExportValidationError(path.name, {"features": diff}, fmt.tolerance)
    artifact = _entry(ctx.staging, fmt, result.files, "backbone", "features", options, plan.backend)
    artifact.accuracy = accuracy
    artifact.accuracy_drop = round((reference - accuracy) * 100.0, 4) if accuracy is not None else None
    artifact.max_abs_diff = diff
    artifact.export_notes = result.notes + ([f"attempts: {len(attempts)}"] if len(attempts) > 1 else [])
    artifact.requires_cpu = list(fmt.requires_cpu)
    artifact.measured, artifact.measurement_note = plan.measured, plan.note
    artifact.accuracy_by_arch = {cpu_facts()["arch"]: accuracy} if accuracy is not None else {}
    return artifact
