"""Reports of a benchmark matrix, on the host: Markdown, a Pareto plot (PNG) and A/B comparison of two results.

The device writes the results (JSON, CSV) and prints the table (:mod:`edgetl.runtime.tools.bench`).

The plot: accuracy against p90 batch-1 latency, one point per artifact/backend/threads, the Pareto front
joined and its points filled (drawn with Pillow).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from edgetl.runtime.errors import ConfigError
from edgetl.runtime.fsutil import atomic_directory
from edgetl.runtime.tools.bench import COLUMNS, RESULT_SCHEMA, cell_text, notes, row_key, write_result_files


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
    lines += ["| " + " | ".join(cell_text(r.get(c)) for c in COLUMNS) + " |" for r in result["rows"]]
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
        write_result_files(result, staging)
        (staging / "report.md").write_text(markdown(result))
        draw_pareto(result, staging / "pareto.png")
    return {name: out / name for name in ("results.json", "results.csv", "report.md", "pareto.png")}
