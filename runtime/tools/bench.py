"""The benchmark matrix behind ``edgetl-rt bench`` (and ``edgetl bench``): every artifact x backend x threads x batch
this machine can run.

Each (artifact, backend, threads) cell runs in a fresh interpreter by
default, so that its cold start (load to first result) and peak RSS are its
own and not the sum of the cells before it.  Latency follows MLPerf
SingleStream / benchmark_app practice (:mod:`edgetl.runtime.engines.latency`): warm-up, a minimum
count and duration, percentiles; larger batches give throughput.  Accuracy
comes from the manifest (measured at export on the run's validation split,
with the backend named) or, with ``data``, is measured again here.  Rows
whose p99/p50 exceeds a threshold are flagged as noisy instead of hidden.
"""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..bundle.folder import Bundle
from ..bundle.manifest import Artifact, BundleManifest
from ..data.text import DEFAULT_SEQ_LEN, TextPreprocess
from ..documents import utc_now
from ..engines.backends import installed
from ..engines.latency import BenchSettings, latency_stats, measure, peak_rss_mb
from ..errors import ConfigError, EdgetlError
from ..fsutil import atomic_directory
from ..machine import cpu_facts, jetson_facts, library_versions, memory_facts

RESULT_SCHEMA = "edgetl.bench/1"
DEFAULT_NOISE_THRESHOLD = 1.5      # p99 / p50 above this marks a row as noisy
RESULT_FILES = ("results.json", "results.csv")


@dataclass
class MatrixSettings:
    batches: tuple[int, ...] = (1,)
    seq_lens: tuple[int, ...] = (DEFAULT_SEQ_LEN,)   # a text model's axis: tokens per text
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
            raise ConfigError(f"batch sizes must be at least 1, got {self.batches}", option="batch")
        if not self.seq_lens or any(n < 2 for n in self.seq_lens):
            raise ConfigError(f"sequence lengths must be at least 2, got {self.seq_lens}", option="seq_len")
        if any(t is not None and t < 1 for t in self.threads):
            raise ConfigError(f"thread counts must be at least 1, got {self.threads}", option="threads")


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


