"""Batch-1 latency of a candidate backbone as the target would run it, measured on this machine.

The artifact measured is the one the bundle would hold for the target: the target profile's first
(backend, precision) that this machine can run, built by the exporters themselves (the same ONNX export,
the same OpenVINO conversion and NNCF / ONNX Runtime quantization) and run by the runtime's backend with its
stated threads.  With no ``--target`` it is the fp32 ONNX every bundle holds, on ONNX Runtime.  Where this
machine is not the target (a Jetson's TensorRT, another CPU class), the figure is marked as measured on this
host.  A result depends only on the weights, the input size, the artifact and the machine, never on the
data, so it is kept in the cache folder and a second ``select`` at the same input size measures nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from torch import nn

from edgetl import __version__
from edgetl.runtime.data.preprocess import PreprocessConfig
from edgetl.runtime.data.sources import ImageRecord
from edgetl.runtime.engines.backends import create_backend, installed
from edgetl.runtime.engines.latency import BenchSettings, latency_stats, measure
from edgetl.runtime.fsutil import atomic_write_text
from edgetl.runtime.machine import cpu_facts, default_threads, library_versions

#: Short but stable: a p50 of at least 30 runs over at least one second, after warm-up.
SETTINGS = BenchSettings(batch=1, warmup_runs=5, warmup_seconds=0.3, min_runs=30, min_seconds=1.0, max_seconds=10.0)
#: Formats this host can build and time for a candidate (TensorRT engines are built on their device).
MEASURABLE = ("onnx", "onnx-int8", "onnx-int8-vnni", "openvino", "openvino-bf16", "openvino-int8",
              "openvino-int8-vnni")
CALIBRATION_IMAGES = 32


@dataclass(frozen=True)
class LatencyPlan:
    """What is measured for every candidate, and whether that is the target's own figure."""

    format: str
    backend: str
    precision: str
    where: str          # "target": this machine fits the profile and runs its first choice; "host": a stand-in
    note: str
    options: tuple[tuple[str, bool], ...] = ()   # the format's export options (OpenVINO fp16 weights)
    device: str | None = None                    # OpenVINO device of the profile (an Intel iGPU's "GPU")

    def to_dict(self) -> dict:
        return {**asdict(self), "options": dict(self.options)}


@dataclass(frozen=True)
class _Choice:
    format: str
    backend: str
    precision: str
    options: tuple[tuple[str, bool], ...]


def _preferences(profile) -> list[_Choice]:
    """What the profile's bundle would hold, in its order of preference (its runtime picks in this order)."""
    from edgetl.exporters.targets import target_choices

    return [_Choice(name, backend, precision, tuple(sorted(extra.items())))
            for name, backend, precision, extra in target_choices(profile)]


def latency_plan(profile=None, facts: dict | None = None) -> LatencyPlan:
    """The artifact to time: the target's first runnable choice, or the fp32 ONNX reference without a target.

    Where the profile's first choice cannot run here, the closest that can stands in and is marked as measured
    on this host: the 7-bit int8 variant for the 8-bit one a VNNI CPU needs, else the next preference; a
    TensorRT engine (built on its device) leaves the next backend's choice, or the fp32 ONNX on ONNX Runtime."""
    if profile is None:
        return LatencyPlan("onnx", "onnxruntime", "fp32", "host",
                           "no --target: the fp32 ONNX every bundle holds, on ONNX Runtime, on this machine")
    from edgetl.exporters import EXPORT_FORMATS
    from edgetl.exporters.targets import VNNI_VARIANT
    from edgetl.runtime.tools.doctor import gather, profile_fit

    facts = facts or gather()
    flags = set(facts["cpu"]["flags"])
    seven_bit = {v: k for k, v in VNNI_VARIANT.items()}

    def runs_here(choice: _Choice) -> bool:
        needs = set(EXPORT_FORMATS[choice.format].requires_cpu)
        return (choice.format in MEASURABLE and choice.backend != "tensorrt" and bool(installed([choice.backend]))
                and (not needs or bool(flags & needs)))

    preferences = _preferences(profile)
    first = preferences[0]
    device = profile.hardware.openvino_device
    stand_ins = [c if runs_here(c) or c.format not in seven_bit else
                 _Choice(seven_bit[c.format], c.backend, c.precision, c.options) for c in preferences]
    runnable = [c for c in stand_ins if runs_here(c)]
    if not runnable:
        return LatencyPlan("onnx", "onnxruntime", "fp32", "host",
                           f"{profile.name} prefers {first.format} on {first.backend}, which this machine cannot "
                           f"run: the fp32 ONNX on ONNX Runtime here stands in")
    chosen = runnable[0]
    on_device = device if chosen.backend == "openvino" else None
    fits = profile_fit(profile, facts).fits
    if fits and chosen == first:
        return LatencyPlan(chosen.format, chosen.backend, chosen.precision, "target",
                           f"this machine fits {profile.name}: its first choice, measured here", chosen.options,
                           on_device)
    why = "this machine does not fit the profile" if not fits else f"its first choice {first.format} on " \
                                                                  f"{first.backend} cannot run here"
    return LatencyPlan(chosen.format, chosen.backend, chosen.precision, "host",
                       f"{profile.name} prefers {first.format} on {first.backend}; {why}, so this is "
                       f"{chosen.format} on {chosen.backend} measured on this host", chosen.options,
                       on_device if fits else None)


