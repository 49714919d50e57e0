"""Which artifact and backend the runtime runs, and why.

In order: the artifact the user names; else the fastest on this machine by
the timings recorded here (``timings``: the runtime's own brief measurement
or ``edgetl-rt bench --record``; within ``TIE`` of the fastest p50, the most
accurate); else, with no timings, the bundle's device
profile or this CPU class's order.  Only artifacts that run as stated on this
CPU are candidates (8-bit int8 for VNNI saturates without it; bf16 without
native bf16 is emulated or silently f32), and an artifact the export could
not measure as deployed must first pass the device check (see
:mod:`edgetl.runtime.bundle.checkset`).  A one-shot command (``images``) weighs the time to its
results, engine import and model load included, not only p50; it leaves the
fp32 ONNX reference only for a clear gain (``ONE_SHOT_MARGIN``), so the
default choice is never slower to a first result than ``--artifact onnx``
beyond measurement noise.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..bundle.manifest import ENGINE_FORMAT, Artifact, BundleManifest
from ..bundle.timings import Timing, TimingRecord
from ..errors import BundleError, ConfigError
from ..machine import CpuClass, cpu_facts
from .backends import BACKEND_MODULES, available_backends, installed

REFERENCE = "onnx"
#: A one-shot command runs another artifact than the reference only when it is this much faster to its results.
ONE_SHOT_MARGIN = 0.9
#: Artifacts whose p50 is within this factor of the fastest are a tie, which the more accurate one wins.
TIE = 1.05

_INT8 = ("openvino-int8-vnni", "onnx-int8-vnni", "openvino-int8", "onnx-int8")
_SLOW_ON_CPU = ("onnx-int8-dynamic", "onnx-fp16", "onnx-int8-trt")


def cpu_order(cpu: CpuClass) -> tuple[str, ...]:
    """Formats from fastest to slowest on a CPU class, used only when nothing was measured here.

    Measured (Lite0, 224 px, batch 1, 2 threads): AVX-512 VNNI (Xeon): openvino-int8 1.80 ms, onnx-int8
    2.36, openvino 3.47, onnx 3.77; AVX2 (EPYC): onnx 6.95, onnx-int8 7.51, openvino-int8 8.88, openvino
    9.64.  Where bf16 is native, OpenVINO's bf16 ran 1.8x its f32 (EPYC with AVX512_BF16)."""
    if cpu.arch != "x86_64":   # Arm (Jetson CPUs): ONNX Runtime fp32 first; int8 kernels differ there
        return ("onnx", "onnx-int8", "openvino", "openvino-int8") + _SLOW_ON_CPU
    if cpu.bf16:
        return _INT8 + ("openvino-bf16", "openvino", "onnx") + _SLOW_ON_CPU
    if cpu.int8_dot:
        return _INT8 + ("openvino", "onnx") + _SLOW_ON_CPU
    return ("onnx", "onnx-int8", "openvino-int8", "openvino") + _SLOW_ON_CPU


def runnable_backends(artifact: Artifact) -> list[str]:
    """The artifact's backends (in its order of preference) that are installed here."""
    return installed(artifact.backends or [artifact.backend])


@dataclass
class Choice:
    artifact: Artifact
    backend: str | None        # None: the artifact's first installed backend
    reason: str


@dataclass(frozen=True)
class Candidate:
    artifact: Artifact
    backend: str


def check_named(artifact: Artifact, flags) -> None:
    """Refuse to run, by name, an artifact this CPU does not run as stated."""
    if artifact.runs_on(flags):
        return
    consequence = ("its int8 kernels would saturate here and give wrong results" if artifact.precision == "int8"
                   else f"OpenVINO would emulate {artifact.precision} slowly or silently run it in fp32")
    alternative = "onnx-int8 or openvino-int8" if artifact.precision == "int8" else "openvino"
    raise ConfigError(f"artifact '{artifact.name}' needs a CPU with one of {', '.join(artifact.requires_cpu)}; "
                      f"this one has none: {consequence}. Run {alternative} instead")


def deployment_backends(artifact: Artifact) -> list[str]:
    """Installed backends that deploy ``artifact``: TensorRT only for built engines (the ONNX files that list it
    are engine sources), a float reference backend only where it is the sole one."""
    runnable = [b for b in runnable_backends(artifact)
                if b != "tensorrt" or artifact.format == ENGINE_FORMAT]
    engines = [b for b in runnable if not b.endswith("-reference")]
    return engines or runnable


def gated_here(manifest: BundleManifest, artifact: Artifact) -> bool:
    """Whether ``artifact``'s accuracy measured on this CPU architecture (recorded by ``make check-arm64`` for
    aarch64) falls below the bundle's gate: then it is not chosen here, whatever it scored at export."""
    accuracy = artifact.accuracy_by_arch.get(cpu_facts()["arch"])
    limit = (manifest.validation or {}).get("max_accuracy_drop")
    return (accuracy is not None and limit is not None and manifest.reference_accuracy is not None
            and (manifest.reference_accuracy - accuracy) * 100 > limit)