def text_input(preprocess, batch: int, length: int) -> np.ndarray:
    """(batch, length) token ids of real words (a sentence's tokens repeated between its first and last special
    tokens), none of them padding: what a text of ``length`` tokens costs."""
    ids = preprocess.tokens(["the quick brown fox jumps over the lazy dog near the bank"])[0]
    inner = ids[1:-1] * (length // max(len(ids) - 2, 1) + 1)
    row = ([ids[0]] + inner[:length - 2] + [ids[-1]])[:length]
    return np.tile(np.asarray(row, dtype=np.int64), (batch, 1))


def _inputs(preprocess, batches: tuple[int, ...], seq_lens: tuple[int, ...], seed: int):
    """(row fields, input) per cell of the batch (and, for a text model, sequence length) axis."""
    if isinstance(preprocess, TextPreprocess):
        return [({"batch": b, "seq_len": n}, text_input(preprocess, b, n)) for b in batches for n in seq_lens]
    rng, size = np.random.default_rng(seed), preprocess.input_size
    return [({"batch": b}, rng.standard_normal((b, 3, size, size)).astype(np.float32)) for b in batches]


def measure_cell(bundle: str | Bundle, cell: Cell, batches: tuple[int, ...], bench: BenchSettings,
                 seq_lens: tuple[int, ...] = (DEFAULT_SEQ_LEN,)) -> dict:
    """Cold start, latency per batch (and sequence length) and peak RSS of one cell, in this process."""
    from ..engines.backends import BACKEND_MODULES
    from ..engines.measure import import_seconds
    from ..inference.model import EdgeModel

    import_s = import_seconds(BACKEND_MODULES.get(cell.backend, cell.backend))
    t0 = time.perf_counter()
    model = EdgeModel(bundle, artifact=cell.artifact, backend=cell.backend, threads=cell.threads)
    load_s = time.perf_counter() - t0
    rows = []
    with model:
        first_s = None
        for fields, x in _inputs(model.preprocess, batches, seq_lens, bench.seed):
            t1 = time.perf_counter()
            model.logits(x)
            if first_s is None:
                first_s = time.perf_counter() - t1
            samples = measure(lambda x=x: model.logits(x), replace(bench, batch=fields["batch"]))
            rows.append({**fields, **latency_stats(samples, fields["batch"])})
        backend = model.backend.describe()
    return {"import_s": import_s, "load_s": load_s, "first_inference_s": first_s,
            "cold_start_s": (import_s or 0.0) + load_s + first_s, "peak_rss_mb": peak_rss_mb(),
            "backend_info": backend, "batches": rows}


class NoChildInterpreter(Exception):
    """This machine cannot start a second interpreter (e.g. an emulated userland without binfmt_misc)."""


def measure_cell_isolated(bundle: str, cell: Cell, batches: tuple[int, ...], bench: BenchSettings,
                          seq_lens: tuple[int, ...] = (DEFAULT_SEQ_LEN,)) -> dict:
    spec = json.dumps({"bundle": bundle, "cell": asdict(cell), "batches": list(batches), "bench": asdict(bench),
                       "seq_lens": list(seq_lens)})
    try:
        out = subprocess.run([sys.executable, "-m", "edgetl.runtime.tools.bench", spec], capture_output=True,
                             text=True)
    except OSError as exc:
        raise NoChildInterpreter(f"{sys.executable} cannot be started as a child process ({exc.strerror})") from exc
    if out.returncode != 0:
        message = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgetlError(f"benchmarking {cell.artifact} on {cell.backend} failed: {message}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _accuracy(bundle: Bundle, artifact: Artifact, backend: str, data: str | None,
              cache: dict) -> tuple[float | None, str]:
    if data is None:
        return artifact.accuracy, f"manifest ({artifact.evaluated_with or artifact.backend}, export validation split)"
    key = (artifact.name, backend)
    if key not in cache:
        from ..inference.evaluate import evaluate_bundle
        from ..inference.model import EdgeModel

        with EdgeModel(bundle, artifact=artifact.name, backend=backend) as model:
            cache[key] = evaluate_bundle(model, data)["accuracy"]
    return cache[key], f"measured on {data}"


def run_matrix(bundle: str | Path, settings: MatrixSettings | None = None, data: str | None = None,
               log=lambda message: None) -> dict:
    settings = settings or MatrixSettings()
    settings.check()
    opened = Bundle(bundle)            # one manifest read and one check per file for the in-process cells
    bundle, manifest = str(bundle), opened.manifest
    cells = plan_cells(manifest, settings)
    preprocess = manifest.preprocess_config
    text = isinstance(preprocess, TextPreprocess)
    if text and max(settings.seq_lens) > preprocess.max_length:
        raise ConfigError(f"{max(settings.seq_lens)} tokens is longer than the model reads ({preprocess.max_length}: "
                          "longer texts are truncated)", option="seq_len")
    flags = cpu_facts()["flags"]
    not_run = [{"artifact": a.name, "needs": a.requires_cpu} for a in manifest.artifacts
               if a.role == "backbone" and not a.runs_on(flags)]
    budget = None
    if settings.target:
        from edgetl.devices import get_profile

        budget = get_profile(settings.target).deploy.memory_budget_mb
    rows, accuracy_cache, isolate, fallback = [], {}, settings.isolate, None
    for index, cell in enumerate(cells, 1):
        log(f"[{index}/{len(cells)}] {cell.artifact} on {cell.backend}"
            + (f", {cell.threads} threads" if cell.threads else ""))
        measured = None
        if isolate:
            try:
                measured = measure_cell_isolated(bundle, cell, settings.batches, settings.bench, settings.seq_lens)
            except NoChildInterpreter as exc:
                isolate, fallback = False, f"{exc}: every cell measured in this process (as --in-process)"
                log(f"warning: {fallback}")
        if measured is None:
            measured = measure_cell(opened, cell, settings.batches, settings.bench, settings.seq_lens)
        artifact = manifest.artifact(cell.artifact)
        accuracy, source = _accuracy(opened, artifact, cell.backend, data, accuracy_cache)
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
            if cell.backend == "openvino" and not text:   # the same settings for OpenVINO's own tool
                from ..engines.backends.openvino import benchmark_app_command

                row["benchmark_app"] = " ".join(benchmark_app_command(
                    str(Path(bundle) / artifact.file), preprocess.input_size, stats["batch"],
                    artifact.precision, measured["backend_info"]["threads"],
                    device=measured["backend_info"].get("device") or "CPU"))
            if budget is not None:
                row["within_memory_budget"] = measured["peak_rss_mb"] <= budget
            rows.append(row)
    return {
        "schema": RESULT_SCHEMA, "bundle": bundle, "created": utc_now(), "machine": machine_info(),
        "settings": {**{k: v for k, v in asdict(settings).items() if k != "bench"}, **asdict(settings.bench),
                     "process_per_cell": isolate, "process_per_cell_fallback": fallback},
        "input_size": None if text else preprocess.input_size, "target": settings.target,
        "memory_budget_mb": budget, "rows": rows, "not_run": not_run,
    }


def row_key(row: dict) -> tuple:
    return (row["artifact"], row["backend"], row["threads"], row["batch"], row.get("seq_len"))


def machine_info() -> dict:
    """CPU model, cores and flags of note, memory, GPU, OS and library versions: context for every figure."""
    from ..engines.cuda import cuda_info

    cpu, memory, cuda = cpu_facts(), memory_facts(), cuda_info()
    info = {
        "machine": cpu["arch"], "system": f"{platform.system()} {platform.release()}",
        "cpu_model": cpu["model"], "cpu_count": cpu["cores"], "cores_usable": cpu["cores_usable"],
        "cpu_flags": cpu["notable_flags"],
        "memory_gb": round(memory["total_mb"] / 1024, 1) if memory["total_mb"] else None,
        "gpus": cuda.devices or [], "versions": library_versions(),
    }
    jetson = jetson_facts()
    if jetson:
        info["jetson"] = jetson
    return info


COLUMNS = ("artifact", "precision", "backend", "threads", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
           "min_ms", "max_ms", "runs", "throughput_per_s", "cold_start_s", "peak_rss_mb", "size_mb", "accuracy",
           "p99_over_p50", "noisy", "seq_len")      # seq_len last: a text model's, empty for images


def cell_text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def table_lines(result: dict) -> list[str]:
    shown = ("artifact", "precision", "backend", "threads", "batch", "p50_ms", "p90_ms", "p99_ms", "throughput_per_s",
             "cold_start_s", "peak_rss_mb", "size_mb", "accuracy", "noisy")
    if any("seq_len" in r for r in result["rows"]):     # a text model: the sequence-length axis beside the batch
        shown = shown[:5] + ("seq_len",) + shown[5:]
    headers = [c.replace("_per_s", "/s").replace("_ms", " ms").replace("_s", " s").replace("_mb", " MB")
               for c in shown]
    body = [[cell_text(r.get(c)) for c in shown] for r in result["rows"]]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in body]
    lines += notes(result)
    return lines


