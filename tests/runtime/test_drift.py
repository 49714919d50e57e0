"""Drift (issue 28, item 2): the score on synthetic features, the monitor's fixed memory, ``/metrics`` in ``serve``
and ``edgetl-rt drift`` on the tiny bundle.  Torch-free."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import infer_json, make_folder_dataset, request, serving
from PIL import Image

from edgetl.runtime.bundle.heads import RidgeStatistics
from edgetl.runtime.cli import main
from edgetl.runtime.errors import ConfigError, ExitCode
from edgetl.runtime.inference.drift import DriftDetector, DriftMonitor, DriftReference, score_windows
from edgetl.runtime.serving.rebuild import LatestRebuild

DIM, CLASSES = 48, 4


def _world(seed: int = 0):
    """Seeded classes in DIM dimensions: well apart, each with its own spread."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2.0, (CLASSES, DIM))
    mixing = np.eye(DIM) + 0.3 * rng.normal(size=(DIM, DIM)) / np.sqrt(DIM)

    def draw(n: int, shift: float = 0.0, labels=None):
        y = rng.integers(0, CLASSES, n) if labels is None else np.full(n, labels)
        return (centres[y] + rng.normal(size=(n, DIM)) @ mixing + shift).astype(np.float32), y
    return draw


@pytest.fixture(scope="module")
def detector():
    draw = _world()
    x, y = draw(600)
    statistics = RidgeStatistics.empty(DIM, CLASSES)
    statistics.add(x, y)
    held, _ = draw(300)
    return DriftDetector(DriftReference.from_statistics(statistics), held, null_windows=5000, seed=0), draw


def test_clean_windows_stay_under_the_alarm_level_and_a_seeded_shift_raises_it(detector):
    detector, draw = detector
    clean, _ = draw(64 * 100)
    shifted, _ = draw(64 * 20, shift=0.25)        # a quarter of the noise's spread, in every feature
    labels = [str(c) for c in range(CLASSES)]
    calm = score_windows(detector, clean, labels)
    moved = score_windows(detector, shifted, labels)
    assert len(calm) == 100 and all(w.stop - w.start == 64 for w in calm)
    assert sum(w.alarm for w in calm) <= 2                       # 1 per 1,000 stated; 100 windows
    assert np.median([w.score for w in calm]) < 1.5              # standardised: near the null's centre
    assert all(w.alarm for w in moved)
    assert min(w.score for w in moved) > 3 * detector.level(64).threshold


def test_windows_of_one_class_are_not_taken_for_drift(detector):
    """A window of one class moves the residuals' sum by that class mean's estimation error; the class mix is
    taken off (without it, about one such window in ten alarms here)."""
    detector, draw = detector
    labels = [str(c) for c in range(CLASSES)]
    alarms = [w.alarm for c in range(CLASSES) for w in score_windows(detector, draw(64 * 12, labels=c)[0], labels)]
    assert len(alarms) == 48 and sum(alarms) <= 1


def test_the_alarm_level_is_seeded_and_follows_the_stated_rate(detector):
    detector, _ = detector
    rows = _world(1)(300)[0]
    strict = DriftDetector(detector.reference, rows, false_alarms=1, null_windows=5000, seed=3)
    loose = DriftDetector(detector.reference, rows, false_alarms=50, null_windows=5000, seed=3)
    assert strict.level(16).threshold > loose.level(16).threshold
    assert strict.level(16).threshold == DriftDetector(detector.reference, rows, null_windows=5000,
                                                       seed=3).level(16).threshold
    with pytest.raises(ConfigError, match="null windows"):
        DriftDetector(detector.reference, rows, false_alarms=0.1, null_windows=5000)


