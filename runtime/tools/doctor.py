"""``edgetl-rt doctor``: what this device is, what it can run, and which device profile fits it.

Facts come from the OS (``/proc/cpuinfo``, ``/proc/meminfo``, the Jetson
device tree and ``/etc/nv_tegra_release``), the installed backends
(versions, ONNX Runtime providers, OpenVINO devices, TensorRT) and the CUDA
runtime.  Gathering never fails: what cannot be read is reported as such.
:func:`profile_fit` is a pure function of those facts, so it is tested with
made-up machines too.
"""

from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass, field

from edgetl.devices import DeviceProfile, load_profiles

from ..engines.backends import available_backends
from ..engines.cuda import cuda_info
from ..engines.sidecar import parse_version
from ..machine import cpu_class, cpu_facts, jetson_facts, memory_facts


def backend_facts() -> dict:
    found = {}
    present = set(available_backends())
    if "onnxruntime" in present:
        ort = importlib.import_module("onnxruntime")
        found["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
    if "openvino" in present:
        try:
            ov = importlib.import_module("openvino")
            core = ov.Core()
            devices = {d: core.get_property(d, "FULL_DEVICE_NAME") for d in core.available_devices}
            capabilities = {d: list(core.get_property(d, "OPTIMIZATION_CAPABILITIES")) for d in core.available_devices}
            found["openvino"] = {"version": ov.get_version(), "devices": devices, "capabilities": capabilities}
        except Exception as exc:  # a broken plugin must not stop the report
            found["openvino"] = {"error": str(exc)}
    if "tensorrt" in present:
        try:
            trt = importlib.import_module("tensorrt")
            found["tensorrt"] = {"version": trt.__version__}
        except Exception as exc:
            found["tensorrt"] = {"error": str(exc)}
    return found


def gather() -> dict:
    cuda = cuda_info()
    cpu = cpu_facts()
    cls = cpu_class(cpu["flags"], cpu["arch"])
    memory = memory_facts()
    unread = []
    if not cpu["flags_read"]:
        unread.append("/proc/cpuinfo lists no CPU flags: profiles that need a CPU flag cannot be confirmed")
    if memory["total_mb"] is None:
        unread.append("/proc/meminfo gives no memory figures")
    return {
        "platform": {"system": platform.system(), "release": platform.release(),
                     "python": platform.python_version()},
        "unread": unread,
        "cpu": cpu,
        "cpu_class": {"name": cls.name, "int8_dot_products": cls.int8_dot, "native_bf16": cls.bf16,
                      "default_threads": cpu["physical_cores_usable"]},
        "memory": memory,
        "jetson": jetson_facts(),
        "cuda": {"available": cuda.available, "reason": cuda.reason, "devices": cuda.devices or [],
                 "versions": cuda.versions},
        "backends": backend_facts(),
    }


@dataclass
class Fit:
    profile: str
    fits: bool
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)      # requirements the facts cannot confirm either way
    specificity: int = 0     # weighted count of requirements met: an accelerator counts more than a CPU flag


def profile_fit(profile: DeviceProfile, facts: dict) -> Fit:
    """Does this machine match ``profile``?  ``matched`` names each requirement met (more = more specific)."""
    hw = profile.hardware
    fit = Fit(profile.name, True)

    def need(ok: bool, what: str, weight: int = 1) -> None:
        (fit.matched if ok else fit.missing).append(what)
        fit.specificity += weight if ok else 0

    cpu = facts["cpu"]
    need(cpu["arch"] == hw.arch, f"arch {hw.arch}" + ("" if cpu["arch"] == hw.arch else f" (this is {cpu['arch']})"))
    flags = set(cpu["flags"])
    wanted = [f"CPU flag {flag}" for flag in hw.cpu_flags] + \
        ([f"one of CPU flags {', '.join(hw.cpu_flags_any)}"] if hw.cpu_flags_any else [])
    if not cpu.get("flags_read", True):
        fit.unknown += [f"{what} (no CPU flags could be read)" for what in wanted]
    else:
        for flag in hw.cpu_flags:
            need(flag in flags, f"CPU flag {flag}")
        if hw.cpu_flags_any:
            need(bool(flags & set(hw.cpu_flags_any)), wanted[-1], 2)
    jetson = facts.get("jetson")
    if hw.jetson_model:
        model = jetson["model"] if jetson else None
        need(bool(model) and hw.jetson_model.lower() in model.lower(),
             f"Jetson model '{hw.jetson_model}'" + (f" (this is {model})" if model else " (not a Jetson)"), 3)
    elif hw.gpu_compute_capability:  # a discrete NVIDIA GPU of at least this compute capability
        devices = facts["cuda"]["devices"]
        best = max((parse_version(d["compute_capability"]) for d in devices), default=None)
        need(best is not None and best >= parse_version(hw.gpu_compute_capability),
             f"NVIDIA GPU with compute capability >= {hw.gpu_compute_capability}"
             + ("" if devices else f" ({facts['cuda'].get('reason') or 'none found'})"), 3)
    if hw.openvino_device:
        devices = facts["backends"].get("openvino", {}).get("devices", {})
        need(any(d.split(".")[0] == hw.openvino_device for d in devices),
             f"OpenVINO device {hw.openvino_device}" + ("" if devices else " (OpenVINO not installed)"), 3)
    if "tensorrt" in profile.deploy.backends:
        trt = facts["backends"].get("tensorrt", {}).get("version")
        wanted = profile.software.tensorrt
        if trt and wanted and parse_version(trt)[:1] != parse_version(wanted)[:1]:
            fit.missing.append(f"TensorRT {wanted}.x (this has {trt})")
    fit.fits = not fit.missing and not fit.unknown
    return fit


def rank_profiles(facts: dict, profiles: dict[str, DeviceProfile] | None = None) -> list[Fit]:
    """Every profile's fit, the fitting ones first, the most specific fit first among them."""
    fits = [profile_fit(p, facts) for p in (profiles or load_profiles()).values()]
    return sorted(fits, key=lambda f: (not f.fits, -f.specificity, len(f.missing), f.profile))


def doctor_report() -> dict:
    facts = gather()
    fits = rank_profiles(facts)
    facts["profiles"] = [{"name": f.profile, "fits": f.fits, "matched": f.matched, "missing": f.missing,
                          "unknown": f.unknown} for f in fits]
    facts["best_profile"] = fits[0].profile if fits and fits[0].fits else None
    return facts
