"""The benchmark matrix: rows per artifact/backend/batch, the statistics, reports, Pareto plot, compare."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.bench_report import compare_results, markdown, write_reports
from edgetl.cli import main as host
from edgetl.plot import pareto_front
from edgetl.runtime.cli import main as rt
from edgetl.runtime.errors import ConfigError
from edgetl.runtime.tools.bench import table_lines

FAST = ["--min-runs", "10", "--min-seconds", "0.1", "--warmup-runs", "2"]


def test_matrix_on_the_digits_bundle_with_every_report(digits_bundle, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(host, ["bench", str(digits_bundle.bundle), "--batch", "1,4", "--out", str(out),
                                       "--json", *FAST])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = data["rows"]
    assert {(r["artifact"], r["batch"]) for r in rows} == {(a, b) for a in ("onnx", "onnx-int8", "openvino")
                                                           for b in (1, 4)}
    manifest = json.loads((digits_bundle.bundle / "manifest.json").read_text())
    recorded = {a["name"]: a["accuracy"] for a in manifest["artifacts"]}
    for r in rows:
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"] and r["runs"] >= 10
        assert r["throughput_per_s"] > 0 and r["cold_start_s"] > 0 and r["peak_rss_mb"] > 50 and r["size_mb"] > 1
        assert r["accuracy"] == recorded[r["artifact"]] and "manifest" in r["accuracy_source"]
        assert r["p99_over_p50"] == pytest.approx(r["p99_ms"] / r["p50_ms"]) and r["p99_over_p50"] >= 1.0
        assert r["noisy"] is (r["p99_over_p50"] > data["settings"]["noise_threshold"])
    assert data["settings"]["process_per_cell"] and data["settings"]["min_runs"] == 10
    for key in ("cpu_model", "cpu_flags", "cpu_count", "memory_gb", "versions"):
        assert key in data["machine"]
    assert data["machine"]["versions"]["onnxruntime"]
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(json.dumps(rows))
    with open(out / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    assert "| artifact | precision |" in (out / "report.md").read_text()
    with Image.open(out / "pareto.png") as png:
        assert png.size == (900, 600)


def test_filters_target_and_errors(digits_bundle):
    only = CliRunner().invoke(rt, ["bench", str(digits_bundle.bundle), "--backends", "openvino", "--json",
                                   "--in-process", *FAST])
    assert {r["backend"] for r in json.loads(only.stdout)["rows"]} == {"openvino"}
    int8 = CliRunner().invoke(rt, ["bench", str(digits_bundle.bundle), "--precisions", "int8", "--json",
                                   "--in-process", *FAST])
    assert {r["artifact"] for r in json.loads(int8.stdout)["rows"]} == {"onnx-int8"}
    target = CliRunner().invoke(rt, ["bench", str(digits_bundle.bundle), "--target", "jetson-orin-nano", "--json",
                                     "--in-process", *FAST])
    rows = json.loads(target.stdout)["rows"]
    assert {r["artifact"] for r in rows} == {"onnx", "onnx-int8"}      # the profile has no OpenVINO
    assert json.loads(target.stdout)["memory_budget_mb"] == 1024                # the profile's figure
    assert [r["within_memory_budget"] for r in rows] == [r["peak_rss_mb"] <= 1024 for r in rows]
    missing = CliRunner().invoke(rt, ["bench", str(digits_bundle.bundle), "--artifacts", "tensorrt-fp16"])
    assert missing.exit_code == ConfigError.exit_code and "no backbone artifact named tensorrt-fp16" in missing.output
    bad = CliRunner().invoke(rt, ["bench", str(digits_bundle.bundle), "--batch", "1,x"])
    assert bad.exit_code == 2 and "comma-separated integers" in bad.output          # click's usage error


def _row(artifact, p50, accuracy, batch=1, p99=None, backend="onnxruntime"):
    return {"artifact": artifact, "format": artifact, "precision": "fp32", "backend": backend, "threads": None,
            "batch": batch, "p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p99 or p50 * 1.2, "mean_ms": p50,
            "std_ms": 0.1, "min_ms": p50 * 0.9, "max_ms": p50 * 1.5, "runs": 100,
            "throughput_per_s": batch * 1000 / p50,
            "cold_start_s": 0.2, "load_s": 0.1, "peak_rss_mb": 100.0, "size_mb": 5.0, "accuracy": accuracy,
            "accuracy_source": "manifest", "p99_over_p50": (p99 or p50 * 1.2) / p50,
            "noisy": (p99 or p50 * 1.2) / p50 > 1.5, "backend_info": {}}


def _result(rows, cpu="CPU A"):
    return {"schema": "edgetl.bench/1", "bundle": "b", "created": "now", "input_size": 64, "target": None,
            "memory_budget_mb": None, "rows": rows,
            "machine": {"cpu_model": cpu, "machine": "x86_64", "cpu_count": 2, "cpu_flags": [], "memory_gb": 1,
                        "versions": {}},
            "settings": {"noise_threshold": 1.5, "warmup_runs": 10, "warmup_seconds": 1.0, "min_runs": 100,
                         "min_seconds": 3.0, "process_per_cell": True}}


def test_pareto_front():
    points = [(1.0, 0.90), (2.0, 0.95), (3.0, 0.94), (0.5, 0.80), (2.0, 0.90)]
    assert sorted(pareto_front(points)) == [0, 1, 3]       # (3.0, .94) and (2.0, .90) are dominated


def test_reports_flag_noise_and_draw(tmp_path):
    result = _result([_row("onnx", 2.0, 0.96), _row("onnx-int8", 1.5, 0.95, p99=4.0), _row("onnx", 5.0, 0.96, 8)])
    lines = table_lines(result)
    assert "onnx-int8" in lines[2] and any("p99/p50 above 1.5" in line and "onnx-int8" in line for line in lines)
    assert "> note:" in markdown(result)
    written = write_reports(result, tmp_path / "r")
    with Image.open(written["pareto.png"]) as png:
        assert png.getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ConfigError, match="already exists; choose another path, or overwrite it") as info:
        write_reports(result, tmp_path / "r", overwrite=False)
    assert info.value.remedy == "overwrite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]            # nothing half-written beside it


def test_compare_prints_ratios_of_shared_rows(tmp_path):
    a = _result([_row("onnx", 2.0, 0.96), _row("openvino", 3.0, 0.96)])
    b = _result([_row("onnx", 1.0, 0.97), _row("onnx-int8", 1.0, 0.95)], cpu="CPU B")
    rows = compare_results(a, b)
    assert len(rows) == 1 and rows[0]["p50_ratio"] == pytest.approx(0.5)
    assert rows[0]["accuracy_change"] == pytest.approx(0.01)
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    out = CliRunner().invoke(host, ["bench", "--compare", str(pa), str(pb)])
    assert out.exit_code == 0, out.output
    assert "0.50" in out.output and "different machines" in out.output
    pb.write_text(json.dumps({"rows": []}))
    refused = CliRunner().invoke(host, ["bench", "--compare", str(pa), str(pb)])
    assert refused.exit_code == ConfigError.exit_code and "edgetl.bench/1" in refused.output


def test_recorded_timings_make_the_runtime_run_the_fastest_artifact(digits_bundle, tmp_path):
    import shutil

    from edgetl.runtime import EdgeModel
    from edgetl.runtime.bundle.timings import TIMINGS_FOLDER, machine_key
    from edgetl.runtime.errors import BundleError

    bundle = tmp_path / "bundle"
    shutil.copytree(digits_bundle.bundle, bundle, ignore=shutil.ignore_patterns("timings"))
    with EdgeModel(bundle, measure=False) as model:
        assert "CPU order" in model.choice_reason
    recorded = CliRunner().invoke(rt, ["bench", str(bundle), "--record", "--in-process", "--json", *FAST])
    assert recorded.exit_code == 0, recorded.output
    rows = json.loads(recorded.stdout)["rows"]
    best = min(r["p50_ms"] for r in rows if r["batch"] == 1 and not r["backend"].endswith("-reference"))
    with EdgeModel(bundle) as model:
        chosen = next(r for r in rows if (r["artifact"], r["backend"]) == (model.artifact.name, model.backend.name))
        assert chosen["p50_ms"] <= 1.05 * best             # the fastest, or a near tie won by accuracy
        assert "measured on this machine" in model.choice_reason and "bench" in model.choice_reason
        assert model.measured is None                  # the benchmark's record counts: nothing measured again
    key, _ = machine_key()
    path = bundle / TIMINGS_FOLDER / f"{key}.json"
    data = json.loads(path.read_text())
    for row in data["rows"]:                     # pretend onnx was the fastest here
        row["p50_ms"] = 0.01 if row["artifact"] == "onnx" else 99.0
    path.write_text(json.dumps(data))
    with EdgeModel(bundle) as model:
        assert model.artifact.name == "onnx"
    with EdgeModel(bundle, backend="openvino") as model:          # a backend filter still applies
        assert model.backend.name == "openvino"
    path.rename(bundle / TIMINGS_FOLDER / "another-machine.json")  # another device's figures are ignored
    with EdgeModel(bundle, measure=False) as model:
        assert "CPU order" in model.choice_reason
    path.write_text("{not json")
    with pytest.raises(BundleError, match="record again"):
        EdgeModel(bundle)
