"""Latency measured on this machine, kept beside the bundle, so the runtime can run the fastest artifact.

Two writers fill ``BUNDLE/timings/<machine>.json``: the runtime's brief
measurement the first time it has to choose (:mod:`edgetl.runtime.engines.measure`) and ``edgetl-rt
bench --record`` (the full benchmark).  A row holds the batch-1 p50 and p90
of one artifact/backend and what a one-shot command pays before its first
result: importing the engine, loading (and compiling) the model, the first
inference.  The machine key covers what the figures depend on (CPU model,
usable cores, architecture, backend versions), so a bundle copied to another
device ignores them.  The file is local state, like the feature store and
the compiled-model cache (kept outside the bundle, see :func:`state_root`),
and not part of the signed manifest; where the bundle folder is read-only,
the timings go to the user's state folder instead.  Failing to write them
costs the next run a new measurement, never the current result.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..data.text import DEFAULT_SEQ_LEN
from ..documents import Origin, Table, build, read_document, table_of, to_json, utc_now
from ..errors import BundleError, ConfigError
from ..fsutil import atomic_write_text
from ..machine import cpu_facts, library_versions

TIMINGS_FOLDER = "timings"
TIMINGS_SCHEMA = "edgetl.timings/2"
READABLE_SCHEMAS = ("edgetl.timings/1", TIMINGS_SCHEMA)
ENGINES = ("onnxruntime", "openvino", "tensorrt")
#: Folders of a bundle that hold a device's own state: never packed, never unpacked from an archive.
LOCAL_STATE = (TIMINGS_FOLDER, "cache")


@dataclass
class Timing:
    """Batch-1 figures of one artifact on one backend, on this machine."""

    artifact: str
    backend: str
    p50_ms: float
    p90_ms: float | None = None
    load_s: float | None = None       # open (ONNX Runtime: session with its optimizations), engine imported
    first_s: float | None = None      # first inference after loading (OpenVINO compiles here)
    import_s: float | None = None     # importing the engine's Python package, once per process
    source: str = "measure"           # "measure" (brief, by the runtime) or "bench" (edgetl-rt bench --record)
    error: str = ""                   # why the candidate could not be measured (then not eligible)
    check: dict | None = None         # the device check of an artifact not measured at export as deployed
    eligible: bool = True             # False when that check failed: never chosen here

    def one_shot_s(self, images: int, imported: bool) -> float | None:
        """Seconds from a fresh process to ``images`` results, or None when load time is unknown."""
        if self.load_s is None or self.first_s is None:
            return None
        return (0.0 if imported else (self.import_s or 0.0)) + self.load_s + self.first_s \
            + max(0, images - 1) * self.p50_ms / 1000.0


@dataclass
class TimingRecord:
    machine: dict
    rows: list[Timing] = field(default_factory=list)

    def get(self, artifact: str, backend: str) -> Timing | None:
        return next((r for r in self.rows if (r.artifact, r.backend) == (artifact, backend)), None)

    def merge(self, rows: list[Timing]) -> None:
        """Replace rows of the same artifact/backend; a full benchmark replaces a brief measurement."""
        for row in rows:
            self.rows = [r for r in self.rows if (r.artifact, r.backend) != (row.artifact, row.backend)] + [row]


@functools.lru_cache(maxsize=1)
def machine_key() -> tuple[str, dict]:
    """A short digest of what the figures depend on, and the facts behind it."""
    cpu = cpu_facts()
    versions = library_versions(ENGINES)
    identity = {"cpu": cpu["model"], "arch": cpu["arch"], "cores_usable": cpu["cores_usable"],
                **{k: versions[k] for k in ENGINES if k in versions}}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return digest, identity


def state_root() -> Path:
    """Where the runtime keeps state that is not the bundle's: ``$EDGETL_STATE_DIR``, else the user's cache."""
    explicit = os.environ.get("EDGETL_STATE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgetl"


def local_state_dir(bundle: str | Path, kind: str, create: bool = False) -> Path:
    """``BUNDLE/<kind>`` where it can be written, else a folder for this bundle under :func:`state_root`."""
    bundle = Path(bundle)
    inside = bundle / kind
    if os.access(inside, os.W_OK) if inside.is_dir() else os.access(bundle, os.W_OK):
        if create:
            inside.mkdir(exist_ok=True)
        return inside
    digest = hashlib.sha256(str(bundle.resolve()).encode()).hexdigest()[:16]
    outside = state_root() / "bundles" / digest / kind
    if create:
        outside.mkdir(parents=True, exist_ok=True)
    return outside


def _path(bundle: str | Path, key: str, create: bool = False) -> Path:
    return local_state_dir(bundle, TIMINGS_FOLDER, create) / f"{key}.json"


def read_timings(bundle: str | Path) -> TimingRecord | None:
    """This machine's record for ``bundle``, or None when nothing was measured here."""
    folder = local_state_dir(bundle, TIMINGS_FOLDER)
    if not folder.is_dir():
        return None          # the common case, without the ~35 ms of reading the machine's identity
    key, identity = machine_key()
    path = folder / f"{key}.json"
    if not path.is_file():
        return None
    origin = Origin(str(path), BundleError, f"delete it or record again with edgetl-rt bench {bundle} --record")
    data = read_document(path, origin, READABLE_SCHEMAS, what="an edgetl timings record")
    record = build(TimingRecord, {"machine": identity, **data}, origin, _record_table())
    if data["schema"] == READABLE_SCHEMAS[0]:   # only bench wrote v1
        record.rows = [replace(row, source="bench") for row in record.rows]
    record.rows = [replace(row, source="measure") if row.source == "tune" else row   # 0.6 called it tuning
                   for row in record.rows]
    return record


