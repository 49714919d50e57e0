"""Built TensorRT engines as the runtime meets them: the sidecar metadata beside each engine file, and the check
that refuses an engine built for another TensorRT release or GPU.  How engines are planned and built:
:mod:`edgetl.runtime.tools.engine_plan` and :mod:`edgetl.runtime.tools.engine_build`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..documents import Origin, build, read_document, to_json, utc_now
from ..errors import BundleError, ConfigError

ENGINE_FOLDER = "engines"
SIDECAR_SCHEMA = "edgetl.trt-engine/1"


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
    built: str = field(default_factory=utc_now)
    schema: str = SIDECAR_SCHEMA

    def to_json(self) -> str:
        return to_json(self)


def sidecar_path(engine: str | Path) -> Path:
    return Path(f"{engine}.json")


def read_sidecar(engine: str | Path) -> EngineMetadata:
    """The metadata of a built engine, every key checked: a foreign or damaged sidecar is a one-line error."""
    path = sidecar_path(engine)
    origin = Origin(str(path), BundleError, "rebuild the engine with edgetl-rt build-engine")
    data = read_document(path, origin, (SIDECAR_SCHEMA,), what="an edgetl engine sidecar",
                         missing=f"engine {Path(engine).name} has no metadata file {path.name}; rebuild it with "
                                 "edgetl-rt build-engine")
    return build(EngineMetadata, data, origin)


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
