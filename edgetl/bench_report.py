"""Reports of a benchmark matrix, on the host: Markdown, a Pareto plot (PNG) and A/B comparison of two results.

The device writes the results (JSON, CSV) and prints the table (:mod:`edgetl.runtime.tools.bench`).

The plot: accuracy against p90 batch-1 latency, one point per artifact/backend/threads, the Pareto front
joined and its points filled (:mod:`edgetl.plot`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetl.plot import Point, draw_front, pareto_front
from edgetl.runtime.documents import Origin, read_document
from edgetl.runtime.errors import ConfigError
from edgetl.runtime.fsutil import atomic_directory
from edgetl.runtime.tools.bench import COLUMNS, RESULT_SCHEMA, cell_text, notes, row_key, write_result_files


def _ratio(new: dict, old: dict, key: str) -> float:
    """``new[key] / old[key]``, NaN where the old figure is zero."""
    return new[key] / old[key] if old[key] else float("nan")


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
        shared.append({"artifact": row["artifact"], "backend": row["backend"], "threads": row["threads"],
                       "batch": row["batch"], **({"seq_len": row["seq_len"]} if "seq_len" in row else {}),
                       "p50_ratio": _ratio(row, old, "p50_ms"), "p90_ratio": _ratio(row, old, "p90_ms"),
                       "throughput_ratio": _ratio(row, old, "throughput_per_s"),
                       "rss_ratio": _ratio(row, old, "peak_rss_mb"),
                       "accuracy_change": (row["accuracy"] - old["accuracy"])
                       if row["accuracy"] is not None and old["accuracy"] is not None else None,
                       "a_p50_ms": old["p50_ms"], "b_p50_ms": row["p50_ms"]})
    if not shared:
        raise ConfigError("the two results share no (artifact, backend, threads, batch) row")
    return shared


def read_result(path: str | Path) -> dict:
    """A result ``edgetl bench --out`` wrote (results.json); anything else is refused (ConfigError)."""
    return read_document(path, Origin(path, ConfigError), (RESULT_SCHEMA,),
                         what="an edgetl bench result (written by 'edgetl bench --out')")


@dataclass
class Comparison:
    """``edgetl bench --compare A B``: the shared rows of two result files with their B/A ratios."""

    a: str
    b: str
    rows: list[dict]
    machines: tuple[str | None, str | None]    # the CPU model each result was measured on

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "rows": self.rows}

    def lines(self) -> list[str]:
        """The comparison as a table, with a note when the two machines differ."""
        lines = [f"B/A for each shared row (below 1: B is faster); A={self.a} B={self.b}",
                 f"{'artifact':16s} {'backend':22s} {'thr':>4s} {'batch':>5s} {'A p50 ms':>9s} {'B p50 ms':>9s} "
                 f"{'p50':>6s} {'p90':>6s} {'thrpt':>6s} {'RSS':>6s} {'acc +/-':>8s}"]
        for r in self.rows:
            change = "-" if r["accuracy_change"] is None else f"{r['accuracy_change']:+.4f}"
            lines.append(f"{r['artifact']:16s} {r['backend']:22s} {str(r['threads'] or '-'):>4s} {r['batch']:>5d} "
                         f"{r['a_p50_ms']:9.3f} {r['b_p50_ms']:9.3f} {r['p50_ratio']:6.2f} {r['p90_ratio']:6.2f} "
                         f"{r['throughput_ratio']:6.2f} {r['rss_ratio']:6.2f} {change:>8s}")
        if self.machines[0] != self.machines[1]:
            lines.append(f"note: different machines: A {self.machines[0]}, B {self.machines[1]}")
        return lines


def compare_files(path_a: str, path_b: str) -> Comparison:
    """Read two result files and compare them (:func:`compare_results`)."""
    a, b = read_result(path_a), read_result(path_b)
    return Comparison(path_a, path_b, compare_results(a, b), (a["machine"].get("cpu_model"),
                                                              b["machine"].get("cpu_model")))


def markdown(result: dict) -> str:
    m = result["machine"]
    s = result["settings"]
    lines = [
        f"# Benchmark of `{result['bundle']}`", "",
        f"- machine: {m.get('cpu_model')} ({m.get('machine')}, {m.get('cpu_count')} cores, flags "
        f"{' '.join(m.get('cpu_flags', [])) or '-'}), {m.get('memory_gb')} GB"
        + (f", GPUs {m['gpus']}" if m.get("gpus") else ""),
        f"- versions: {', '.join(f'{k} {v}' for k, v in m.get('versions', {}).items())}",
        f"- settings: warm-up {s['warmup_runs']} runs / {s['warmup_seconds']} s, at least {s['min_runs']} runs and "
        f"{s['min_seconds']} s per batch size, input "
        + (f"{result['input_size']} px" if result.get("input_size") else
           f"{', '.join(str(n) for n in s.get('seq_lens', ()))} tokens per text") + ", one process per cell: "
        f"{s['process_per_cell']}" + (f" ({s['process_per_cell_fallback']})" if s.get("process_per_cell_fallback")
                                       else "") + (f", target {result['target']}" if result.get("target") else ""),
        f"- created: {result['created']}" + (f", by `{result['command']}`" if result.get("command") else ""), "",
        "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cell_text(r.get(c)) for c in COLUMNS) + " |" for r in result["rows"]]
    extra = notes(result)
    if extra:
        lines += [""] + [f"> {n}" for n in extra]
    lines += ["", "Accuracy source per row: " + "; ".join(sorted({f"{r['artifact']}: {r['accuracy_source']}"
                                                                  for r in result["rows"]})), ""]
    return "\n".join(lines)


def pareto_points(result: dict) -> list[dict]:
    """Batch-1 rows with an accuracy (a text model's at its shortest measured length), each with ``front`` set
    when it is on the Pareto front."""
    shortest = min((r["seq_len"] for r in result["rows"] if "seq_len" in r), default=None)
    points = [dict(r) for r in result["rows"]
              if r["batch"] == 1 and r["accuracy"] is not None and r.get("seq_len") == shortest]
    for i in pareto_front([(p["p90_ms"], p["accuracy"]) for p in points]):
        points[i]["front"] = True
    return points


def draw_pareto(result: dict, path: Path) -> None:
    name = "/".join(Path(result["bundle"]).parts[-2:])
    points = [Point(p["p90_ms"], p["accuracy"], f"{p['artifact']}/{p['backend']}"
                    + (f"/{p['threads']}t" if p["threads"] else ""), bool(p.get("front")))
              for p in pareto_points(result)]
    draw_front(path, points, f"top-1 accuracy vs p90 latency, batch 1 - {name}", "p90 latency, ms", "top-1 accuracy")


def write_reports(result: dict, out: str | Path, overwrite: bool = True) -> dict[str, Path]:
    """results.json, results.csv, report.md and pareto.png in ``out`` (written together, atomically)."""
    out = Path(out)
    with atomic_directory(out, overwrite=overwrite) as staging:
        write_result_files(result, staging)
        (staging / "report.md").write_text(markdown(result))
        draw_pareto(result, staging / "pareto.png")
    return {name: out / name for name in ("results.json", "results.csv", "report.md", "pareto.png")}
