"""Built TensorRT engines as the runtime meets them: the sidecar metadata beside each engine file, and the check
that refuses an engine built for another TensorRT release or GPU.  How engines are planned and built:
:mod:`edgetl.runtime.tools.engine_plan` and :mod:`edgetl.runtime.tools.engine_build`.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import BundleError, ConfigError

ENGINE_FOLDER = "engines"
ENGINE_FORMAT = "tensorrt-engine"
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
    built: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    schema: str = SIDECAR_SCHEMA

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