def candidates(manifest: BundleManifest, backend: str | None, flags) -> list[Candidate]:
    """Deployable backbone artifacts this machine can run as stated and that pass the gate on this architecture,
    on each installed backend."""
    found = [Candidate(a, b) for a in manifest.artifacts
             if a.role == "backbone" and a.deployable and a.runs_on(flags) and not gated_here(manifest, a)
             for b in deployment_backends(a) if backend is None or b == backend]
    if not found:
        raise BundleError(
            "bundle has no backbone artifact this machine can run"
            + (f" with backend {backend}" if backend else "")
            + f" (artifacts: {', '.join(f'{a.name}/{a.backend}' for a in manifest.artifacts)}; "
            f"installed backends: {', '.join(available_backends()) or 'none'})"
        )
    return found


def unmeasured(found: list[Candidate], timings: TimingRecord | None) -> list[Candidate]:
    """Candidates with no usable timing here (a device-checked artifact needs a row with its check)."""
    missing = []
    for c in found:
        row = timings.get(c.artifact.name, c.backend) if timings else None
        if row is None or (c.artifact.needs_device_check and row.check is None):
            missing.append(c)
    return missing


def to_measure(manifest: BundleManifest, backend: str | None, flags,
               timings: TimingRecord | None) -> list[Candidate]:
    """What must be measured here before choosing: the unmeasured candidates, unless the only candidate needs no
    device check (nothing to choose between)."""
    found = candidates(manifest, backend, flags)
    todo = unmeasured(found, timings)
    if len(found) == 1 and not found[0].artifact.needs_device_check:
        return []
    return todo


def choose(manifest: BundleManifest, artifact: str | None, backend: str | None, timings: TimingRecord | None,
           cpu: CpuClass, flags, images: int | None = None, imported: frozenset[str] = frozenset()) -> Choice:
    """Which artifact (and backend) to run, and why (see the module docstring).

    ``imported``: engine modules the calling process had imported before it asked (their import is free)."""
    if artifact is not None:
        chosen = manifest.artifact(artifact)
        if chosen.role != "backbone":
            raise ConfigError(f"artifact '{artifact}' is a {chosen.role} model; pick a backbone artifact")
        check_named(chosen, flags)
        return Choice(chosen, backend, "named")
    found = candidates(manifest, backend, flags)
    missing = unmeasured(found, timings)
    measured = [(c, r) for c in found if c not in missing
                for r in [timings.get(c.artifact.name, c.backend)] if r.eligible]
    if measured:
        return _fastest(measured, images, imported)
    checked = [c for c in found if not c.artifact.needs_device_check]
    if not checked:
        failed = [c.artifact.name for c in found if timings and (row := timings.get(c.artifact.name, c.backend))
                  and not row.eligible]
        raise BundleError("no artifact this machine can run is usable: "
                          + (f"{', '.join(failed)} failed the device check or could not be loaded here"
                             if failed else "each must first pass the device check; run once without --no-measure"))
    if manifest.target:
        best = min(checked, key=lambda c: target_rank(manifest.target, c))
        return Choice(best.artifact, best.backend, f"device profile {manifest.target.get('name')} "
                                                   "(nothing measured here)")
    order = cpu_order(cpu)
    rank = {name: i for i, name in enumerate(order)}
    best = min(checked, key=lambda c: rank.get(c.artifact.format, len(rank)))
    return Choice(best.artifact, best.backend, f"{cpu.name} CPU order (nothing measured here)")


def _accuracy(artifact: Artifact) -> float:
    return artifact.accuracy if artifact.accuracy is not None else -1.0


def _fastest(measured: list[tuple[Candidate, Timing]], images: int | None, imported: frozenset[str]) -> Choice:
    best = min(row.p50_ms for _, row in measured)
    tied = [m for m in measured if m[1].p50_ms <= TIE * best]
    costs = [(row.one_shot_s(images, BACKEND_MODULES.get(c.backend, c.backend) in imported), c, row)
             for c, row in measured] if images is not None else []
    known = [(cost, c, row) for cost, c, row in costs if cost is not None]
    if not known:   # a long run, or no load times recorded: batch-1 p50 decides
        c, row = max(tied, key=lambda m: (_accuracy(m[0].artifact), -m[1].p50_ms))
        tie = f"; the most accurate within {round((TIE - 1) * 100)}% of the fastest" if len(tied) > 1 else ""
        return Choice(c.artifact, c.backend, f"fastest batch-1 p50 measured on this machine ({row.p50_ms:.3g} ms, "
                                             f"{row.source}{tie})")
    cost, c, _ = min(known, key=lambda k: k[0])
    reference = next((k for k in known if k[1].artifact.name == REFERENCE), None)
    if reference is not None and c.artifact.name != REFERENCE and cost > ONE_SHOT_MARGIN * reference[0]:
        cost, c, _ = reference
    return Choice(c.artifact, c.backend, f"fastest to {images} result(s) measured on this machine "
                                         f"({cost * 1000:.0f} ms incl. engine import and model load)")


def imported_engines() -> frozenset[str]:
    """Engine modules this process has imported so far."""
    return frozenset(m for m in BACKEND_MODULES.values() if m in sys.modules)


def target_rank(target: dict, candidate: Candidate) -> tuple[bool, int, int]:
    """Sort key from the bundle's device profile: artifacts that run on their intended backend here first,
    then the profile's backend order, then its precision order."""
    artifact = candidate.artifact
    intended = (artifact.backends or [artifact.backend])[0]
    used = candidate.backend.removesuffix("-reference")
    backends, precisions = target.get("backends", []), target.get("precisions", [])
    return (intended != candidate.backend,
            backends.index(used) if used in backends else len(backends),
            precisions.index(artifact.precision) if artifact.precision in precisions else len(precisions))
