"""Measure the candidate artifacts briefly on this machine, the first time the runtime has to choose.

Machines differ more than any fixed order can say (int8 is 2x fp32 on a
VNNI Xeon and slower than fp32 on some AVX2 CPUs; bf16 is 1.8x f32 where it
is native and 4x slower where it is emulated), so with no timings recorded
for this machine the runtime measures each candidate once: engine import,
load (compile), first inference, the device check where the export could not
measure the artifact as deployed, and a few batch-1 runs within a budget of
about a second of measuring (loads, compiles and checks come on top; about
2 s for six artifacts at 64 px), most promising candidates first.  A
candidate that fails to load is recorded as not eligible, with the reason,
and the others still run.  The rows are recorded beside the bundle
(:mod:`edgetl.runtime.bundle.timings`) and not measured again on this machine; figures taken with
a ``--threads`` other than the default are used for this choice only.
``--no-measure`` skips all of it.
"""

from __future__ import annotations

import importlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle.checkset import CheckSet, check_logits, load_check_set
from ..bundle.folder import Bundle
from ..bundle.heads import Head
from ..bundle.timings import Timing, TimingRecord, write_timings
from ..data.text import TextPreprocess
from ..errors import BundleError, EdgetlError, MissingDependencyError
from ..machine import CpuClass, cpu_facts, this_cpu_class
from .artifacts import artifact_backend
from .backends import BACKEND_MODULES
from .choice import Candidate, cpu_order, to_measure
from .latency import BenchSettings, measure

DEFAULT_BUDGET_S = 1.0
MIN_RUNS, WARMUP_RUNS = 5, 2

#: Seconds each engine module took to import in this process (measured by whoever imported it first here).
_IMPORT_SECONDS: dict[str, float] = {}


def import_seconds(module: str) -> float | None:
    """Import ``module`` if needed and return how long that took (None when it was imported before us)."""
    if module not in sys.modules:
        t0 = time.perf_counter()
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingDependencyError(module, module, f"measuring the {module} backend") from exc
        _IMPORT_SECONDS[module] = time.perf_counter() - t0
    return _IMPORT_SECONDS.get(module)


@dataclass
class MeasureReport:
    rows: list[Timing]
    seconds: float
    path: Path | None
    note: str = ""


def measure_bundle(bundle: Bundle, backend: str | None = None, threads: int | None = None,
                device: str | None = None, timings: TimingRecord | None = None,
                log=lambda message: None) -> MeasureReport | None:
    """Measure the candidates that have no timing on this machine yet; None when there is nothing to decide."""
    manifest = bundle.manifest
    todo = to_measure(manifest, backend, cpu_facts()["flags"], timings)
    if not todo:
        return None
    log(f"measuring {len(todo)} artifact(s) on this machine once, to choose the fastest (--no-measure skips this)")
    report = measure_candidates(bundle, todo, bundle.exported_head, this_cpu_class(), load_check_set(bundle),
                                threads=threads, device=device)
    failed = [f"{r.artifact} on {r.backend}: {r.error}" for r in report.rows if r.error]
    for line in failed:
        log(f"warning: could not measure {line}")
    log(f"measured in {report.seconds:.1f} s; " + (f"recorded in {report.path}" if report.path else report.note))
    return report


def _sample(bundle: Bundle, check: CheckSet | None) -> np.ndarray:
    """The input each candidate is timed on: the check set's first (a text's ids without their padding, as a
    batch of one runs), else random pixels or a short run of token ids."""
    preprocess = bundle.preprocess
    if check is not None and len(check.labels):
        return preprocess.unpadded(check.images[:1])[0] if isinstance(preprocess, TextPreprocess) else check.images[:1]
    if isinstance(preprocess, TextPreprocess):
        return preprocess.example(1)
    size = preprocess.input_size
    return np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)


def measure_candidates(bundle: Bundle, todo: list[Candidate], head: Head, cpu: CpuClass, check: CheckSet | None,
                       threads: int | None = None, budget_s: float = DEFAULT_BUDGET_S,
                       device: str | None = None) -> MeasureReport:
    """Measure ``todo`` and record the rows (at the default thread count); returns them with the time taken."""
    start = time.perf_counter()
    manifest = bundle.manifest
    rank = {name: i for i, name in enumerate(cpu_order(cpu))}
    todo = sorted(todo, key=lambda c: rank.get(c.artifact.format, len(rank)))
    max_drop = float(manifest.validation.get("max_accuracy_drop", 1.0))
    sample = _sample(bundle, check)
    rows, spent = [], 0.0
    for index, candidate in enumerate(todo):
        share = max(0.05, (budget_s - spent) / (len(todo) - index))
        bundle.verify_artifact(candidate.artifact)   # nothing loads unverified; a tampered bundle stops here
        try:
            row, used = _measure(bundle.path, candidate, head, sample, check, max_drop, threads, share, device)
        except (EdgetlError, RuntimeError, OSError) as exc:   # a broken engine or model: this one is out
            row, used = Timing(candidate.artifact.name, candidate.backend, 0.0, eligible=False,
                               error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__), 0.0
        spent += used
        rows.append(row)
    path, note = None, ""
    if threads is not None:
        note = "not recorded: measured with --threads, the record keeps the default thread count"
    else:
        try:
            path = write_timings(bundle.path, rows)
        except BundleError as exc:
            note = f"not recorded: {exc}"
    return MeasureReport(rows, time.perf_counter() - start, path, note)


def _measure(bundle, candidate: Candidate, head: Head, sample: np.ndarray, check: CheckSet | None,
             max_drop: float, threads: int | None, share_s: float, device: str | None) -> tuple[Timing, float]:
    artifact, name = candidate.artifact, candidate.backend
    import_s = import_seconds(BACKEND_MODULES.get(name, name))
    t0 = time.perf_counter()
    backend = artifact_backend(bundle, artifact, name, threads, device)
    try:
        backend.open()
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        head.logits(backend.infer(sample))
        first_s = time.perf_counter() - t1
        begin = time.perf_counter()
        verdict = None
        if artifact.needs_device_check and check is not None:
            logits = np.concatenate([head.logits(backend.infer(check.images[i:i + 1]))
                                     for i in range(len(check.labels))])
            verdict = check_logits(logits, check, artifact.name, max_drop).to_dict()
            verdict["effective_precision"] = backend.effective_precision
        samples = measure(lambda: head.logits(backend.infer(sample)), BenchSettings(
            warmup_runs=WARMUP_RUNS, warmup_seconds=0.0, min_runs=MIN_RUNS, min_seconds=share_s,
            max_seconds=2 * share_s))
        used = time.perf_counter() - begin
    finally:
        backend.close()
    ms = np.asarray(samples) * 1000.0
    eligible = True
    if artifact.needs_device_check:
        eligible = bool(verdict and verdict["passed"] and verdict["effective_precision"] == artifact.precision)
    return Timing(artifact.name, name, float(np.percentile(ms, 50)), float(np.percentile(ms, 90)), load_s=load_s,
                  first_s=first_s, import_s=import_s, source="measure", check=verdict, eligible=eligible), used


def __getattr__(name: str):
    from ..compat import moved_name

    return moved_name(__name__, name)
