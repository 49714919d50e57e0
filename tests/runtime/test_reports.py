"""The reports of the learning transactions are typed, and their JSON keys are the ones scripts read since 0.6, in
the same order, on every path: ``edgetl-rt update`` / ``adapt`` (with and without ``--check``) / ``tune``, the
feature-level API, and ``serve``'s update route (which adds the head version that answers)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_folder_dataset, request, serving

from edgetl.runtime.cli import main as rt
from edgetl.runtime.learning import learn_features
from edgetl.runtime.learning.reports import UpdateReport

UPDATE_KEYS = ["bundle", "parent", "method", "artifact", "n_new", "n_train_new", "n_holdout_new", "classes",
               "new_classes", "holdout_n", "accuracy", "accuracy_before", "accuracy_after_on_earlier_holdout",
               "accuracy_after_on_earlier_holdout_all_classes", "alpha", "alpha_searched", "alpha_due",
               "solve_residual", "timings", "evicted", "version", "committed", "n_train", "n_holdout"]
#: what an update of images (not features) adds: the duplicates and unreadable images it left out
FROM_INPUTS = ["n_duplicate", "n_skipped"]
UPDATE_TIMINGS = ["head_s", "head_state_s", "alpha_s", "commit_s"]


def _json(args: list[str]) -> dict:
    result = CliRunner().invoke(rt, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _new_images(root, classes=("red", "green", "blue", "white")):
    """Images of the tiny bundle's classes it was not exported with (10-13), and a new class."""
    make_folder_dataset(root, classes=classes, per_class=14, size=(36, 36))
    for folder in root.iterdir():
        for path in folder.glob("*.png"):
            if int(path.stem) < 10 and folder.name != "white":
                path.unlink()
    return root


def test_update_reports_keep_their_keys_on_every_path(tiny_bundle, tmp_path):
    command = _json(["update", str(tiny_bundle), str(_new_images(tmp_path / "new")), "--no-measure"])
    assert list(command) == UPDATE_KEYS + FROM_INPUTS
    assert list(command["timings"]) == UPDATE_TIMINGS + ["backbone_s"]
    rng = np.random.default_rng(0)
    report = learn_features(tiny_bundle, rng.normal(0, 1, (6, 16)).astype(np.float32), ["red", "blue"] * 3,
                            [f"sample-{i}" for i in range(6)])
    assert isinstance(report, UpdateReport) and report.n_duplicate is None
    assert list(report.to_json()) == UPDATE_KEYS and list(report.to_json()["timings"]) == UPDATE_TIMINGS
    assert json.loads(json.dumps(dict(report))) == json.loads(json.dumps(report.to_json()))    # dict() is JSON
    assert report["timings"]["head_s"] == report.timings.head_s and report["version"] == report.version


def test_the_update_route_adds_the_head_version(tiny_bundle, tmp_path):
    images = sorted(_new_images(tmp_path / "new", ("white",)).rglob("*.png"))[:3]
    body = json.dumps({"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [3], "parameters": {"content_type": "base64"},
         "data": [base64.b64encode(p.read_bytes()).decode() for p in images]},
        {"name": "label", "datatype": "BYTES", "shape": [3], "data": ["white"] * 3}]}).encode()
    with serving(tiny_bundle, name="tiny", measure=False) as (_, address, _events):
        status, answer, _ = request(address, "POST", "/v2/models/tiny/update", body)
    assert status == 200, answer
    report = json.loads(answer)
    assert list(report) == UPDATE_KEYS + FROM_INPUTS + ["head_version"] and report["head_version"] == report["version"]


def test_adapt_and_tune_reports_keep_their_keys(tiny_bundle, tmp_path):
    target = make_folder_dataset(tmp_path / "target", classes=("red", "green", "blue"), per_class=6, size=(30, 40))
    guard = ["method", "guard", "guard_reason", "drift_before", "alarm", "drift_after", "agreement", "candidates",
             "adapt_ms"]       # added with the label-free guard; the keys before them stay, in their order
    plain = _json(["adapt", str(tiny_bundle), str(target), "--no-measure"])
    assert list(plain) == ["bundle", "n_unlabeled", "parent", "mean_shift", "version", "committed", *guard]
    checked = _json(["adapt", str(tiny_bundle), str(target), "--check", str(target), "--force", "--no-measure"])
    assert list(checked) == ["bundle", "n_unlabeled", "parent", "mean_shift", "check", "check_n", "accuracy_before",
                             "accuracy_after", "version", "committed", *guard]
    assert checked["committed"] and checked["guard"] in ("committed", "forced")
    tuned = _json(["tune", str(tiny_bundle)])
    assert list(tuned) == ["bundle", "version", "parent", "alpha_before", "alpha", "holdout_n", "accuracy", "timings"]
    assert list(tuned["timings"]) == ["alpha_s"]


def test_feature_keys_are_any_unique_id_of_up_to_64_characters(tiny_bundle):
    """A caller's own ids (not hex digests) are keys too; an over-long, empty or repeated key is refused by name
    before the store changes."""
    from edgetl.runtime.bundle.store import FeatureStore
    from edgetl.runtime.errors import ConfigError

    features = np.random.default_rng(1).normal(0, 1, (2, 16)).astype(np.float32)
    for keys, message in ((["a" * 65, "b"], "1 to 64"), (["", "b"], "1 to 64"), (["same", "same"], "unique")):
        with pytest.raises(ConfigError, match=message):
            learn_features(tiny_bundle, features, ["red", "blue"], keys)
    assert not FeatureStore(tiny_bundle).exists
    assert learn_features(tiny_bundle, features, ["red", "blue"], ["camera-7/frame-001", "b" * 64]).committed
