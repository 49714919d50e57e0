"""Facts about the machine a figure was measured on: CPU model and flags, cores, memory, Jetson model.

Read from the OS only (``/proc/cpuinfo``, ``/proc/meminfo``, ``/sys``, the device tree); what cannot be
read is reported as unknown rather than failing.  Shared by ``doctor``, the backends' explicit settings,
the runtime's artifact choice and every benchmark result.

:class:`CpuClass` is what the precision decisions depend on (int8 dot products, native bf16).  It is a
pure function of the flag set, so tests describe machines they do not run on.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

#: CPU flags worth showing (the full list is long); they decide int8 speed and the x86 profiles.
NOTABLE_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                 "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimdhp", "asimddp", "sve",
                 "i8mm", "bf16")

#: x86 int8 dot-product instructions that accumulate u8 x s8 products in int32.  Without one of them
#: (AVX2 only) ONNX Runtime and OpenVINO multiply with VPMADDUBSW, which saturates a pair of products at
#: int16: full 8-bit weights then give wrong results (measured: digits 0.9666 -> 0.8089), 7-bit do not.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: Native bf16 arithmetic.  Without it OpenVINO emulates bf16 (AVX-512: 4x slower than f32) or silently
#: runs f32 (AVX2).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CpuClass:
    """The precision-relevant class of a CPU."""

    arch: str
    int8_dot: bool     # full 8-bit int8 is exact and fast
    bf16: bool         # bf16 runs natively

    @property
    def name(self) -> str:
        if self.arch != "x86_64":
            return self.arch
        return "x86-bf16" if self.bf16 else "x86-vnni" if self.int8_dot else "x86-avx2"


def cpu_class(flags: set[str] | list[str] | tuple[str, ...], arch: str = "x86_64") -> CpuClass:
    flags = set(flags)
    return CpuClass(arch, bool(flags & set(INT8_DOT_FLAGS)), bool(flags & set(BF16_FLAGS)))


def this_cpu_class() -> CpuClass:
    facts = cpu_facts()
    return cpu_class(facts["flags"], facts["arch"])


def _read(path: str) -> str | None:
    try:
        return Path(path).read_bytes().rstrip(b"\x00").decode(errors="replace")
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def cpu_facts() -> dict:
    text = _read("/proc/cpuinfo") or ""
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and model is None:
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    try:
        usable = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = list(range(os.cpu_count() or 1))
    return {"arch": _arch(platform.machine()), "model": model or platform.processor() or "unknown",
            "cores": os.cpu_count(), "cores_usable": len(usable), "physical_cores_usable": _physical_cores(usable),
            "flags": sorted(flags), "notable_flags": [f for f in NOTABLE_FLAGS if f in flags],
            "flags_read": bool(flags)}     # False: /proc/cpuinfo absent or listing no flags (a chroot, an emulator)


def _physical_cores(cpus: list[int]) -> int:
    """Distinct physical cores among ``cpus`` (hyper-threads of one core count once)."""
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        package, core = _read(topology + "physical_package_id"), _read(topology + "core_id")
        cores.add((package.strip(), core.strip()) if package and core else ("cpu", str(cpu)))
    return max(1, len(cores))


def default_threads() -> int:
    """The intra-op thread count every backend gets when none is given: one per usable physical core.

    ONNX Runtime and OpenVINO would each pick their own default (they agree today); stating it makes the
    figure and its settings the same on every machine and in every record."""
    return cpu_facts()["physical_cores_usable"]


def _arch(machine: str) -> str:
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine.lower())


def memory_facts() -> dict:
    info = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            info[key] = int(value.split()[0]) // 1024
    return {"total_mb": info.get("MemTotal"), "available_mb": info.get("MemAvailable")}


def jetson_facts() -> dict | None:
    model = _read("/proc/device-tree/model")
    if model is None:
        return None
    release = _read("/etc/nv_tegra_release")
    return {"model": model, "l4t": release.splitlines()[0].strip() if release else None}


def library_versions(packages: tuple[str, ...] = ("edgetl", "numpy", "pillow", "onnxruntime", "openvino",
                                                  "tensorrt")) -> dict:
    """Versions of what the numbers depend on (installed packages only, found without importing them)."""
    versions = {"python": platform.python_version()}
    for package in packages:
        version = installed_version(package)
        if version:
            versions[package] = version
    return versions


def installed_version(package: str) -> str | None:
    """A distribution's version from its ``NAME-VERSION.dist-info`` folder beside the module (no import, and
    without importlib.metadata's scan of every path entry: it runs on every cold start); else the scan."""
    import importlib.util

    module = {"pillow": "PIL"}.get(package, package)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    if spec.origin:
        folder = Path(spec.origin).parent.parent
        found = sorted(folder.glob(f"{package.replace('-', '_')}-*.dist-info"))
        if len(found) == 1:
            return found[0].name[len(package) + 1:-len(".dist-info")]
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
