"""On-device learning end to end with real EfficientNet-Lite0 weights and real digits."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.runtime import EdgeModel
from edgetl.runtime.cli import main as rt
from edgetl.runtime.errors import DataError
from edgetl.runtime.inference.evaluate import evaluate_bundle


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


@pytest.fixture(scope="module")
def split_digits(tmp_path_factory, digits_folder):
    """A host bundle trained on digits 0-4 (ridge head), the 5-9 images for the device, and the host
    reference: a ridge head trained on all ten classes of the same training images."""
    from edgetl.data_export import export_image_folder
    from edgetl.exporters.bundle import export_run
    from edgetl.finetune import FinetuneConfig, finetune
    from edgetl.heads import HeadConfig

    root = tmp_path_factory.mktemp("split-digits")
    export_image_folder("builtin:digits", root / "d04", classes=["0", "1", "2", "3", "4"])
    export_image_folder("builtin:digits", root / "d59", classes=["5", "6", "7", "8", "9"])
    ridge = FinetuneConfig(head=HeadConfig(kind="ridge"))
    run04 = finetune(str(root / "d04"), root / "run04", ridge)
    bundle = export_run(run04.run_dir, root / "bundle04").bundle
    reference = finetune(str(digits_folder), root / "run-all", ridge)
    return bundle, root / "d59", reference


def test_host_five_classes_plus_device_five_classes_matches_host_ten(split_digits, digits_folder, tmp_path):
    host_bundle, d59, reference = split_digits
    bundle = tmp_path / "bundle"
    shutil.copytree(host_bundle, bundle)
    report = _json(CliRunner().invoke(rt, ["update", str(bundle), str(d59 / "train"), "--json"]))
    assert report["version"] == 1 and report["n_new"] == 627 and report["committed"]
    assert report["classes"] == [str(i) for i in range(10)] and report["new_classes"] == ["5", "6", "7", "8", "9"]
    assert report["accuracy"] >= 0.95 and report["n_holdout_new"] > 0
    with EdgeModel(bundle) as model:
        device = evaluate_bundle(model, str(digits_folder))
    host = reference.metrics["accuracy"]
    assert device["n"] == 539 and device["head_version"] == 1
    assert device["accuracy"] >= host - 0.01, (device["accuracy"], host)     # within 1 point of the host
    seven = sorted((digits_folder / "val" / "7").glob("*.png"))[:5]
    predicted = _json(CliRunner().invoke(rt, ["predict", str(bundle), *map(str, seven), "--json"]))
    assert [p["label"] for p in predicted["predictions"]].count("7") >= 4
    again = CliRunner().invoke(rt, ["update", str(bundle), str(d59 / "train")])
    assert again.exit_code == DataError.exit_code and "already in the store" in again.output
    history = _json(CliRunner().invoke(rt, ["history", str(bundle), "--json"]))
    assert [v["action"] for v in history["versions"]] == ["init", "update"] and history["current"] == 1
    rolled = CliRunner().invoke(rt, ["rollback", str(bundle)])
    assert rolled.exit_code == 0 and "rollback to version 0" in rolled.output
    with EdgeModel(bundle) as model:
        assert model.labels == ["0", "1", "2", "3", "4"] and model.head_version == 2


def test_every_method_updates_and_the_guard_stops_a_weaker_head(split_digits, tmp_path):
    host_bundle, d59, _ = split_digits
    results = {}
    for method in ("sgd", "ncm"):
        bundle = tmp_path / method
        shutil.copytree(host_bundle, bundle)
        result = CliRunner().invoke(rt, ["update", str(bundle), str(d59 / "val"), "--method", method, "--json"])
        if result.exit_code == 6:   # refused: the earlier classes would lose more than 2 points
            assert "--force" in result.output
            result = CliRunner().invoke(rt, ["update", str(bundle), str(d59 / "val"), "--method", method,
                                             "--json", "--force"])
        results[method] = _json(result)
    assert results["sgd"]["accuracy"] >= 0.9
    assert results["ncm"]["accuracy"] >= 0.7          # the cheapest method, and the weakest on these features


def _shifted(source, out, transform, labelled=True):
    for path in sorted(source.rglob("*.png")):
        target = out / (path.parent.name if labelled else "unlabelled") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        Image.fromarray(np.clip(transform(pixels), 0, 255).astype(np.uint8)).save(target)
    return out


def test_adapt_on_a_shifted_domain_reports_the_change(digits_bundle, digits_folder, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(digits_bundle.bundle, bundle)
    dim = lambda p: p * 0.45 + 40.0   # noqa: E731 - a washed-out, low-contrast camera
    unlabelled = _shifted(digits_folder / "train", tmp_path / "target", dim, labelled=False)
    check = _shifted(digits_folder / "val", tmp_path / "check", dim)
    report = _json(CliRunner().invoke(rt, ["adapt", str(bundle), str(unlabelled), "--check", str(check), "--json",
                                           "--force"]))
    assert report["committed"] and report["n_unlabeled"] == 1258 and report["check_n"] == 539
    assert report["mean_shift"] > 0.01
    assert report["accuracy_after"] > report["accuracy_before"]
    with EdgeModel(bundle) as model:
        assert model.adapter is not None
        assert evaluate_bundle(model, str(check))["accuracy"] == pytest.approx(report["accuracy_after"])


def test_cluster_groups_unlabelled_images_for_labelling(digits_bundle, digits_folder, tmp_path):
    pool = tmp_path / "pool"
    for digit in ("0", "1", "6"):
        shutil.copytree(digits_folder / "val" / digit, pool / "unknown" / digit, dirs_exist_ok=True)
    out = tmp_path / "groups"
    summary = _json(CliRunner().invoke(rt, ["cluster", str(digits_bundle.bundle), str(pool), "--k", "3", "--out",
                                            str(out), "--json"]))
    assert summary["n"] == sum(g["size"] for g in summary["groups"]) == len(list(pool.rglob("*.png")))
    with open(out / "groups.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary["n"] and all((out / r["copy"]).is_file() for r in rows)
    truth = {r["copy"]: r["source"].split("/")[-2] for r in rows}
    purity = sum(max([truth[c] for c in truth if c.startswith(g["group"] + "/")].count(d) for d in ("0", "1", "6"))
                 for g in summary["groups"]) / summary["n"]
    assert purity >= 0.9, purity
    assert sorted(g["head_suggests"] for g in summary["groups"]) == ["0", "1", "6"]