@dataclass(frozen=True)
class LatencyResult:
    p50_ms: float
    p90_ms: float
    runs: int
    artifact_mb: float
    threads: int
    cached: bool
    seconds: float       # what this call cost (0 when cached)
    export_s: float = 0.0    # of it, exporting to ONNX (0 when the backbone pass's export was reused)


def latency_record(cache_root: Path, weights_sha256: str, input_size: int, plan: LatencyPlan, threads: int) -> Path:
    """Where this machine keeps the figure: keyed by what it depends on, never by the data."""
    versions = library_versions(("edgetl", "torch", "onnx", "onnxruntime", "openvino", "nncf"))
    text = json.dumps([__version__, weights_sha256, input_size, plan.format, plan.backend, plan.precision,
                       list(plan.options), plan.device, threads, cpu_facts()["model"], versions], sort_keys=True)
    return cache_root / "latency" / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"


def measure_candidate(
    backbone: nn.Module,
    weights_sha256: str,
    preprocess: PreprocessConfig,
    plan: LatencyPlan,
    calibration: list[ImageRecord],
    head_factory: Callable,
    cache_root: Path,
    threads: int | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> LatencyResult:
    """Build the plan's artifact for ``backbone`` (whole, pooled features out) and time batch 1, or reuse the
    figure this machine measured before.  ``head_factory`` gives a head for quantizers that check accuracy."""
    threads = threads or default_threads()
    record = latency_record(cache_root, weights_sha256, preprocess.input_size, plan, threads)
    if record.is_file():
        try:
            return LatencyResult(**{**json.loads(record.read_text()), "cached": True, "seconds": 0.0})
        except (ValueError, TypeError):
            pass   # a damaged record is measured again
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgetl-latency-") as scratch:
        files, export_s = _build(backbone, weights_sha256, preprocess, plan, calibration, head_factory,
                                 cache_root, Path(scratch), log)
        image = np.random.default_rng(0).standard_normal((1, 3, preprocess.input_size, preprocess.input_size))
        image = image.astype(np.float32)
        with create_backend(plan.backend, files[0], threads=threads, device=plan.device,
                            precision=plan.precision) as runner:
            stats = latency_stats(measure(lambda: runner.infer(image), SETTINGS), 1)
        size = sum(f.stat().st_size for f in files) / 1e6
    result = LatencyResult(stats["p50_ms"], stats["p90_ms"], stats["runs"], round(size, 2), threads, False,
                           time.perf_counter() - started, export_s)
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps({k: v for k, v in asdict(result).items()
                                          if k not in ("cached", "seconds", "export_s")}))
    return result


def _build(backbone: nn.Module, weights_sha256: str, preprocess: PreprocessConfig, plan: LatencyPlan,
           calibration: list[ImageRecord], head_factory: Callable, cache_root: Path, scratch: Path,
           log: Callable[[str], None]) -> tuple[list[Path], float]:
    """The artifact's files (main one first) in ``scratch``, and the seconds spent exporting to ONNX: none when
    the backbone pass already made the export (same exporter, same graph)."""
    from edgetl.engines import engine_file
    from edgetl.exporters import EXPORT_FORMATS
    from edgetl.exporters.calibration import ExportData
    from edgetl.exporters.context import BuildContext
    from edgetl.exporters.onnx import export_onnx

    size = preprocess.input_size
    onnx_path = scratch / "backbone.onnx"
    shared = engine_file(cache_root, weights_sha256, len(getattr(backbone, "stages", ())) or -1, size)
    export_s = 0.0
    if shared.is_file():
        shutil.copyfile(shared, onnx_path)
    else:
        log(f"exporting {getattr(backbone, 'name', 'the backbone')} at {size} px to ONNX to time it")
        started = time.perf_counter()
        export_onnx(nn.Sequential(*backbone.stages) if hasattr(backbone, "stages") else backbone, onnx_path,
                    preprocess.example(2), "features")
        export_s = time.perf_counter() - started
    if plan.format == "onnx":
        return [onnx_path], export_s
    fmt = EXPORT_FORMATS[plan.format]
    data = ExportData(preprocess, calibration, [], calibration_size=CALIBRATION_IMAGES)
    try:
        ctx = BuildContext(scratch, onnx_path, data, head_factory(), dict(plan.options), 100.0, log)
        log(f"building {plan.format} of {getattr(backbone, 'name', 'the backbone')} to time it")
        result = fmt.build(ctx, scratch / fmt.filename(), 0)
    finally:
        data.close()
    return [scratch / name for name in result.files], export_s
