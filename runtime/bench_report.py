"""Reports of a benchmark matrix: terminal table, JSON, CSV, Markdown and a Pareto plot (PNG).

The plot is drawn with Pillow (already a runtime dependency), so devices
can produce it too: accuracy against p90 batch-1 latency, one point per
artifact/backend/threads, the Pareto front joined and its points filled.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .benchmark import pareto_front
from .fsutil import atomic_directory

COLUMNS = ("artifact", "precision", "backend", "threads", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
           "min_ms", "max_ms", "runs", "throughput_per_s", "cold_start_s", "peak_rss_mb", "size_mb", "accuracy",
           "p99_over_p50", "noisy")


def _cell(value) -> str:
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
    headers = [c.replace("_per_s", "/s").replace("_ms", " ms").replace("_s", " s").replace("_mb", " MB")
               for c in shown]
    body = [[_cell(r[c]) for c in shown] for r in result["rows"]]
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
        f"{s['min_seconds']} s per batch size, input {result['input_size']} px, one process per cell: "
        f"{s['process_per_cell']}" + (f", target {result['target']}" if result.get("target") else ""),
        f"- created: {result['created']}" + (f", by `{result['command']}`" if result.get("command") else ""), "",
        "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in COLUMNS) + " |" for r in result["rows"]]
    extra = notes(result)
    if extra:
        lines += [""] + [f"> {n}" for n in extra]
    lines += ["", "Accuracy source per row: " + "; ".join(sorted({f"{r['artifact']}: {r['accuracy_source']}"
                                                                  for r in result["rows"]})), ""]
    return "\n".join(lines)


def pareto_points(result: dict) -> list[dict]:
    """Batch-1 rows with an accuracy, each with ``front`` set when it is on the Pareto front."""
    points = [dict(r) for r in result["rows"] if r["batch"] == 1 and r["accuracy"] is not None]
    for i in pareto_front([(p["p90_ms"], p["accuracy"]) for p in points]):
        points[i]["front"] = True
    return points


def draw_pareto(result: dict, path: Path, size=(900, 600)) -> None:
    points = pareto_points(result)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = 80, 50, size[0] - 30, size[1] - 70
    name = "/".join(Path(result["bundle"]).parts[-2:])
    draw.text((left, 15), f"top-1 accuracy vs p90 latency, batch 1 - {name}", fill="black", font=font)
    draw.rectangle((left, top, right, bottom), outline="black")
    if not points:
        draw.text((left + 10, top + 10), "no batch-1 rows with an accuracy", fill="black", font=font)
        image.save(path)
        return
    lat = [p["p90_ms"] for p in points]
    acc = [p["accuracy"] for p in points]
    lat_lo, lat_hi = 0.0, max(lat) * 1.1
    acc_lo, acc_hi = min(acc) - 0.01, min(1.0, max(acc) + 0.01)
    acc_hi = acc_hi if acc_hi > acc_lo else acc_lo + 0.02
    x = lambda v: left + (v - lat_lo) / (lat_hi - lat_lo) * (right - left)      # noqa: E731
    y = lambda v: bottom - (v - acc_lo) / (acc_hi - acc_lo) * (bottom - top)    # noqa: E731
    for k in range(6):
        lv, av = lat_lo + k * (lat_hi - lat_lo) / 5, acc_lo + k * (acc_hi - acc_lo) / 5
        draw.line((x(lv), bottom, x(lv), bottom + 5), fill="black")
        draw.text((x(lv) - 12, bottom + 8), f"{lv:.2f}", fill="black", font=font)
        draw.line((left - 5, y(av), left, y(av)), fill="black")
        draw.text((left - 55, y(av) - 6), f"{av:.3f}", fill="black", font=font)
    draw.text(((left + right) // 2 - 40, bottom + 30), "p90 latency, ms", fill="black", font=font)
    draw.text((10, top - 20), "top-1 accuracy", fill="black", font=font)
    front = sorted((p for p in points if p.get("front")), key=lambda p: p["p90_ms"])
    if len(front) > 1:
        draw.line([(x(p["p90_ms"]), y(p["accuracy"])) for p in front], fill=(200, 40, 40), width=2)
    placed: list[tuple[float, float, float, float]] = []
    for p in sorted(points, key=lambda p: (p["p90_ms"], -p["accuracy"])):
        cx, cy = x(p["p90_ms"]), y(p["accuracy"])
        draw.ellipse((cx - 5, cy - 5, cx + 5, cy + 5), outline=(200, 40, 40) if p.get("front") else (60, 60, 200),
                     fill=(200, 40, 40) if p.get("front") else None, width=2)
        label = f"{p['artifact']}/{p['backend']}" + (f"/{p['threads']}t" if p["threads"] else "")
        width = draw.textlength(label, font=font)
        lx = cx + 8 if cx + 8 + width < size[0] - 5 else cx - 8 - width     # keep labels inside the image
        for dy in (-12, 4, -26, 18, -40, 32, -54, 46):                          # first free slot near the point
            box = (lx, cy + dy, lx + width, cy + dy + 12)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        draw.text((box[0], box[1]), label, fill="black", font=font)
    draw.text((right - 230, top + 8), "filled, joined: Pareto front", fill=(200, 40, 40), font=font)
    image.save(path)


def write_reports(result: dict, out: str | Path, overwrite: bool = True) -> dict[str, Path]:
    """results.json, results.csv, report.md and pareto.png in ``out`` (written together, atomically)."""
    out = Path(out)
    with atomic_directory(out, overwrite=overwrite) as staging:
        (staging / "results.json").write_text(json.dumps(result, indent=2, default=float))
        with open(staging / "results.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS + ("accuracy_source",))
            for r in result["rows"]:
                writer.writerow([r.get(c) for c in COLUMNS] + [r["accuracy_source"]])
        (staging / "report.md").write_text(markdown(result))
        draw_pareto(result, staging / "pareto.png")
    return {name: out / name for name in ("results.json", "results.csv", "report.md", "pareto.png")}
