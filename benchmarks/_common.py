"""Helpers shared by the benchmark scripts: result files and the machine context."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edgetl.runtime.tools.bench import machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def save_result(name: str, payload: dict) -> Path:
    """Write ``results/<name>.json`` with the machine and a timestamp beside the figures."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def verdict(value: float, target: float, lower_is_better: bool = True) -> str:
    ok = value <= target if lower_is_better else value >= target
    return f"{'PASS' if ok else 'MISS'} (target {'<=' if lower_is_better else '>='} {target:g})"
