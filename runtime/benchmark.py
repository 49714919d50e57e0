"""The benchmark matrix behind ``edgetl bench``: every artifact x backend x threads x batch this machine can run.

Each (artifact, backend, threads) cell runs in a fresh interpreter by
default, so that its cold start (load to first result) and peak RSS are its
own and not the sum of the cells before it.  Latency follows MLPerf
SingleStream / benchmark_app practice (:mod:`.bench`): warm-up, a minimum
count and duration, percentiles; larger batches give throughput.  Accuracy
comes from the manifest (measured at export on the run's validation split,
with the backend named) or, with ``data``, is measured again here.  Rows
whose p99/p50 exceeds a threshold are flagged as noisy instead of hidden.
"""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .backends import installed
from .bench import BenchSettings, latency_stats, machine_info, measure, peak_rss_mb
from .errors import ConfigError, EdgetlError
from .machine import cpu_facts
from .manifest import Artifact, BundleManifest, read_bundle_manifest

RESULT_SCHEMA = "edgetl.bench/1"
DEFAULT_NOISE_THRESHOLD = 1.5      # p99 / p50 above this marks a row as noisy


@dataclass
class MatrixSettings:
    batches: tuple[int, ...] = (1,)
    threads: tuple[int | None, ...] = (None,)
    artifacts: tuple[str, ...] | None = None
    backends: tuple[str, ...] | None = None
    precisions: tuple[str, ...] | None = None
    target: str | None = None
    isolate: bool = True
    noise_threshold: float = DEFAULT_NOISE_THRESHOLD
    bench: BenchSettings = field(default_factory=BenchSettings)

    def check(self) -> None:
        if not self.batches or any(b < 1 for b in self.batches):
            raise ConfigError(f"--batch values must be at least 1, got {self.batches}")
        if any(t is not None and t < 1 for t in self.threads):
            raise ConfigError(f"--threads values must be at least 1, got {self.threads}")


@dataclass(frozen=True)
class Cell:
    artifact: str
    backend: str
    threads: int | None


def plan_cells(manifest: BundleManifest, settings: MatrixSettings) -> list[Cell]:
    """The (artifact, backend, threads) cells to run: deployable backbone artifacts, installed backends,
    narrowed by the filters and by the target profile's backends and precisions."""
    backends, precisions = settings.backends, settings.precisions
    if settings.target:
        from edgetl.devices import get_profile

        profile = get_profile(settings.target)
        backends = backends or profile.deploy.backends
        precisions = precisions or profile.deploy.precisions
    artifacts: list[Artifact] = [a for a in manifest.artifacts if a.role == "backbone" and a.deployable]
    if settings.artifacts:
        unknown = sorted(set(settings.artifacts) - {a.name for a in artifacts})
        if unknown:
            raise ConfigError(f"no backbone artifact named {', '.join(unknown)} "
                              f"(the bundle has: {', '.join(a.name for a in artifacts)})")
        artifacts = [a for a in artifacts if a.name in settings.artifacts]
    cells = []
    flags = cpu_facts()["flags"]
    for artifact in artifacts:
        if precisions and artifact.precision not in precisions:
            continue
        if not artifact.runs_on(flags):   # would not run as stated here (saturating int8, emulated bf16)
            continue
        for backend in installed(artifact.backends or [artifact.backend]):
            if backends and backend.removesuffix("-reference") not in backends:
                continue
            cells.extend(Cell(artifact.name, backend, t) for t in settings.threads)
    if not cells:
        raise ConfigError("nothing to benchmark: no artifact of the bundle matches the filters with a backend "
                          "installed here (see 'edgetl-rt doctor')")
    return cells


def measure_cell(bundle: str, cell: Cell, batches: tuple[int, ...], bench: BenchSettings) -> dict:
    """Cold start, latency per batch and peak RSS of one cell, in this process."""
    from .backends import BACKEND_MODULES
    from .model import EdgeModel
    from .tune import import_seconds

    import_s = import_seconds(BACKEND_MODULES.get(cell.backend, cell.backend))
    t0 = time.perf_counter()
    model = EdgeModel(bundle, artifact=cell.artifact, backend=cell.backend, threads=cell.threads)
    load_s = time.perf_counter() - t0
    rows = []
    with model:
        size = model.preprocess.input_size
        rng = np.random.default_rng(bench.seed)
        first_s = None
        for batch in batches:
            x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
            t1 = time.perf_counter()
            model.logits(x)
            if first_s is None:
                first_s = time.perf_counter() - t1
            samples = measure(lambda: model.logits(x), replace(bench, batch=batch))
            rows.append({"batch": batch, **latency_stats(samples, batch)})
        backend = model.backend.describe()
    return {"import_s": import_s, "load_s": load_s, "first_inference_s": first_s,
            "cold_start_s": (import_s or 0.0) + load_s + first_s, "peak_rss_mb": peak_rss_mb(),
            "backend_info": backend, "batches": rows}


def measure_cell_isolated(bundle: str, cell: Cell, batches: tuple[int, ...], bench: BenchSettings) -> dict:
    spec = json.dumps({"bundle": bundle, "cell": asdict(cell), "batches": list(batches), "bench": asdict(bench)})
    out = subprocess.run([sys.executable, "-m", "edgetl.runtime.benchmark", spec], capture_output=True, text=True)
    if out.returncode != 0:
        message = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgetlError(f"benchmarking {cell.artifact} on {cell.backend} failed: {message}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _accuracy(bundle: str, artifact: Artifact, backend: str, data: str | None,
              cache: dict) -> tuple[float | None, str]:
    if data is None:
        return artifact.accuracy, f"manifest ({artifact.evaluated_with or artifact.backend}, export validation split)"
    key = (artifact.name, backend)
    if key not in cache:
        from .evaluate import evaluate_bundle
        from .model import EdgeModel

        with EdgeModel(bundle, artifact=artifact.name, backend=backend) as model:
            cache[key] = evaluate_bundle(model, data)["accuracy"]
    return cache[key], f"measured on {data}"


