"""How a TensorRT engine is built from a bundle, decided without TensorRT.

TensorRT engines are tied to the GPU architecture and the TensorRT version
that built them, so they are built on the target.  This module holds every
decision that does not need the library, so that it can be tested anywhere:

* which ONNX artifact an engine precision is built from (fp16 from
  ``onnx-fp16``, int8 from the Q/DQ ``onnx-int8-trt``, fp32 from ``onnx``);
* how the precision is expressed for the TensorRT version at hand: builder
  flags on TensorRT 8.5 / 10 (JetPack 5 and 6), a strongly typed network on
  TensorRT 11, which removed the precision flags and the INT8 calibrator
  (the types then come from the ONNX file itself);
* the equivalent ``trtexec`` command line;
* the engine's sidecar metadata, and the check that refuses an engine built
  for another TensorRT version or GPU.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import BundleError, ConfigError
from .manifest import BundleManifest

ENGINE_FOLDER = "engines"
ENGINE_FORMAT = "tensorrt-engine"
SIDECAR_SCHEMA = "edgetl.trt-engine/1"
TIMING_CACHE = f"{ENGINE_FOLDER}/timing.cache"
ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
_SOURCE_FORMAT = {"fp32": "onnx", "fp16": "onnx-fp16", "int8": "onnx-int8-trt"}


def source_format(precision: str) -> str:
    """The bundle artifact an engine of ``precision`` is built from."""
    if precision not in _SOURCE_FORMAT:
        raise ConfigError(f"unknown engine precision '{precision}' (valid: {', '.join(ENGINE_PRECISIONS)})")
    return _SOURCE_FORMAT[precision]


def engine_filename(precision: str, dla_core: int | None) -> str:
    return f"{ENGINE_FOLDER}/backbone-{precision}{'' if dla_core is None else f'-dla{dla_core}'}.engine"


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> (10, 3, 0, 30); only leading numeric fields count."""
    parts: list[int] = []
    for piece in str(text).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    if not parts:
        raise ConfigError(f"cannot read a version number from {text!r}")
    return tuple(parts)


@dataclass(frozen=True)
class BuildPlan:
    """Everything ``build-engine`` does, as data."""

    precision: str
    source_artifact: str
    source_file: str
    source_sha256: str
    tensorrt_version: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]       # names in trt.BuilderFlag
    dla_core: int | None
    input_name: str
    output_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    engine_file: str

    @property
    def max_batch(self) -> int:
        return self.max_shape[0]


def plan_build(manifest: BundleManifest, precision: str, tensorrt_version: str, dla_core: int | None = None,
               max_batch: int = 8, opt_batch: int | None = None, dla_cores_available: int | None = None) -> BuildPlan:
    """Check the request against the bundle and the TensorRT version, and decide how to build."""
    fmt = source_format(precision)
    if max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1, got {max_batch}")
    opt_batch = opt_batch or 1
    if not 1 <= opt_batch <= max_batch:
        raise ConfigError(f"the optimisation batch {opt_batch} must lie in 1..{max_batch}")
    candidates = [a for a in manifest.artifacts if a.format == fmt and a.role == "backbone"]
    if not candidates:
        raise BundleError(
            f"a {precision} engine is built from the bundle's {fmt} artifact, which this bundle lacks "
            f"(it has: {', '.join(a.name for a in manifest.artifacts)}); re-export with --format onnx,{fmt} "
            "or with --target set to a TensorRT device profile"
        )
    source = candidates[0]
    major = parse_version(tensorrt_version)[0]
    if major < 8:
        raise ConfigError(f"TensorRT {tensorrt_version} is too old; edgetl builds engines with TensorRT 8.5 or newer")
    strongly_typed = major >= 11
    flags: list[str] = []
    if not strongly_typed:
        if precision == "fp16":
            flags.append("FP16")
        elif precision == "int8":
            flags += ["INT8", "FP16"]     # Q/DQ layers in int8, the layers between them may use fp16
    if dla_core is not None:
        if dla_core < 0:
            raise ConfigError(f"--dla must be a DLA core number (0, 1, ...), got {dla_core}")
        if strongly_typed:
            raise ConfigError(f"TensorRT {tensorrt_version} does not support DLA; build DLA engines with "
                              "TensorRT 10 (JetPack 6) or leave out --dla")
        if precision == "fp32":
            raise ConfigError("the DLA runs fp16 or int8 only; pass --precision fp16 or int8 with --dla")
        if dla_cores_available is not None and dla_core >= dla_cores_available:
            raise ConfigError(f"--dla {dla_core} asks for a DLA core this device lacks "
                              f"(it has {dla_cores_available})")
        flags.append("GPU_FALLBACK")      # layers the DLA cannot run go to the GPU instead of failing
    size = int(manifest.preprocess_config.input_size)
    return BuildPlan(
        precision=precision, source_artifact=source.name, source_file=source.file, source_sha256=source.sha256,
        tensorrt_version=str(tensorrt_version), strongly_typed=strongly_typed, builder_flags=tuple(flags),
        dla_core=dla_core, input_name=source.input_name, output_name=source.output_name,
        min_shape=(1, 3, size, size), opt_shape=(opt_batch, 3, size, size), max_shape=(max_batch, 3, size, size),
        engine_file=engine_filename(precision, dla_core),
    )


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(precision: str, input_size: int, max_batch: int, tensorrt_major: int | None,
                    dla_core: int | None = None, input_name: str = "input", opt_batch: int = 1) -> str:
    """The ``trtexec`` line equivalent to ``edgetl-rt build-engine`` (run in the bundle folder)."""
    onnx_file = {"fp32": "backbone.onnx", "fp16": "backbone-onnx-fp16.onnx",
                 "int8": "backbone-onnx-int8-trt.onnx"}[precision]
    shape = (3, input_size, input_size)
    parts = [
        "trtexec", f"--onnx={onnx_file}", f"--saveEngine={engine_filename(precision, dla_core)}",
        f"--minShapes={input_name}:{_dims((1,) + shape)}", f"--optShapes={input_name}:{_dims((opt_batch,) + shape)}",
        f"--maxShapes={input_name}:{_dims((max_batch,) + shape)}", f"--timingCacheFile={TIMING_CACHE}",
    ]
    if tensorrt_major is not None and tensorrt_major >= 11:
        pass  # strongly typed is always on; the precision is in the ONNX file
    elif precision == "fp16":
        parts.append("--fp16")
    elif precision == "int8":
        parts += ["--int8", "--fp16"]
    if dla_core is not None:
        parts += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
    return " ".join(parts)


