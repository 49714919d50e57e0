"""Facts about the machine a figure was measured on: CPU model and flags, cores, memory, Jetson model.

Read from the OS only (``/proc/cpuinfo``, ``/proc/meminfo``, the device tree); what cannot be read is
reported as unknown rather than failing.  Shared by ``doctor`` and every benchmark result.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: CPU flags worth showing (the full list is long); they decide int8 speed and the x86 profiles.
NOTABLE_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                 "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimdhp", "asimddp", "sve", "i8mm")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_bytes().rstrip(b"\x00").decode(errors="replace")
    except OSError:
        return None


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
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"arch": _arch(platform.machine()), "model": model or platform.processor() or "unknown",
            "cores": os.cpu_count(), "cores_usable": usable, "flags": sorted(flags),
            "notable_flags": [f for f in NOTABLE_FLAGS if f in flags]}


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


def library_versions() -> dict:
    """Versions of what the numbers depend on (installed backends only, found without importing them)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("edgetl", "numpy", "pillow", "onnxruntime", "openvino", "tensorrt"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
