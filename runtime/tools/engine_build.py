"""``edgetl-rt build-engine``: build the backbone's TensorRT engine on the target, into the bundle.

The decisions are made by :func:`plan_build` (testable without TensorRT);
this module only drives the TensorRT Python API: ONNX parser, one
optimisation profile for the dynamic batch, builder flags (TensorRT 8.5/10)
or a strongly typed network (10 by choice, 11 always), DLA with GPU
fallback, and a timing cache kept in the bundle so that a rebuild (another
precision, a new head never needs one) is fast.  The result is a plain
serialized engine (trtexec and DeepStream load it) with a sidecar JSON, and
a new ``tensorrt-<precision>`` artifact in the manifest, written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..cuda import CudaRuntime
from ..deps import require
from ..errors import BundleError, EdgetlError
from ..fsutil import atomic_write_bytes, atomic_write_text, sha256_file
from ..manifest import ENGINE_FORMAT, Artifact, FileEntry, read_bundle_manifest
from ..engines import EngineMetadata, sidecar_path
from .engine_plan import TIMING_CACHE, BuildPlan, engine_metadata, plan_build


@dataclass
class EngineBuild:
    plan: BuildPlan
    artifact: Artifact
    metadata: EngineMetadata


def _tensorrt():
    return require("tensorrt", "tensorrt", "building TensorRT engines")


def build_engine(bundle: str | Path, precision: str | None = None, dla_core: int | None = None,
                 max_batch: int | None = None, workspace_mb: int | None = None, log=lambda m: None) -> EngineBuild:
    trt = _tensorrt()
    bundle = Path(bundle)
    manifest = read_bundle_manifest(bundle)
    engine_defaults = manifest.target.get("tensorrt", {})
    precision = precision or engine_defaults.get("precision", "fp16")
    max_batch = max_batch or engine_defaults.get("max_batch", 8)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    plan = plan_build(manifest, precision, trt.__version__, dla_core, max_batch,
                      dla_cores_available=builder.num_DLA_cores)
    cuda = CudaRuntime()
    compute_capability = cuda.compute_capability(0)
    log(f"building a {precision} engine from {plan.source_file} with TensorRT {trt.__version__} "
        f"(compute capability {compute_capability}, {'strongly typed' if plan.strongly_typed else 'builder flags'})")

    network_flags = 0
    if plan.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        network_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(bundle / plan.source_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT's ONNX parser rejected {plan.source_file}: {errors}")

    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    profile = builder.create_optimization_profile()
    profile.set_shape(plan.input_name, plan.min_shape, plan.opt_shape, plan.max_shape)
    config.add_optimization_profile(profile)
    cache_path = bundle / TIMING_CACHE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgetlError(f"TensorRT could not build the {precision} engine (see the TensorRT messages above)")

    engine_path = bundle / plan.engine_file
    engine_path.parent.mkdir(exist_ok=True)
    atomic_write_bytes(engine_path, bytes(serialized))
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    metadata = engine_metadata(plan, compute_capability, _gpu_name(), sha256_file(engine_path))
    atomic_write_text(sidecar_path(engine_path), metadata.to_json())

    engine = FileEntry.of(bundle, plan.engine_file)
    sidecar = FileEntry.of(bundle, f"{plan.engine_file}.json")
    artifact = Artifact(
        name=f"tensorrt-{precision}" + ("" if dla_core is None else f"-dla{dla_core}"), format=ENGINE_FORMAT,
        precision=precision, backend="tensorrt", role="backbone", file=engine.file, sha256=engine.sha256,
        size=engine.size, input_name=plan.input_name, output_name=plan.output_name, backends=["tensorrt"],
        companions=[sidecar.__dict__], evaluated_with=None,
        export_notes=[f"built on the device from {plan.source_artifact} ({plan.source_sha256[:12]})",
                      f"TensorRT {trt.__version__}, compute capability {compute_capability}"],
    )
    manifest.artifacts = [a for a in manifest.artifacts if a.name != artifact.name] + [artifact]
    atomic_write_text(bundle / "manifest.json", manifest.to_json())
    log(f"wrote {plan.engine_file} ({engine.size / 1e6:.1f} MB) and {sidecar.file}")
    return EngineBuild(plan, artifact, metadata)


def _gpu_name() -> str:
    """The GPU's marketing name, from the Jetson device tree or nvidia-smi (best effort)."""
    model = Path("/proc/device-tree/model")
    if model.is_file():
        return model.read_bytes().rstrip(b"\x00").decode(errors="replace")
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=10, env=dict(os.environ))
        return out.stdout.strip() or "unknown GPU"
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU"