@dataclass
class EngineMetadata:
    """The sidecar JSON next to an engine: the engine file itself stays a plain serialized engine."""

    tensorrt_version: str
    compute_capability: str
    gpu_name: str
    precision: str
    strongly_typed: bool
    builder_flags: list[str]
    dla_core: int | None
    input_name: str
    output_name: str
    min_shape: list[int]
    opt_shape: list[int]
    max_shape: list[int]
    source_artifact: str
    source_sha256: str
    engine_sha256: str
    built: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    schema: str = SIDECAR_SCHEMA

    @classmethod
    def from_plan(cls, plan: BuildPlan, compute_capability: str, gpu_name: str, engine_sha256: str) -> "EngineMetadata":
        return cls(tensorrt_version=plan.tensorrt_version, compute_capability=compute_capability, gpu_name=gpu_name,
                   precision=plan.precision, strongly_typed=plan.strongly_typed,
                   builder_flags=list(plan.builder_flags), dla_core=plan.dla_core, input_name=plan.input_name,
                   output_name=plan.output_name, min_shape=list(plan.min_shape), opt_shape=list(plan.opt_shape),
                   max_shape=list(plan.max_shape), source_artifact=plan.source_artifact,
                   source_sha256=plan.source_sha256, engine_sha256=engine_sha256)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def sidecar_path(engine: str | Path) -> Path:
    return Path(f"{engine}.json")


def read_sidecar(engine: str | Path) -> EngineMetadata:
    path = sidecar_path(engine)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BundleError(f"engine {Path(engine).name} has no metadata file {path.name}; rebuild it with "
                          "edgetl-rt build-engine") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path.name} is not valid JSON ({exc}); rebuild the engine") from exc
    if not isinstance(data, dict) or data.get("schema") != SIDECAR_SCHEMA:
        raise BundleError(f"{path.name} is not an edgetl engine sidecar ({SIDECAR_SCHEMA}); rebuild the engine")
    try:
        return EngineMetadata(**data)
    except TypeError as exc:
        raise BundleError(f"{path.name} does not match {SIDECAR_SCHEMA}: {exc}") from exc


def check_engine_compatible(meta: EngineMetadata, tensorrt_version: str, compute_capability: str | None,
                            bundle: str = "BUNDLE") -> None:
    """Refuse an engine built by another TensorRT release or for another GPU architecture.

    A serialized engine loads only into the TensorRT release (major.minor.patch) that built it and runs
    only on GPUs of the compute capability it was built for; anything else fails or misbehaves later.
    """
    built = parse_version(meta.tensorrt_version)[:3]
    here = parse_version(tensorrt_version)[:3]
    problems = []
    if built != here:
        problems.append(f"TensorRT {meta.tensorrt_version} built it, this device has TensorRT {tensorrt_version}")
    if compute_capability is not None and meta.compute_capability != compute_capability:
        problems.append(f"it was built for a GPU of compute capability {meta.compute_capability} "
                        f"({meta.gpu_name}), this GPU has {compute_capability}")
    if problems:
        raise BundleError(
            f"TensorRT engine ({meta.precision}) cannot run here: {'; '.join(problems)}. Engines are not portable; "
            f"rebuild it on this device with: edgetl-rt build-engine {bundle} --precision {meta.precision}"
        )
