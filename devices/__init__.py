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
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edgetl.runtime.documents import Origin, Table, build
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


#: The profile file: every key typed, unknown keys refused (a typo in a profile is caught where it is made).
PROFILE_TABLE = Table({"name": str, "description": str, "hardware": Hardware, "software": Software, "deploy": Deploy},
                      optional=("description", "software"))
_VERSION = re.compile(r"\d+(\.\d+)*")


def parse_profile(text: str, source: str = "<string>") -> DeviceProfile:
    """A profile from TOML text; every key and type is checked and an error names the file and key."""
    origin = Origin(f"device profile {source}", ConfigError)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        origin.fail(f"not valid TOML ({exc})")
    profile = replace(build(DeviceProfile, {"description": "", **data}, origin, PROFILE_TABLE), source=source)
    _check_values(profile, origin)
    return profile


def _check_values(profile: DeviceProfile, origin: Origin) -> None:
    """What the types alone do not say: names from a fixed set, version numbers, counts in range."""
    hardware, software, deploy = profile.hardware, profile.software, profile.deploy
    _one_of(hardware.arch, ARCHITECTURES, "[hardware] arch", origin)
    for index, backend in enumerate(deploy.backends):
        _one_of(backend, BACKEND_NAMES, f"[deploy] backends[{index}]", origin)
    for index, precision in enumerate(deploy.precisions):
        _one_of(precision, PRECISIONS, f"[deploy] precisions[{index}]", origin)
    if deploy.engine_precision is not None:
        _one_of(deploy.engine_precision, PRECISIONS, "[deploy] engine_precision", origin)
    if not deploy.backends or not deploy.precisions:
        origin.fail("[deploy] needs at least one backend and one precision")
    if "tensorrt" in deploy.backends and not software.tensorrt:
        origin.fail("a TensorRT target must state [software] tensorrt")
    for key, version in (("[software] tensorrt", software.tensorrt),
                         ("[hardware] gpu_compute_capability", hardware.gpu_compute_capability)):
        if version is not None and not _VERSION.fullmatch(version):
            origin.fail(f"{key} must be a version number such as \"10.3\", got \"{version}\"")
    for key, value, least in (("[deploy] max_batch", deploy.max_batch, 1),
                              ("[deploy] memory_budget_mb", deploy.memory_budget_mb, 1),
                              ("[hardware] dla_cores", hardware.dla_cores, 0),
                              ("[hardware] cpu_cores", hardware.cpu_cores, 1),
                              ("[hardware] memory_mb", hardware.memory_mb, 1)):
        if value is not None and value < least:
            origin.fail(f"{key} must be >= {least}, got {value}")


def _one_of(value: str, valid: tuple[str, ...], key: str, origin: Origin) -> None:
    if value not in valid:
        origin.fail(f"{key} must be one of {', '.join(valid)}, got \"{value}\"")


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