def test_the_monitor_holds_fixed_memory_and_scores_tumbling_windows(detector):
    detector, draw = detector
    monitor = DriftMonitor(detector, [str(c) for c in range(CLASSES)], window=32, unknown_threshold=0.5)
    x, y = draw(10)
    monitor.observe(x, y, unknown_scores=np.zeros(10))
    size = monitor.state_bytes()
    completed = []
    for _ in range(50):
        x, y = draw(100)
        completed += monitor.observe(x, y, unknown_scores=(np.arange(100) % 4 == 0).astype(float))
    assert monitor.state_bytes() == size                       # 5,010 inputs later, the same arrays
    snapshot = monitor.snapshot()
    assert snapshot.inputs == 5010 and snapshot.windows == 5010 // 32 == len(completed)
    assert snapshot.alarms <= 2 and abs(snapshot.spread_ratio - 1) < 0.2 and snapshot.feature_shift < 0.2
    assert abs(sum(snapshot.class_shares.values()) - 1) < 1e-9
    assert snapshot.unknown_rate == pytest.approx(0.25, abs=0.1)
    json.dumps(snapshot.to_json())
    shifted, y = draw(32 * 3, shift=0.5)
    assert all(w.alarm for w in monitor.observe(shifted, y)) and monitor.alarm
    assert detector.score_features(shifted)[1] and not detector.score_features(draw(64)[0])[1]


def test_a_reference_without_training_statistics_is_refused():
    from edgetl.runtime.errors import BundleError

    with pytest.raises(BundleError, match="training statistics"):
        DriftReference.from_statistics(RidgeStatistics.empty(DIM, CLASSES))


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, "PNG")
    return buffer.getvalue()


def test_serve_reports_drift_gauges_and_the_metadata_drift_object(tiny_bundle):
    with serving(tiny_bundle, drift_window=4) as (server, address, events):
        assert server.service.drift_ready.wait(30) and server.service.drift is not None
        heard = []
        server.service.drift_listeners.append(lambda monitor, window: heard.append(window.index))
        status, _, _ = request(address, "POST", "/v2/models/digits/infer", infer_json([_png((200, 30, 30))] * 10))
        assert status == 200
        metrics = request(address, "GET", "/metrics")[1].decode()
        values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
                  if line.startswith("edgetl_drift")}
        assert values["edgetl_drift_windows_total"] == 2 and values["edgetl_drift_window_inputs"] == 4
        assert values["edgetl_drift_threshold"] > 0 and values["edgetl_drift_alarm"] in (0, 1)
        assert {k for k in values if k.startswith("edgetl_drift_class_share")} == \
            {f'edgetl_drift_class_share{{label="{c}"}}' for c in ("blue", "green", "red")}
        drift = json.loads(request(address, "GET", "/v2/models/digits")[1])["parameters"]["drift"]
        assert drift["inputs"] == 10 and drift["windows"] == 2 and drift["window"] == 4 and heard == [0, 1]
    assert any(e.get("event") == "drift_monitor" for e in events)


def test_serve_without_a_drift_monitor(tiny_bundle):
    with serving(tiny_bundle, drift_window=0) as (server, address, _):
        assert server.service.drift_ready.wait(30) and server.service.drift is None
        assert "drift" not in json.loads(request(address, "GET", "/v2/models/digits")[1])["parameters"]


