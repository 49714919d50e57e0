"""Device profiles (``edgetl.devices``): one TOML file per target in this folder.

A profile says what a target is (architecture, CPU flags, GPU compute
capability, DLA cores, memory, the TensorRT / JetPack it ships) and what to
deploy there (backends and precisions in order of preference, the engine
precision and batch for TensorRT, a memory budget).  The host builds a
bundle for a profile (``edgetl export --target``); the device checks which
profile it matches (``edgetl-rt doctor``).  Torch-free: the runtime reads it.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgetl.runtime.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

PROFILE_DIR = Path(__file__).resolve().parent
ARCHITECTURES = ("x86_64", "aarch64")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
BACKEND_NAMES = ("onnxruntime", "openvino", "tensorrt")


@dataclass(frozen=True)
class Hardware:
    arch: str
    cpu: str = ""
    cpu_cores: int | None = None
    cpu_flags: tuple[str, ...] = ()          # all required
    cpu_flags_any: tuple[str, ...] = ()      # at least one required
    memory_mb: int | None = None
    gpu: str | None = None
    gpu_compute_capability: str | None = None  # exact on Jetson, minimum on a discrete GPU host
    dla_cores: int = 0
    jetson_model: str | None = None          # substring of /proc/device-tree/model
    openvino_device: str | None = None       # an OpenVINO device the target must offer (e.g. GPU)

    @property
    def is_jetson(self) -> bool:
        return self.jetson_model is not None

    @property
    def int8_dot(self) -> bool:
        """Every CPU of the profile multiplies int8 into int32 (VNNI/AMX): full 8-bit weights are exact."""
        from edgetl.runtime.machine import INT8_DOT_FLAGS

        dot = set(INT8_DOT_FLAGS)
        return bool(set(self.cpu_flags) & dot) or bool(self.cpu_flags_any and set(self.cpu_flags_any) <= dot)


@dataclass(frozen=True)
class Software:
    jetpack: str | None = None
    l4t: str | None = None
    tensorrt: str | None = None
    cuda: str | None = None

    @property
    def tensorrt_major(self) -> int | None:
        return int(self.tensorrt.split(".")[0]) if self.tensorrt else None


@dataclass(frozen=True)
class Deploy:
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    memory_budget_mb: int
    engine_precision: str | None = None
    max_batch: int = 1


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    hardware: Hardware
    deploy: Deploy
    software: Software = field(default_factory=Software)
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _require(table: dict, key: str, kind, where: str):
    if key not in table:
        raise ConfigError(f"device profile {where} lacks '{key}'")
    value = table[key]
    if not isinstance(value, kind):
        raise ConfigError(f"device profile {where}: '{key}' must be {kind.__name__}, got {value!r}")
    return value


def _check_known(table: dict, known, where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"device profile {where}: unknown key(s) {', '.join(unknown)} (valid: {', '.join(known)})")


def _section(cls, table: dict, where: str):
    known = cls.__dataclass_fields__
    _check_known(table, known, where)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    return cls(**values)


def parse_profile(text: str, source: str = "<string>") -> DeviceProfile:
    """A profile from TOML text; every field is checked and an error names the file and key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"device profile {source} is not valid TOML: {exc}") from exc
    _check_known(data, ("name", "description", "hardware", "software", "deploy"), source)
    name = _require(data, "name", str, source)
    hardware = _section(Hardware, _require(data, "hardware", dict, source), f"{source} [hardware]")
    deploy = _section(Deploy, _require(data, "deploy", dict, source), f"{source} [deploy]")
    software = _section(Software, data.get("software", {}), f"{source} [software]")
    if hardware.arch not in ARCHITECTURES:
        raise ConfigError(f"device profile {source}: arch must be one of {', '.join(ARCHITECTURES)}")
    for backend in deploy.backends:
        if backend not in BACKEND_NAMES:
            raise ConfigError(f"device profile {source}: unknown backend '{backend}' (valid: {', '.join(BACKEND_NAMES)})")
    for precision in deploy.precisions + ((deploy.engine_precision,) if deploy.engine_precision else ()):
        if precision not in PRECISIONS:
            raise ConfigError(f"device profile {source}: unknown precision '{precision}' (valid: {', '.join(PRECISIONS)})")
    if not deploy.backends or not deploy.precisions:
        raise ConfigError(f"device profile {source}: [deploy] needs at least one backend and one precision")
    if "tensorrt" in deploy.backends and not software.tensorrt:
        raise ConfigError(f"device profile {source}: a TensorRT target must state [software] tensorrt")
    if deploy.max_batch < 1 or hardware.dla_cores < 0:
        raise ConfigError(f"device profile {source}: max_batch must be >= 1 and dla_cores >= 0")
    return DeviceProfile(name=name, description=data.get("description", ""), hardware=hardware, deploy=deploy,
                         software=software, source=source)


def load_profile_file(path: str | Path) -> DeviceProfile:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read device profile {path}: {exc.strerror}") from exc
    profile = parse_profile(text, path.name)
    if profile.name != path.stem:
        raise ConfigError(f"device profile {path.name} is named '{profile.name}'; name and file stem must match")
    return profile


def load_profiles(folder: str | Path = PROFILE_DIR) -> dict[str, DeviceProfile]:
    """Every profile in ``folder``, by name (the registry of targets)."""
    return {p.name: p for p in (load_profile_file(f) for f in sorted(Path(folder).glob("*.toml")))}


def get_profile(name_or_path: str) -> DeviceProfile:
    """A built-in profile by name, or a user's own TOML file by path."""
    if name_or_path.endswith(".toml"):
        return load_profile_file(name_or_path)
    profiles = load_profiles()
    if name_or_path not in profiles:
        close = difflib.get_close_matches(name_or_path, list(profiles), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown target '{name_or_path}' (known: {', '.join(profiles)}){hint}")
    return profiles[name_or_path]


__all__ = ["DeviceProfile", "Hardware", "Software", "Deploy", "PROFILE_DIR", "get_profile", "load_profiles",
           "parse_profile", "load_profile_file"]
