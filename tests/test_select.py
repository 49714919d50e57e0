"""Backbone selection: the scores' maths, the recommendation, the latency plan per machine, and one real run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.selection.latency import latency_plan
from edgetl.selection.select import pareto_flags, recommend
from edgetl.selection.transferability import (
    _spectrum,
    class_evidence,
    kendall_tau,
    logme,
    ridge_probe,
    stratified_folds,
)


def _separable(n=80, d=12, classes=3, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(size=(classes, d)) * 3 + 5     # offset from 0, like pooled activations
    return centres[labels] + rng.normal(size=(n, d)) * noise, labels


def _direct_evidence(x, y, alpha, beta):
    cov = np.eye(len(y)) / beta + x @ x.T / alpha
    return -0.5 * (len(y) * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1] + y @ np.linalg.solve(cov, y))


@pytest.mark.parametrize("n,d", [(60, 20), (15, 40)])   # more samples than features, and fewer
def test_logme_is_the_maximised_evidence(n, d):
    """The evidence equals log N(y | 0, I/beta + XX'/alpha) computed directly, at a maximum over alpha and beta."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, d))
    y = (x @ rng.normal(size=d) + rng.normal(size=n) > 0).astype(np.float64)
    sigma, u = _spectrum(x)
    evidence, alpha, beta = class_evidence(sigma, u, y, d)
    assert evidence == pytest.approx(_direct_evidence(x, y, alpha, beta), rel=1e-9)
    for a, b in ((alpha * 1.2, beta), (alpha / 1.2, beta), (alpha, beta * 1.2), (alpha, beta / 1.2)):
        assert _direct_evidence(x, y, a, b) < evidence + 1e-6   # a maximum (flat where alpha runs to infinity)


def test_scores_rank_informative_features_above_noise():
    x, labels = _separable()
    noise = np.random.default_rng(2).normal(size=x.shape)
    assert logme(x, labels) > logme(noise, labels)
    good, bad = ridge_probe(x, labels), ridge_probe(noise, labels)
    assert good.accuracy > 0.9 > 0.6 > bad.accuracy and good.folds == 5


def test_probe_folds_are_exact_refits():
    """Each fold's prediction from the full fit's hat matrix equals a ridge refit without that fold (the probe
    has no intercept: pooled features are non-negative, their mean direction carries the offset)."""
    x, labels = _separable(n=45, d=30, noise=8.0)
    probe = ridge_probe(x, labels, k=5, seed=3)
    classes = np.unique(labels)
    onehot = (labels[:, None] == classes).astype(np.float64)
    accuracies = []
    for fold in stratified_folds(labels, 5, 3):
        keep = np.setdiff1d(np.arange(len(x)), fold)
        weight = np.linalg.solve(x[keep].T @ x[keep] + probe.alpha * np.eye(x.shape[1]), x[keep].T @ onehot[keep])
        predicted = classes[np.argmax(x[fold] @ weight, axis=1)]
        accuracies.append(np.mean(predicted == labels[fold]))
    assert probe.accuracy == pytest.approx(np.mean(accuracies), abs=1e-12)
    assert probe.std == pytest.approx(np.std(accuracies), abs=1e-12)
    assert 0 < probe.std   # noisy enough that folds differ: the spread is real


def test_folds_cover_every_sample_once_and_keep_classes_balanced():
    labels = np.array([0] * 10 + [1] * 7 + [2] * 3)
    folds = stratified_folds(labels, 3, 0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(20))
    for fold in folds:
        assert set(labels[fold]) == {0, 1, 2}


def test_kendall_tau():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def _row(name, accuracy, p50, evidence=0.0, std=0.01):
    return {"backbone": name, "probe_accuracy": accuracy, "probe_std": std, "p50_ms": p50, "logme": evidence}


def test_recommendation_is_the_best_score_within_the_budget():
    rows = [_row("small", 0.90, 2.0), _row("mid", 0.93, 4.0), _row("big", 0.95, 8.0), _row("slow", 0.92, 9.0)]
    assert recommend([dict(r) for r in rows], None)["backbone"] == "big"
    within = recommend(rows, 5.0)
    assert within["backbone"] == "mid" and "over budget: big, slow" in within["reason"]
    assert [r["within_budget"] for r in rows] == [True, True, False, False]
    assert pareto_flags(rows) == [True, True, True, False]    # slow is beaten by big on both axes
    none = recommend([dict(r) for r in rows], 1.0)
    assert none["backbone"] == "small" and none["within_budget"] is False and "raise the budget" in none["reason"]
    tie = recommend([_row("a", 0.9, 1.0, evidence=-1.0), _row("b", 0.9, 2.0, evidence=-0.5)], None)
    assert tie["backbone"] == "b"     # LogME breaks an exact tie


def _facts(flags, arch="x86_64", openvino_devices=("CPU",)):
    """A described machine, as the doctor would report it."""
    return {"cpu": {"arch": arch, "flags": list(flags)}, "jetson": None, "cuda": {"devices": [], "reason": "none"},
            "backends": {"onnxruntime": {}, "openvino": {"devices": {d: d for d in openvino_devices}}}}


AVX2 = ("avx2", "fma")
VNNI = AVX2 + ("avx512f", "avx512_vnni")


def test_latency_plan_follows_the_target_and_says_where_it_was_measured(monkeypatch):
    from edgetl.devices import get_profile

    monkeypatch.setattr("edgetl.selection.latency.installed", lambda names: list(names))   # both engines here
    plan = latency_plan(None)
    assert (plan.format, plan.backend, plan.where) == ("onnx", "onnxruntime", "host")
    # an AVX2 machine runs the AVX2 profile's first choice: that is the target's own figure
    avx2 = latency_plan(get_profile("x86-avx2"), _facts(AVX2))
    assert (avx2.format, avx2.backend, avx2.precision, avx2.where) == ("onnx", "onnxruntime", "fp32", "target")
    # the VNNI profile's 8-bit int8 cannot run as stated on an AVX2 machine: its 7-bit variant stands in
    vnni_profile = get_profile("x86-avx512-vnni")
    on_vnni = latency_plan(vnni_profile, _facts(VNNI))
    on_avx2 = latency_plan(vnni_profile, _facts(AVX2))
    assert (on_vnni.where, on_vnni.format) == ("target", "openvino-int8-vnni")
    assert (on_avx2.where, on_avx2.format) == ("host", "openvino-int8") and "does not fit" in on_avx2.note
    # an Intel iGPU profile: OpenVINO fp16 weights on the GPU device where there is one, else a CPU stand-in
    igpu = get_profile("intel-igpu")
    with_gpu = latency_plan(igpu, _facts(AVX2, openvino_devices=("CPU", "GPU")))
    assert (with_gpu.where, with_gpu.device, with_gpu.to_dict()["options"]) == ("target", "GPU", {"fp16": True})
    without = latency_plan(igpu, _facts(AVX2))
    assert (without.where, without.device) == ("host", None)
    # a Jetson's TensorRT engine is built on the Jetson: ONNX Runtime here stands in
    jetson = latency_plan(get_profile("jetson-orin-nano"), _facts(AVX2))
    assert jetson.where == "host" and jetson.backend != "tensorrt" and "prefers" in jetson.note


def test_backbones_option_adds_external_names_to_the_offline_ones():
    from edgetl.backbones import OFFLINE_BACKBONES
    from edgetl.selection import parse_backbones

    assert parse_backbones(None) == OFFLINE_BACKBONES
    assert parse_backbones("timm:resnet18") == (*OFFLINE_BACKBONES, "timm:resnet18")
    assert parse_backbones("efficientnet_lite1,timm:resnet18") == ("efficientnet_lite1", "timm:resnet18")
    assert parse_backbones("offline,efficientnet_lite0") == OFFLINE_BACKBONES


def test_model_cost_counts_the_feature_extractor():
    from edgetl.backbones import create_backbone
    from edgetl.selection.cost import model_cost

    lite0 = create_backbone("efficientnet_lite0")
    cost = model_cost(lite0, 224)
    assert cost.params_m == pytest.approx(3.37, abs=0.01)        # 4.65 M minus the 1.28 M ImageNet classifier
    assert cost.gflops == pytest.approx(0.77, abs=0.01)          # the published 0.41 G multiply-adds, twice
    assert cost.gflops / 5 < model_cost(lite0, 112).gflops < cost.gflops / 3   # about a quarter (SAME padding)


def test_derived_boundaries_equal_a_direct_pass(tmp_path):
    """A shallower freeze boundary computed from cached deeper activations is what the backbone computes."""
    from edgetl.backbones import create_backbone
    from edgetl.extract import resolve_device
    from edgetl.selection.freeze import _run_stages

    lite0 = create_backbone("efficientnet_lite0")
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    stages = lite0.stages
    with torch.inference_mode():
        deep = lite0.split(2)[0](x).numpy()
        direct = {depth: lite0.split(depth)[0](x).numpy() for depth in (0, 1)}
    valid = np.array([True, True, False, True])       # a skipped image stays a zero row
    for depth in (0, 1):
        derived = _run_stages(stages[lite0.cut(2):lite0.cut(depth)], deep, valid,
                              resolve_device("cpu"))
        np.testing.assert_allclose(derived[valid], direct[depth][valid], atol=1e-4)
        assert not derived[2].any()


def test_bad_options_are_one_line_errors_before_any_work():
    runner = CliRunner()
    for args, option in ((["--budget-ms", "-1"], "--budget-ms"), (["--train-last", "a,b"], "--train-last"),
                         (["--folds", "1"], "--folds")):
        out = runner.invoke(main, ["select", "builtin:digits", *args])
        assert out.exit_code == 9 and option in out.output and "Traceback" not in out.output, out.output
    out = runner.invoke(main, ["select", "builtin:digits", "--backbones", "resnet9000"])
    assert out.exit_code == 9 and "efficientnet_lite2" in out.output
    out = runner.invoke(main, ["finetune", "builtin:digits", "--out", "x", "--budget-ms", "3"])
    assert out.exit_code == 9 and "--backbone auto" in out.output
    out = runner.invoke(main, ["select", "builtin:digits", "--train-last", "0,30"])
    assert out.exit_code == 9 and "out of range" in out.output and "backbone pass" not in out.output


def test_existing_outputs_are_refused_before_measuring(tmp_path):
    runner = CliRunner()
    taken = tmp_path / "taken"
    (taken / "keep.txt").parent.mkdir()
    (taken / "keep.txt").write_text("a user's file")
    for args in (["select", "builtin:digits", "--out", str(taken)],
                 ["finetune", "builtin:digits", "--backbone", "auto", "--out", str(taken)]):
        out = runner.invoke(main, args)
        assert out.exit_code == 9 and "--overwrite" in out.output and "features at" not in out.output, out.output
    assert (taken / "keep.txt").read_text() == "a user's file"


def test_auto_backbone_is_resolved_by_the_library(monkeypatch):
    """finetune(backbone="auto") runs select with the run's own split, cache and pass settings, takes the
    recommended backbone and (unless one is named) the compared freeze point, and records the table; the CLI only
    passes the options on (the real run: the test below)."""
    from edgetl.finetune import FinetuneConfig
    from edgetl.runtime.errors import ConfigError
    from edgetl.selection import select as select_module
    from edgetl.selection.auto import AutoBackbone, resolve_auto_backbone

    seen = {}

    def fake_select(data, config, progress=None, log=None, **kwargs):
        seen.update(data=data, config=config)
        return {"recommendation": {"backbone": "efficientnet_lite1", "reason": "best probe"}, "target": None,
                "budget_ms": config.budget_ms, "latency": {}, "scored_on": "training split", "created": "now",
                "candidates": [], "freeze": {"backbone": "efficientnet_lite1", "recommended": 2, "reason": "gain"}}

    monkeypatch.setattr(select_module, "select_backbones", fake_select)
    config = FinetuneConfig(backbone="auto", auto=AutoBackbone(("efficientnet_lite0", "efficientnet_lite1"),
                                                               budget_ms=5.0), seed=3, val_fraction=0.3,
                            cache_dir="c", engine="torch", skip_bad=True)
    lines = []
    resolved = resolve_auto_backbone("d/", config, log=lines.append)
    chosen = seen["config"]
    assert seen["data"] == "d/" and chosen.backbones == ("efficientnet_lite0", "efficientnet_lite1")
    assert (chosen.budget_ms, chosen.seed, chosen.val_fraction, chosen.cache_dir, chosen.engine, chosen.skip_bad) == \
        (5.0, 3, 0.3, "c", "torch", True)
    assert (resolved.backbone, resolved.train_last, resolved.auto) == ("efficientnet_lite1", 2, None)
    assert resolved.selection["recommendation"]["backbone"] == "efficientnet_lite1"
    assert lines == ["--backbone auto: efficientnet_lite1 (best probe)", "--backbone auto: --train-last 2 (gain)"]
    named = resolve_auto_backbone("d/", FinetuneConfig(backbone="auto", train_last=0))
    assert named.train_last == 0 and seen["config"].backbones == select_module.OFFLINE_BACKBONES

    with pytest.raises(ConfigError, match="applies to --backbone auto only") as info:
        FinetuneConfig(auto=AutoBackbone(target="x86-avx2"))
    assert info.value.option == "target"
    with pytest.raises(ConfigError, match="chooses among several"):
        FinetuneConfig(backbone="auto", weights="w.pt")
    assert FinetuneConfig().train_last == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="does not run under torchrun"):
        resolve_auto_backbone("d/", FinetuneConfig(backbone="auto"))