def run_matrix(bundle: str | Path, settings: MatrixSettings | None = None, data: str | None = None,
               log=lambda message: None) -> dict:
    settings = settings or MatrixSettings()
    settings.check()
    bundle = str(bundle)
    manifest = read_bundle_manifest(bundle)
    cells = plan_cells(manifest, settings)
    flags = cpu_facts()["flags"]
    not_run = [{"artifact": a.name, "needs": a.requires_cpu} for a in manifest.artifacts
               if a.role == "backbone" and not a.runs_on(flags)]
    budget = None
    if settings.target:
        from edgetl.devices import get_profile

        budget = get_profile(settings.target).deploy.memory_budget_mb
    rows, accuracy_cache = [], {}
    for index, cell in enumerate(cells, 1):
        log(f"[{index}/{len(cells)}] {cell.artifact} on {cell.backend}"
            + (f", {cell.threads} threads" if cell.threads else ""))
        measured = (measure_cell_isolated if settings.isolate else measure_cell)(bundle, cell, settings.batches,
                                                                             settings.bench)
        artifact = manifest.artifact(cell.artifact)
        accuracy, source = _accuracy(bundle, artifact, cell.backend, data, accuracy_cache)
        size = artifact.size + sum(c["size"] for c in artifact.companions)
        for stats in measured["batches"]:
            spread = stats["p99_ms"] / stats["p50_ms"] if stats["p50_ms"] > 0 else float("inf")
            row = {"artifact": cell.artifact, "format": artifact.format, "precision": artifact.precision,
                   "backend": cell.backend, "threads": cell.threads, **stats,
                   "effective_precision": measured["backend_info"].get("effective_precision", artifact.precision),
                   "cold_start_s": measured["cold_start_s"], "load_s": measured["load_s"],
                   "import_s": measured["import_s"], "first_inference_s": measured["first_inference_s"],
                   "peak_rss_mb": measured["peak_rss_mb"], "size_mb": size / 1e6, "accuracy": accuracy,
                   "accuracy_source": source, "p99_over_p50": spread, "noisy": spread > settings.noise_threshold,
                   "backend_info": measured["backend_info"]}
            if cell.backend == "openvino":   # the same settings for OpenVINO's own tool, to check our figure
                from .backends.openvino import benchmark_app_command

                row["benchmark_app"] = " ".join(benchmark_app_command(
                    str(Path(bundle) / artifact.file), manifest.preprocess_config.input_size, stats["batch"],
                    artifact.precision, measured["backend_info"]["threads"],
                    device=measured["backend_info"].get("device") or "CPU"))
            if budget is not None:
                row["within_memory_budget"] = measured["peak_rss_mb"] <= budget
            rows.append(row)
    return {
        "schema": RESULT_SCHEMA, "bundle": bundle, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds"), "machine": machine_info(),
        "settings": {**{k: v for k, v in asdict(settings).items() if k != "bench"}, **asdict(settings.bench),
                     "process_per_cell": settings.isolate},
        "input_size": manifest.preprocess_config.input_size, "target": settings.target,
        "memory_budget_mb": budget, "rows": rows, "not_run": not_run,
    }


def row_key(row: dict) -> tuple:
    return (row["artifact"], row["backend"], row["threads"], row["batch"])


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of (latency, accuracy) points no other point beats on both (lower latency, higher accuracy)."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for j, (l2, a2) in enumerate(points)
                        if j != i)
        if not dominated:
            front.append(i)
    return front


def compare_results(a: dict, b: dict) -> list[dict]:
    """Rows present in both results, with B/A ratios (below 1 means B is faster / smaller)."""
    for result, name in ((a, "A"), (b, "B")):
        if result.get("schema") != RESULT_SCHEMA:
            raise ConfigError(f"{name} is not an {RESULT_SCHEMA} result (written by 'edgetl bench --out')")
    by_key = {row_key(r): r for r in a["rows"]}
    shared = []
    for row in b["rows"]:
        old = by_key.get(row_key(row))
        if old is None:
            continue
        ratio = lambda k: row[k] / old[k] if old[k] else float("nan")  # noqa: E731
        shared.append({"artifact": row["artifact"], "backend": row["backend"], "threads": row["threads"],
                       "batch": row["batch"], "p50_ratio": ratio("p50_ms"), "p90_ratio": ratio("p90_ms"),
                       "throughput_ratio": ratio("throughput_per_s"), "rss_ratio": ratio("peak_rss_mb"),
                       "accuracy_change": (row["accuracy"] - old["accuracy"])
                       if row["accuracy"] is not None and old["accuracy"] is not None else None,
                       "a_p50_ms": old["p50_ms"], "b_p50_ms": row["p50_ms"]})
    if not shared:
        raise ConfigError("the two results share no (artifact, backend, threads, batch) row")
    return shared


def _main() -> None:   # the isolated cell: python -m edgetl.runtime.benchmark SPEC
    spec = json.loads(sys.argv[1])
    result = measure_cell(spec["bundle"], Cell(**spec["cell"]), tuple(spec["batches"]), BenchSettings(**spec["bench"]))
    print(json.dumps(result))


if __name__ == "__main__":
    _main()
