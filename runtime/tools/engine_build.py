"""``edgetl-rt build-engine``: build the backbone's TensorRT engine on the target, into the bundle.

The decisions are made by :func:`plan_build` (testable without TensorRT); this module turns the plan into calls
of NVIDIA's Polygraphy (:func:`polygraphy_loaders`), which follows TensorRT's API from 8.x to 11 (the explicit-batch
network TensorRT 8's ONNX parser needs, the strongly typed network of 11), so what remains ours is the settings,
not hand-written calls into TensorRT: one optimisation profile for the dynamic batch, the precision (builder flags
on TensorRT 8.5/10, the ONNX file's own types on a strongly typed network), DLA with GPU fallback, and a timing
cache kept in the bundle so that a rebuild is fast.  The result is a plain serialized engine (trtexec and
DeepStream load it) with a sidecar JSON, and a new ``tensorrt-<precision>`` artifact in the manifest, written
atomically.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..bundle.manifest import ENGINE_FORMAT, Artifact, FileEntry, read_bundle_manifest
from ..bundle.signature import refuse_signed_rewrite
from ..deps import require
from ..engines.cuda import CudaRuntime
from ..engines.sidecar import EngineMetadata, sidecar_path
from ..errors import EdgetlError
from ..fsutil import atomic_write_bytes, atomic_write_text, sha256_file
from .engine_plan import TIMING_CACHE, BuildPlan, engine_metadata, plan_build


@dataclass
class EngineBuild:
    plan: BuildPlan
    artifact: Artifact
    metadata: EngineMetadata


def _tensorrt():
    return require("tensorrt", "tensorrt", "building TensorRT engines")


def _polygraphy():
    return require("polygraphy.backend.trt", "tensorrt", "building TensorRT engines", package="polygraphy")


def polygraphy_loaders(plan: BuildPlan, bundle: Path, trt, workspace_mb: int | None, timing_cache_out: Path):
    """The plan as Polygraphy loaders: a callable returning the serialized engine (nothing runs until called)."""
    poly = _polygraphy()
    network = poly.NetworkFromOnnxPath(str(bundle / plan.source_file), strongly_typed=plan.strongly_typed)
    cache_path = bundle / TIMING_CACHE
    config = poly.CreateConfig(
        tf32=True,               # TensorRT's own default, which Polygraphy turns off unless told
        fp16="FP16" in plan.builder_flags, int8="INT8" in plan.builder_flags,
        use_dla=plan.dla_core is not None, allow_gpu_fallback="GPU_FALLBACK" in plan.builder_flags,
        profiles=[poly.Profile().add(plan.input_name, plan.min_shape, plan.opt_shape, plan.max_shape)],
        load_timing_cache=str(cache_path) if cache_path.is_file() else None,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_mb << 20} if workspace_mb else None,
    )
    if plan.dla_core is not None:     # Polygraphy turns the DLA on; which core is the config's own setting
        core = plan.dla_core

        def on_core(builder, network, config):
            config.DLA_core = core

        config = poly.PostprocessConfig(config, on_core)
    return poly.EngineBytesFromNetwork(network, config=config, save_timing_cache=str(timing_cache_out))


def build_engine(bundle: str | Path, precision: str | None = None, dla_core: int | None = None,
                 max_batch: int | None = None, workspace_mb: int | None = None, log=lambda m: None) -> EngineBuild:
    bundle = Path(bundle)
    refuse_signed_rewrite(bundle, "build-engine adds its engine to manifest.json")
    trt = _tensorrt()
    manifest = read_bundle_manifest(bundle)
    engine_defaults = manifest.target.get("tensorrt", {})
    precision = precision or engine_defaults.get("precision", "fp16")
    max_batch = max_batch or engine_defaults.get("max_batch", 8)
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    plan = plan_build(manifest, precision, trt.__version__, dla_core, max_batch,
                      dla_cores_available=builder.num_DLA_cores)
    cuda = CudaRuntime()
    compute_capability = cuda.compute_capability(0)
    log(f"building a {precision} engine from {plan.source_file} with TensorRT {trt.__version__} through Polygraphy "
        f"(compute capability {compute_capability}, {'strongly typed' if plan.strongly_typed else 'builder flags'})")
    engine_path = bundle / plan.engine_file
    engine_path.parent.mkdir(exist_ok=True)
    cache_path = bundle / TIMING_CACHE
    cache_out = cache_path.with_name(cache_path.name + ".new")
    try:
        with contextlib.redirect_stdout(sys.stderr):      # Polygraphy logs to stdout; stdout is for --json
            serialized = polygraphy_loaders(plan, bundle, trt, workspace_mb, cache_out)()
    except EdgetlError:
        raise
    except Exception as exc:      # Polygraphy reports TensorRT's refusals as its own exceptions
        raise EdgetlError(f"TensorRT could not build the {precision} engine from {plan.source_file}: {exc}") from exc
    finally:
        for lock in (cache_out.with_name(cache_out.name + ".lock"), cache_path.with_name(cache_path.name + ".lock")):
            lock.unlink(missing_ok=True)                   # Polygraphy's timing-cache locks
    if serialized is None:
        raise EdgetlError(f"TensorRT could not build the {precision} engine (see the TensorRT messages above)")
    atomic_write_bytes(engine_path, bytes(serialized))
    if cache_out.is_file():
        os.replace(cache_out, cache_path)
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
                      f"TensorRT {trt.__version__} through Polygraphy, compute capability {compute_capability}"],
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