def test_select_then_finetune_auto_on_real_photos(flowers_dir, tmp_path):
    """Real weights, real photos: select the offline backbones and two freeze depths, then --backbone auto
    reuses it all (the selection, the features) and records the table in the run."""
    runner = CliRunner()
    cache, out = tmp_path / "cache", tmp_path / "selection"
    args = ["select", str(flowers_dir), "--train-last", "0,1",
            "--cache-dir", str(cache), "--out", str(out), "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    selection = json.loads(result.output[result.output.index("{"):])
    rows = {r["backbone"]: r for r in selection["candidates"]}
    assert set(rows) == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    assert rows["efficientnet_lite0"]["input_size"] == 224 and rows["efficientnet_lite1"]["input_size"] == 240
    assert all(r["n_train"] == 24 for r in rows.values())          # scored on the training split only
    # each candidate's one-off ONNX export (the latency probe needs it, the pass reuses it) is shown apart
    assert all(0 < r["export_s"] < r["backbone_pass_s"] + r["latency_s"] for r in rows.values())
    assert selection["timings"]["exports_s"] == pytest.approx(sum(r["export_s"] for r in rows.values()), abs=0.01)
    assert rows["efficientnet_lite0"]["gflops"] < rows["efficientnet_lite1"]["gflops"] < \
        rows["efficientnet_lite2"]["gflops"]
    assert selection["recommendation"]["backbone"] in rows and selection["recommendation"]["reason"]
    assert any(r["pareto"] for r in rows.values())
    assert [d["train_last"] for d in selection["freeze"]["depths"]] == [0, 1]
    assert {p.name for p in out.iterdir()} == {"selection.json", "selection.md", "selection.png"}

    # a budget between the two fastest, on a target profile: only the fastest is within it
    from edgetl.devices import get_profile
    from edgetl.runtime.tools.doctor import gather, profile_fit

    by_speed = sorted(rows.values(), key=lambda r: r["p50_ms"])
    budget = (by_speed[0]["p50_ms"] + by_speed[1]["p50_ms"]) / 2
    budgeted = runner.invoke(main, ["select", str(flowers_dir), "--target", "x86-avx2", "--budget-ms", f"{budget}",
                                    "--cache-dir", str(cache), "--json"])
    assert budgeted.exit_code == 0, budgeted.output
    budgeted = json.loads(budgeted.output[budgeted.output.index("{"):])
    fits = profile_fit(get_profile("x86-avx2"), gather()).fits
    assert budgeted["target"] == "x86-avx2" and budgeted["latency"]["where"] == ("target" if fits else "host")
    assert budgeted["recommendation"]["backbone"] == by_speed[0]["backbone"]
    assert "over budget: " in budgeted["recommendation"]["reason"]
    assert all(r["cache_hit"] for r in budgeted["candidates"])       # no second backbone pass

    # a selection whose features left the cache is not reused: it is measured again
    shutil.rmtree(cache / by_speed[2]["feature_key"])
    again = runner.invoke(main, ["select", str(flowers_dir), "--train-last", "0,1", "--cache-dir", str(cache),
                                 "--json"])
    assert again.exit_code == 0 and json.loads(again.output[again.output.index("{"):])["reused"] is False

    auto = runner.invoke(main, ["finetune", str(flowers_dir), "--backbone", "auto", "--out", str(tmp_path / "run"),
                                "--cache-dir", str(cache), "--json"])
    assert auto.exit_code == 0, auto.output
    run = json.loads(auto.output[auto.output.index("{"):])
    assert "reusing the selection" in auto.output
    assert run["backbone"] == selection["recommendation"]["backbone"] and run["cache_hit"] is True
    assert run["timings"]["backbone_pass_s"] == 0.0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["backbone"]["train_last"] == selection["freeze"]["recommended"]   # the compared freeze point
    assert manifest["selection"]["recommendation"] == selection["recommendation"]
    assert len(manifest["selection"]["candidates"]) == 3