def notes(result: dict) -> list[str]:
    out = []
    noisy = [r for r in result["rows"] if r["noisy"]]
    if noisy:
        threshold = result["settings"]["noise_threshold"]
        out.append(f"note: {len(noisy)} row(s) have p99/p50 above {threshold:g} (noisy machine or backend): "
                   + ", ".join(f"{r['artifact']}/{r['backend']} b{r['batch']} ({r['p99_over_p50']:.2f})"
                               for r in noisy) + "; rerun with a longer --min-seconds or on an idle machine")
    over = [r for r in result["rows"] if r.get("within_memory_budget") is False]
    if over:
        out.append(f"note: over the target's memory budget of {result['memory_budget_mb']} MB: "
                   + ", ".join(f"{r['artifact']}/{r['backend']} ({r['peak_rss_mb']:.0f} MB)" for r in over))
    for skipped in result.get("not_run", []):
        out.append(f"note: {skipped['artifact']} not run: it needs a CPU with one of {', '.join(skipped['needs'])}")
    return out

def write_results(result: dict, out: str | Path, overwrite: bool = True) -> dict[str, Path]:
    """results.json and results.csv in ``out``, written together, atomically (reports and plots: the host's
    ``edgetl bench``)."""
    out = Path(out)
    with atomic_directory(out, overwrite=overwrite) as staging:
        write_result_files(result, staging)
    return {name: out / name for name in RESULT_FILES}



def write_result_files(result: dict, folder: Path) -> None:
    (folder / "results.json").write_text(json.dumps(result, indent=2, default=float))
    with open(folder / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS + ("accuracy_source",))
        for r in result["rows"]:
            writer.writerow([r.get(c) for c in COLUMNS] + [r["accuracy_source"]])


def _main() -> None:   # the isolated cell: python -m edgetl.runtime.tools.bench SPEC
    spec = json.loads(sys.argv[1])
    result = measure_cell(spec["bundle"], Cell(**spec["cell"]), tuple(spec["batches"]), BenchSettings(**spec["bench"]),
                          tuple(spec["seq_lens"]))
    print(json.dumps(result))


if __name__ == "__main__":
    _main()
