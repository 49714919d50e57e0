"""Latency measurement in the manner of MLPerf SingleStream and benchmark_app (used by the choice of
artifact when the runtime measures, and by ``edgetl-rt bench``).

Warm-up first, then at least ``min_runs`` timed runs lasting at least
``min_seconds``; percentiles, not only the mean, with the settings and the
machine recorded next to the numbers.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class BenchSettings:
    batch: int = 1
    warmup_runs: int = 10
    warmup_seconds: float = 1.0
    min_runs: int = 100
    min_seconds: float = 3.0
    max_seconds: float = 60.0
    seed: int = 0


def latency_stats(samples_s: list[float] | np.ndarray, batch: int) -> dict:
    """p50/p90/p99/mean/std/min/max in milliseconds and throughput in items per second."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    mean = float(ms.mean())
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": mean,
        "std_ms": float(ms.std()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "runs": int(len(ms)),
        "throughput_per_s": batch * 1000.0 / mean if mean > 0 else float("inf"),
    }


def measure(run: Callable[[], object], settings: BenchSettings) -> list[float]:
    """Time ``run`` after warm-up; stops after max_seconds even if min_runs is not reached."""
    start = time.perf_counter()
    warm = 0
    while warm < settings.warmup_runs or time.perf_counter() - start < settings.warmup_seconds:
        run()
        warm += 1
        if time.perf_counter() - start > settings.max_seconds:
            break
    samples: list[float] = []
    begin = time.perf_counter()
    while len(samples) < settings.min_runs or time.perf_counter() - begin < settings.min_seconds:
        t0 = time.perf_counter()
        run()
        samples.append(time.perf_counter() - t0)
        if time.perf_counter() - begin > settings.max_seconds:
            break
    return samples


def peak_rss_mb() -> float:
    """Peak resident set size of this process.

    On Linux from ``VmHWM`` in /proc/self/status: ``ru_maxrss`` survives ``exec``, so a process started
    by a large parent (a test runner, a benchmark with torch loaded) would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