def test_drift_command_json_table_and_plot(tiny_bundle, tmp_path):
    data = make_folder_dataset(tmp_path / "data", classes=("blue", "red"), per_class=5)
    plot = tmp_path / "drift.png"
    runner = CliRunner()
    result = runner.invoke(main, ["drift", str(tiny_bundle), str(data), "--window", "4", "--json", "--plot",
                                  str(plot), "--no-measure"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"bundle", "data", "split", "n", "window", "method", "threshold", "false_alarms_per_1000", "alarms",
            "windows", "calibration", "head_version", "skipped"} <= set(report)
    assert report["n"] == 10 and [(w["start"], w["stop"]) for w in report["windows"]] == [(0, 4), (4, 8), (8, 10)]
    assert report["alarms"] == sum(w["alarm"] for w in report["windows"])
    assert {"index", "score", "alarm", "distance", "shift", "class_shares"} <= set(report["windows"][0])
    assert report["calibration"]["rows"] == 6 and report["calibration"]["seed"] == 0
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size == (900, 500)
    flat = tmp_path / "flat"                                      # unlabelled: images without class folders
    flat.mkdir()
    for i, path in enumerate(sorted(data.rglob("*.png"))):
        shutil.copy(path, flat / f"{i:02d}.png")
    table = runner.invoke(main, ["drift", str(tiny_bundle), str(flat), "--window", "4", "--no-measure"])
    assert table.exit_code == 0 and "alarm level" in table.stdout and "window 2 [8, 10)" in table.stdout


def test_drift_command_refuses_a_missing_plot_folder_before_running(tiny_bundle, tmp_path):
    data = make_folder_dataset(tmp_path / "data", classes=("blue", "red"), per_class=2)
    result = CliRunner().invoke(main, ["drift", str(tiny_bundle), str(data), "--plot",
                                       str(tmp_path / "missing" / "x.png")])
    assert result.exit_code == ExitCode.CONFIG and "missing" in result.output


def test_drift_reads_the_store_after_learning(tiny_bundle, tmp_path):
    """Once the device has learned, the reference is the store's statistics (more rows, same classes)."""
    from edgetl.runtime.bundle.folder import Bundle
    from edgetl.runtime.inference.drift import detector_for

    before = detector_for(Bundle(tiny_bundle)).reference.count
    data = make_folder_dataset(tmp_path / "new", classes=("blue", "red"), per_class=3)
    assert CliRunner().invoke(main, ["update", str(tiny_bundle), str(data), "--no-measure", "--force"]).exit_code == 0
    after = detector_for(Bundle(tiny_bundle))
    assert before < after.reference.count <= before + 6      # some new rows are held out
    shutil.rmtree(Path(tiny_bundle) / "store")
    assert detector_for(Bundle(tiny_bundle)).reference.count == before


def test_a_rarer_alarm_rate_than_the_null_windows_can_hold_is_refused_by_name():
    """0.1 per 1,000 needs 200,000 clean windows; a rarer rate would be an unbounded background job in serve."""
    from edgetl.runtime.errors import ConfigError
    from edgetl.runtime.serving.service import ServeSettings

    with pytest.raises(ConfigError, match=r"\[0\.1, 1000\)"):
        ServeSettings(drift_false_alarms=0.01).check()
    ServeSettings(drift_false_alarms=0.1).check()


def test_latest_rebuild_runs_one_build_at_a_time_and_collapses_waiting_requests_into_the_newest():
    started, gate, built = threading.Event(), threading.Event(), []

    def work(item: int) -> None:
        built.append(item)
        started.set()
        assert gate.wait(30)

    rebuild = LatestRebuild(work, "test-rebuild")
    rebuild.request(1)
    assert started.wait(30)
    for item in (2, 3, 4):                  # while 1 builds
        rebuild.request(item)
    gate.set()
    assert rebuild.wait(30) and built == [1, 4]
    rebuild.request(5)                       # idle again: a new request starts a new build
    assert rebuild.wait(30) and built == [1, 4, 5]


def test_serve_builds_one_drift_monitor_at_a_time_for_the_newest_head_version(tiny_bundle, monkeypatch):
    """Three head versions picked up while the first monitor builds: one more build, for the newest of them, whose
    monitor is the one that serves."""
    from edgetl.runtime.serving import service as service_module

    real, started, gate, calls = service_module.detector_for, threading.Event(), threading.Event(), []

    def gated(bundle, **options):
        calls.append(options)
        started.set()
        assert gate.wait(30)
        return real(bundle, **options)

    monkeypatch.setattr(service_module, "detector_for", gated)
    service = service_module.InferenceService(tiny_bundle, service_module.ServeSettings(artifact="onnx", measure=False))
    try:
        assert started.wait(30)
        state = service.live.state
        orders = [state.labels[k:] + state.labels[:k] for k in (1, 2, 0)]     # three "versions", told by labels
        for labels in orders:
            service._head_changed(dataclasses.replace(state, labels=labels))
        gate.set()
        assert service._drift_rebuild.wait(30)
        assert len(calls) == 2 and service.drift.labels == orders[-1]
    finally:
        service.close()
