"""Run the frozen backbone part through a faster engine than eager torch on CPU hosts.

On a CPU, OpenVINO or ONNX Runtime compute the same features as eager torch
several times faster.  The frozen part is exported once to ONNX (kept in the
feature cache folder, keyed by weights, freeze point and input size, so later
runs reuse it), checked against torch on real images of the data set (max
|difference| <= 1e-4, else torch is used), and then run by the runtime's own
backend.  ``auto`` converts only when the pass it saves is longer than the
conversion, judged from a timed torch probe.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetl.runtime.data.preprocess import PreprocessConfig
from edgetl.runtime.data.reader import read_batches
from edgetl.runtime.data.sources import ImageRecord
from edgetl.runtime.engines.backends import Backend, create_backend, installed
from edgetl.runtime.errors import ConfigError
from edgetl.runtime.fsutil import atomic_directory

from .extract import ComputeDevice

ENGINES = ("auto", "torch", "openvino", "onnxruntime")
PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 8
#: What ``auto`` assumes: conversion cost and the engine's speed relative to eager torch (measured
#: here: export + load about 15 s; OpenVINO and ONNX Runtime fp32 about 3x eager on Lite0).
ASSUMED_CONVERSION_S = 15.0
ASSUMED_SPEEDUP = 3.0


@dataclass
class EngineChoice:
    name: str                 # "torch", "openvino" or "onnxruntime"
    runner: Backend | None    # None for torch
    reason: str
    max_abs_diff: float | None = None
    export_s: float = 0.0     # spent exporting the frozen part for it (0 when the cached export was reused)


def engine_file(cache_root: Path, weights_sha256: str, freeze_stage: int, input_size: int) -> Path:
    """Where the frozen part exported for the pass is kept (the latency probe of `select` reuses it)."""
    key = hashlib.sha256(json.dumps(
        [weights_sha256, freeze_stage, input_size, torch.__version__], sort_keys=True).encode()).hexdigest()[:32]
    return cache_root / "engines" / key / "frozen.onnx"


def _export_frozen(frozen: nn.Module, path: Path, preprocess: PreprocessConfig) -> None:
    from edgetl.exporters.onnx import export_onnx

    with atomic_directory(path.parent, overwrite=True) as staging:
        export_onnx(frozen, staging / path.name, preprocess.example(2), "features")


def _torch_seconds_per_image(frozen: nn.Module, images: np.ndarray) -> float:
    x = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        frozen(x)
        start = time.perf_counter()
        frozen(x)
    return (time.perf_counter() - start) / len(images)


def choose_engine(
    requested: str,
    frozen: nn.Module,
    records: Sequence[ImageRecord],
    preprocess: PreprocessConfig,
    compute: ComputeDevice,
    cache_root: Path,
    weights_sha256: str,
    freeze_stage: int,
    log: Callable[[str], None] = lambda message: None,
    export_paid: bool = False,
) -> EngineChoice:
    """Pick and prepare the engine for one backbone pass over ``records``.

    ``export_paid``: the caller needs the exported frozen part anyway (``select`` times it), so ``auto``
    converts however short the pass is."""
    if requested not in ENGINES:
        raise ConfigError(f"unknown engine '{requested}'; choose one of {', '.join(ENGINES)}")
    if requested == "torch" or compute.device.type != "cpu":
        return EngineChoice("torch", None, "requested" if requested == "torch" else "CUDA runs torch")
    candidates = installed(["onnxruntime", "openvino"]) if requested == "auto" else installed([requested])
    if not candidates:
        if requested != "auto":
            raise ConfigError(f"{requested}: its package is not installed (pip install \"edgetl[{requested}]\")",
                              option="engine")
        return EngineChoice("torch", None, "no engine installed")
    # bad images are the pass's business (it fails or skips them as configured); the probe just needs good ones
    batches = [b.images for b in read_batches(records[:4 * PARITY_IMAGES], preprocess, PARITY_IMAGES, skip_bad=True)
               if len(b.indices)]
    if not batches:
        return EngineChoice("torch", None, "no readable image to check an engine against torch")
    probe = np.concatenate(batches)[:PARITY_IMAGES]
    frozen = frozen.eval().to(memory_format=torch.channels_last)
    path = engine_file(cache_root, weights_sha256, freeze_stage, preprocess.input_size)
    if requested == "auto" and not path.is_file() and not export_paid:
        saved = _torch_seconds_per_image(frozen, probe) * len(records) * (1 - 1 / ASSUMED_SPEEDUP)
        if saved < ASSUMED_CONVERSION_S:
            return EngineChoice("torch", None, f"the pass is short (an engine would save ~{saved:.0f} s)")
    export_s = 0.0
    if not path.is_file():
        log(f"exporting the frozen backbone for {candidates[0]} (once; kept in {path.parent})")
        started = time.perf_counter()
        _export_frozen(frozen, path, preprocess)
        export_s = time.perf_counter() - started
    runner = create_backend(candidates[0], path, shared_cores=True).open()     # decoding runs beside it
    with torch.inference_mode():
        expected = frozen(torch.from_numpy(probe).contiguous(memory_format=torch.channels_last)).numpy()
    diff = float(np.abs(runner.infer(probe) - expected).max())
    if not diff <= PARITY_TOLERANCE:
        runner.close()
        log(f"warning: {candidates[0]} features differ from torch by {diff:.2g}; using torch")
        return EngineChoice("torch", None, f"{candidates[0]} failed the parity check ({diff:.2g})", diff, export_s)
    return EngineChoice(candidates[0], runner, "faster than eager torch on this CPU", diff, export_s)
