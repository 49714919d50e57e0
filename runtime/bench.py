"""Latency measurement in the manner of MLPerf SingleStream and benchmark_app.

Warm-up first, then at least ``min_runs`` timed runs lasting at least
``min_seconds``; percentiles, not only the mean, with the settings and the
machine recorded next to the numbers.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

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


def machine_info() -> dict:
    """CPU model, cores and flags of note, memory, OS and Python: context for every figure."""
    info = {
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        flags_line = next((l for l in text.splitlines() if l.startswith("flags")), "")
        flags = set(flags_line.split(":", 1)[-1].split())
        info["cpu_flags"] = sorted(flags & {"avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni",
                                            "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd"})
    except OSError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return info


def settings_dict(settings: BenchSettings) -> dict:
    return asdict(settings)
