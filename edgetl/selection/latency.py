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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from edgetl import __version__
from edgetl.runtime.backends import create_backend, installed
from edgetl.runtime.data import ImageRecord
from edgetl.runtime.fsutil import atomic_write_text
from edgetl.runtime.latency import BenchSettings, latency_stats, measure
from edgetl.runtime.machine import cpu_facts, default_threads, library_versions
from edgetl.runtime.preprocess import PreprocessConfig

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

    def to_dict(self) -> dict:
        return asdict(self)


def _preferences(profile) -> list[tuple[str, str, str]]:
    """(format, backend, precision) in the profile's order of preference (its runtime picks in this order)."""
    from edgetl.exporters.targets import FORMAT_FOR, VNNI_VARIANT

    order = []
    primary = profile.deploy.backends[0]
    for backend in profile.deploy.backends:
        for precision in profile.deploy.precisions if backend == primary else ("fp32",):
            choice = FORMAT_FOR[(backend, precision)]
            if choice is None:
                continue
            name = VNNI_VARIANT.get(choice[0], choice[0]) if profile.hardware.int8_dot else choice[0]
            order.append((name, backend, precision))
    return order


def latency_plan(profile=None, facts: dict | None = None) -> LatencyPlan:
    """The artifact to time: the target's first runnable choice, or the fp32 ONNX reference without a target."""
    if profile is None:
        return LatencyPlan("onnx", "onnxruntime", "fp32", "host",
                           "no --target: the fp32 ONNX every bundle holds, on ONNX Runtime, on this machine")
    from edgetl.exporters import EXPORT_FORMATS
    from edgetl.runtime.tools.doctor import gather, profile_fit

    facts = facts or gather()
    flags = set(facts["cpu"]["flags"])
    preferences = _preferences(profile)
    runnable = [(f, b, p) for f, b, p in preferences
                if f in MEASURABLE and installed([b]) and b != "tensorrt"
                and (not EXPORT_FORMATS[f].requires_cpu or flags & set(EXPORT_FORMATS[f].requires_cpu))]
    first = preferences[0]
    if not runnable:
        return LatencyPlan("onnx", "onnxruntime", "fp32", "host",
                           f"{profile.name} prefers {first[0]} on {first[1]}, which this machine cannot run: "
                           f"the fp32 ONNX on ONNX Runtime here stands in")
    chosen = runnable[0]
    fits = profile_fit(profile, facts).fits
    if fits and chosen == first:
        return LatencyPlan(*chosen, "target", f"this machine fits {profile.name}: its first choice, measured here")
    why = "this machine does not fit the profile" if not fits else f"its first choice {first[0]} on {first[1]} " \
                                                                  f"cannot run here"
    return LatencyPlan(*chosen, "host", f"{profile.name} prefers {first[0]} on {first[1]}; {why}, so this is "
                                         f"{chosen[0]} on {chosen[1]} measured on this host")


@dataclass(frozen=True)
class LatencyResult:
    p50_ms: float
    p90_ms: float
    runs: int
    artifact_mb: float
    threads: int
    cached: bool
    seconds: float       # what this call cost (0 when cached)


def latency_key(weights_sha256: str, input_size: int, plan: LatencyPlan, threads: int) -> str:
    versions = library_versions(("edgetl", "torch", "onnx", "onnxruntime", "openvino", "nncf"))
    text = json.dumps([__version__, weights_sha256, input_size, plan.format, plan.backend, plan.precision, threads,
                       cpu_facts()["model"], versions], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


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
    key = latency_key(weights_sha256, preprocess.input_size, plan, threads)
    record = cache_root / "latency" / f"{key}.json"
    if record.is_file():
        try:
            return LatencyResult(**{**json.loads(record.read_text()), "cached": True, "seconds": 0.0})
        except (ValueError, TypeError):
            pass   # a damaged record is measured again
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgetl-latency-") as scratch:
        files = _build(backbone, weights_sha256, preprocess, plan, calibration, head_factory, cache_root,
                       Path(scratch), log)
        image = np.random.default_rng(0).standard_normal((1, 3, preprocess.input_size, preprocess.input_size))
        image = image.astype(np.float32)
        with create_backend(plan.backend, files[0], threads=threads, precision=plan.precision) as runner:
            stats = latency_stats(measure(lambda: runner.infer(image), SETTINGS), 1)
        size = sum(f.stat().st_size for f in files) / 1e6
    result = LatencyResult(stats["p50_ms"], stats["p90_ms"], stats["runs"], round(size, 2), threads, False,
                           time.perf_counter() - started)
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps({k: v for k, v in asdict(result).items() if k not in ("cached", "seconds")}))
    return result


def _build(backbone: nn.Module, weights_sha256: str, preprocess: PreprocessConfig, plan: LatencyPlan,
           calibration: list[ImageRecord], head_factory: Callable, cache_root: Path, scratch: Path,
           log: Callable[[str], None]) -> list[Path]:
    """The artifact's files (main one first) in ``scratch``; the fp32 ONNX is the engine's export when the
    backbone pass already made one (same exporter, same graph)."""
    from edgetl.engines import engine_file
    from edgetl.exporters import EXPORT_FORMATS
    from edgetl.exporters.calibration import ExportData
    from edgetl.exporters.context import BuildContext
    from edgetl.exporters.onnx import export_onnx

    size = preprocess.input_size
    onnx_path = scratch / "backbone.onnx"
    shared = engine_file(cache_root, weights_sha256, len(getattr(backbone, "stages", ())) or -1, size)
    if shared.is_file():
        shutil.copyfile(shared, onnx_path)
    else:
        log(f"exporting {getattr(backbone, 'name', 'the backbone')} at {size} px to ONNX to time it")
        export_onnx(nn.Sequential(*backbone.stages) if hasattr(backbone, "stages") else backbone, onnx_path, size,
                    "features")
    if plan.format == "onnx":
        return [onnx_path]
    fmt = EXPORT_FORMATS[plan.format]
    data = ExportData(preprocess, calibration, [], calibration_size=CALIBRATION_IMAGES)
    try:
        ctx = BuildContext(scratch, onnx_path, data, head_factory(), {}, 100.0, log)
        log(f"building {plan.format} of {getattr(backbone, 'name', 'the backbone')} to time it")
        result = fmt.build(ctx, scratch / fmt.filename(), 0)
    finally:
        data.close()
    return [scratch / name for name in result.files]
