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
* the engine's sidecar metadata (read and checked by :mod:`edgetl.runtime.engines.sidecar`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bundle.manifest import BundleManifest
from ..engines.sidecar import ENGINE_FOLDER, EngineMetadata, parse_version
from ..errors import BundleError, ConfigError

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
        raise ConfigError(f"must be at least 1, got {max_batch}", option="max_batch")
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
            raise ConfigError(f"must be a DLA core number (0, 1, ...), got {dla_core}", option="dla")
        if strongly_typed:
            raise ConfigError(f"TensorRT {tensorrt_version} does not support DLA; build DLA engines with "
                              "TensorRT 10 (JetPack 6), or build for the GPU", option="dla")
        if precision == "fp32":
            raise ConfigError("the DLA runs fp16 or int8 only; build fp16 or int8 engines for it", option="precision")
        if dla_cores_available is not None and dla_core >= dla_cores_available:
            raise ConfigError(f"DLA core {dla_core} does not exist on this device (it has {dla_cores_available})",
                              option="dla")
        flags.append("GPU_FALLBACK")      # layers the DLA cannot run go to the GPU instead of failing
    size = int(image_size(manifest))
    return BuildPlan(
        precision=precision, source_artifact=source.name, source_file=source.file, source_sha256=source.sha256,
        tensorrt_version=str(tensorrt_version), strongly_typed=strongly_typed, builder_flags=tuple(flags),
        dla_core=dla_core, input_name=source.input_name, output_name=source.output_name,
        min_shape=(1, 3, size, size), opt_shape=(opt_batch, 3, size, size), max_shape=(max_batch, 3, size, size),
        engine_file=engine_filename(precision, dla_core),
    )


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def image_size(manifest) -> int:
    """The input size an engine is built for; TensorRT engines are planned for image models only (a text
    model's optimization profiles over sequence length are not built yet)."""
    if manifest.modality != "image":
        raise ConfigError("TensorRT engines are built for image models only; run a text model's onnx, "
                          "onnx-int8-dynamic or openvino artifacts")
    return manifest.preprocess_config.input_size


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


def engine_metadata(plan: BuildPlan, compute_capability: str, gpu_name: str, engine_sha256: str) -> EngineMetadata:
    """The sidecar of an engine built by ``plan`` on this GPU."""
    return EngineMetadata(tensorrt_version=plan.tensorrt_version, compute_capability=compute_capability,
                          gpu_name=gpu_name, precision=plan.precision, strongly_typed=plan.strongly_typed,
                          builder_flags=list(plan.builder_flags), dla_core=plan.dla_core, input_name=plan.input_name,
                          output_name=plan.output_name, min_shape=list(plan.min_shape), opt_shape=list(plan.opt_shape),
                          max_shape=list(plan.max_shape), source_artifact=plan.source_artifact,
                          source_sha256=plan.source_sha256, engine_sha256=engine_sha256)