@functools.cache
def _record_table() -> Table:
    """A timings file; rows keep what this version knows (a later one may add figures)."""
    return Table({"schema": str, "machine": dict, "rows": list[table_of(Timing, closed=False)], "updated": str},
                 optional=("machine", "updated"))


def write_timings(bundle: str | Path, rows: list[Timing]) -> Path:
    """Merge ``rows`` into this machine's record (atomically) and return its path; raises
    :class:`BundleError` naming the folder when it cannot be written."""
    key, identity = machine_key()
    record = read_timings(bundle) or TimingRecord(identity)
    record.merge(rows)
    try:
        path = _path(bundle, key, create=True)
        atomic_write_text(path, to_json({
            "schema": TIMINGS_SCHEMA, "machine": identity, "rows": [asdict(r) for r in record.rows],
            "updated": utc_now()}))
    except OSError as exc:
        raise BundleError(f"cannot record timings for {bundle} ({exc.strerror or exc}); set EDGETL_STATE_DIR to "
                          "a writable folder") from exc
    return path


def record_timings(bundle: str | Path, result: dict) -> Path:
    """Keep the batch-1 rows of a benchmark matrix (default thread count) for this machine; for a text model, per
    artifact and backend the row of the sequence length nearest the bench's default (a short query)."""
    chosen: dict[tuple, dict] = {}
    for r in result["rows"]:
        if r["batch"] == 1 and r["threads"] is None:
            key = (r["artifact"], r["backend"])
            distance = abs(r.get("seq_len", DEFAULT_SEQ_LEN) - DEFAULT_SEQ_LEN)
            if key not in chosen or distance < abs(chosen[key].get("seq_len", DEFAULT_SEQ_LEN) - DEFAULT_SEQ_LEN):
                chosen[key] = r
    rows = [Timing(r["artifact"], r["backend"], r["p50_ms"], r["p90_ms"], load_s=r.get("load_s"),
                   first_s=r.get("first_inference_s"), import_s=r.get("import_s"), source="bench")
            for r in chosen.values()]
    if not rows:
        raise ConfigError("nothing to record: the record keeps batch-1 rows at the default thread count; "
                          "measure batch 1 with the default threads", option="record")
    return write_timings(bundle, rows)
