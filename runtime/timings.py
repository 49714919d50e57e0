"""Latency measured on this machine, kept in the bundle, so the runtime can run the fastest artifact.

``edgetl-rt bench BUNDLE --record`` writes ``BUNDLE/timings/<machine>.json``:
the batch-1 p50 of every artifact/backend it measured.  The machine key
covers what the figures depend on (CPU model, usable cores, architecture,
backend versions), so a bundle copied to another device ignores them.
The file is local state, like the feature store, and not part of the
signed manifest; every artifact in the manifest already passed the
accuracy gate, so the record only decides which of them is fastest.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

from .errors import BundleError
from .fsutil import atomic_write_text
from .machine import cpu_facts, library_versions

TIMINGS_FOLDER = "timings"
TIMINGS_SCHEMA = "edgetl.timings/1"


def machine_key() -> tuple[str, dict]:
    cpu = cpu_facts()
    versions = library_versions()
    identity = {"cpu": cpu["model"], "arch": cpu["arch"], "cores_usable": cpu["cores_usable"],
                **{k: versions[k] for k in ("onnxruntime", "openvino", "tensorrt") if k in versions}}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return digest, identity


def record_timings(bundle: str | Path, result: dict) -> Path:
    """Keep the batch-1 rows of a benchmark matrix (default thread count) for this machine."""
    key, identity = machine_key()
    rows = [{"artifact": r["artifact"], "backend": r["backend"], "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"]}
            for r in result["rows"] if r["batch"] == 1 and r["threads"] is None]
    if not rows:
        raise BundleError("nothing to record: --record keeps batch-1 rows at the default thread count; "
                          "include --batch 1 and leave out --threads")
    folder = Path(bundle) / TIMINGS_FOLDER
    folder.mkdir(exist_ok=True)
    path = folder / f"{key}.json"
    atomic_write_text(path, json.dumps({"schema": TIMINGS_SCHEMA, "machine": identity, "rows": rows,
                                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(
                                            timespec="seconds")}, indent=2))
    return path


def recorded_timings(bundle: str | Path) -> dict[tuple[str, str], float]:
    """(artifact, backend) -> batch-1 p50 ms measured on this machine, or {} when none was recorded."""
    if not (Path(bundle) / TIMINGS_FOLDER).is_dir():
        return {}          # the common case, without the ~35 ms of reading the machine's identity
    key, _ = machine_key()
    path = Path(bundle) / TIMINGS_FOLDER / f"{key}.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("schema") != TIMINGS_SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}")
        return {(r["artifact"], r["backend"]): float(r["p50_ms"]) for r in data["rows"]}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BundleError(f"{path} is damaged ({exc}); delete it or record again with "
                          f"edgetl-rt bench {bundle} --record") from exc
