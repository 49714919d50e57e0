"""The command lines: outputs users script against, and clean failures."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli import main as host
from edgetl.runtime.latency import latency_stats
from edgetl.runtime.cli import main as rt

from conftest import make_folder_dataset

BIN = Path(sys.executable).parent


def test_console_scripts_are_installed():
    for name in ("edgetl", "edgetl-rt"):
        script = BIN / name if (BIN / name).exists() else shutil.which(name)
        assert script, f"console script {name} is not installed"
        out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "Usage" in out.stdout


def test_evaluate_json_and_accuracy_gate(digits_bundle, digits_folder):
    runner = CliRunner()
    out = runner.invoke(rt, ["evaluate", str(digits_bundle.bundle), str(digits_folder), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert {"accuracy", "n", "per_class", "artifact"} <= set(report)
    gated = runner.invoke(rt, ["evaluate", str(digits_bundle.bundle), str(digits_folder), "--min-accuracy", "0.999"])
    assert gated.exit_code == 6


def test_predict_json_top_k(digits_bundle, digits_folder):
    images = sorted((digits_folder / "val" / "2").glob("*.png"))[:3]
    out = CliRunner().invoke(rt, ["predict", str(digits_bundle.bundle), *map(str, images), "--top-k", "3", "--json"])
    assert out.exit_code == 0, out.output
    predictions = json.loads(out.stdout)["predictions"]
    assert len(predictions) == 3 and all(len(p["top_k"]) == 3 for p in predictions)
    assert sum(p["label"] == "2" for p in predictions) >= 2


def test_latency_statistics():
    stats = latency_stats([0.001] * 98 + [0.010, 0.020], batch=4)
    assert stats["p50_ms"] == pytest.approx(1.0) and stats["max_ms"] == pytest.approx(20.0)
    assert stats["p99_ms"] > stats["p90_ms"] and stats["throughput_per_s"] == pytest.approx(4000 / stats["mean_ms"])


def test_tampered_bundle_exits_non_zero_with_a_message(digits_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(digits_bundle.bundle, copy)
    with open(copy / "backbone.onnx", "ab") as handle:
        handle.write(b"x")
    out = CliRunner().invoke(rt, ["predict", str(copy), "whatever.png"])
    assert out.exit_code == 3 and "sha256" in out.output and "Traceback" not in out.output


def test_finetune_bad_input_exits_non_zero_and_writes_nothing(tmp_path):
    root = make_folder_dataset(tmp_path / "d")
    (root / "b" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = CliRunner().invoke(host, ["finetune", str(root), "--out", str(tmp_path / "run"), "--image-size", "32"])
    assert out.exit_code == 2 and "0.png" in out.output
    assert not (tmp_path / "run").exists()
    single = make_folder_dataset(tmp_path / "single", classes=("only",))
    out = CliRunner().invoke(host, ["finetune", str(single), "--out", str(tmp_path / "run2")])
    assert out.exit_code == 2 and "single class" in out.output


def test_data_export_and_lists(tmp_path):
    runner = CliRunner()
    out = runner.invoke(host, ["data", "export", "builtin:digits", str(tmp_path / "d"), "--classes", "3,5"])
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in (tmp_path / "d" / "train").iterdir()) == ["3", "5"]
    assert "builtin:digits" in runner.invoke(host, ["data", "list"]).output
    assert "efficientnet_lite0" in runner.invoke(host, ["backbones"]).output
    bad = runner.invoke(host, ["data", "export", "builtin:digits", str(tmp_path / "e"), "--classes", "x"])
    assert bad.exit_code == 2 and "no classes x" in bad.output


def test_host_cli_finetune_and_export(tmp_path):
    runner = CliRunner()
    data = tmp_path / "d"
    runner.invoke(host, ["data", "export", "builtin:digits", str(data), "--classes", "0,1"])
    out = runner.invoke(host, ["finetune", str(data), "--out", str(tmp_path / "run"), "--epochs", "3", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["accuracy"] > 0.9
    out = runner.invoke(host, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "bundle")])
    assert out.exit_code == 0, out.output
    assert "onnx" in out.stdout and (tmp_path / "bundle" / "manifest.json").is_file()
    again = runner.invoke(host, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "bundle")])
    assert again.exit_code != 0 and "--overwrite" in again.output
