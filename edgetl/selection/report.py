"""The selection as a table (terminal, Markdown) and a PNG of probe accuracy against latency."""

from __future__ import annotations

from pathlib import Path

from edgetl.plot import Point, draw_front
from edgetl.runtime.fsutil import atomic_directory

from .select import selection_json

COLUMNS = ("backbone", "px", "LogME", "probe acc", "+/-", "p50 ms", "params M", "GFLOPs", "MB", "pass s", "front",
           "budget")


def table_rows(result: dict) -> list[tuple[str, ...]]:
    rows = []
    for r in result["candidates"]:
        budget = "-" if r["within_budget"] is None else ("in" if r["within_budget"] else "over")
        pass_s = "cached" if r["cache_hit"] else f"{r['backbone_pass_s']:.1f}"
        rows.append((r["backbone"], str(r["input_size"]), f"{r['logme']:.3f}", f"{r['probe_accuracy']:.3f}",
                     f"{r['probe_std']:.3f}", f"{r['p50_ms']:.2f}", f"{r['params_m']:.2f}", f"{r['gflops']:.2f}",
                     f"{r['artifact_mb']:.1f}", pass_s, "yes" if r["pareto"] else "", budget))
    return rows


def freeze_rows(freeze: dict) -> list[tuple[str, ...]]:
    return [(str(d["train_last"]), f"{d['inner_val_accuracy']:.3f}", f"{d['inner_val_std']:.3f}",
             f"{d['gain_points']:+.1f}",
             f"{d['train_s']:.1f}", f"{d['extra_train_s']:+.1f}", "x".join(map(str, d["boundary_shape"])))
            for d in freeze["depths"]]


FREEZE_COLUMNS = ("train-last", "k-fold acc", "+/-", "gain pt", "train s", "extra s", "boundary")


def text_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(columns)] + [line(r) for r in rows]


def latency_note(result: dict) -> str:
    lat = result["latency"]
    return (f"latency: batch-1 p50 of {lat['format']} on {lat['backend']} ({lat['precision']}, {lat['threads']} "
            f"threads) on {lat['machine']}, measured on the "
            f"{'target' if lat['where'] == 'target' else 'host, not the target'}: {lat['note']}")


def text_lines(result: dict) -> list[str]:
    """What ``edgetl select`` prints: the table, how latency was measured, the recommendations, the cost, the
    files written."""
    lines = text_table(COLUMNS, table_rows(result))
    lines += [latency_note(result), f"scored on the {result['scored_on']}",
              f"recommended: {result['recommendation']['backbone']} - {result['recommendation']['reason']}"]
    if result.get("freeze"):
        freeze = result["freeze"]
        lines.append(f"freeze depth of {freeze['backbone']} ({freeze['evaluated_on']}):")
        lines += ["  " + line for line in text_table(FREEZE_COLUMNS, freeze_rows(freeze))]
        lines.append(f"recommended: {freeze['reason']}")
    t = result["timings"]
    lines.append(("reused the selection measured " + result["created"]) if result.get("reused") else
                 f"select took {t['total_s']:.1f} s: backbone passes {t['backbone_passes_s']:.1f} s, scores "
                 f"{t['scoring_s']:.1f} s, latency {t['latency_s']:.1f} s"
                 + (f" (of these, one-off ONNX exports {t['exports_s']:.1f} s)" if t.get("exports_s") else ""))
    return lines + [f"wrote {path}" for path in result.get("files", {}).values()]


def markdown(result: dict) -> str:
    md = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    lines = [f"# Backbone selection for `{result['data']}`", "",
             f"- scored on the {result['scored_on']}", f"- {latency_note(result)}",
             f"- target: {result['target'] or '-'}; budget: "
             + (f"{result['budget_ms']:g} ms" if result["budget_ms"] is not None else "none"), "",
             md(COLUMNS), "|" + "---|" * len(COLUMNS)]
    lines += [md(r) for r in table_rows(result)]
    lines += ["", f"**Recommended: {result['recommendation']['backbone']}** - {result['recommendation']['reason']}"]
    if result.get("freeze"):
        freeze = result["freeze"]
        lines += ["", f"## Freeze depth of {freeze['backbone']} ({freeze['evaluated_on']})", "",
                  md(FREEZE_COLUMNS), "|" + "---|" * len(FREEZE_COLUMNS)]
        lines += [md(r) for r in freeze_rows(freeze)]
        lines += ["", f"**Recommended: {freeze['reason']}**"]
    return "\n".join(lines) + "\n"


def draw(result: dict, path: Path) -> None:
    points = [Point(r["p50_ms"], r["probe_accuracy"], f"{r['backbone']} ({r['input_size']} px)", bool(r["pareto"]),
                    r["probe_std"]) for r in result["candidates"]]
    budget = result.get("budget_ms")
    lat = result["latency"]
    draw_front(path, points, f"k-fold probe accuracy vs batch-1 p50 ({lat['format']} on {lat['backend']}) - "
                             f"{Path(str(result['data'])).name}",
               "p50 latency, ms", "probe accuracy (train split)",
               vline=(budget, f"budget {budget:g} ms") if budget is not None else None)


def write_reports(result: dict, out: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """selection.json, selection.md and selection.png in ``out``, written together."""
    out = Path(out)
    with atomic_directory(out, overwrite=overwrite) as staging:
        (staging / "selection.json").write_text(selection_json(result))
        (staging / "selection.md").write_text(markdown(result))
        draw(result, staging / "selection.png")
    return {name: out / name for name in ("selection.json", "selection.md", "selection.png")}
