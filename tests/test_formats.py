"""Every export format on a small model; the accuracy gate; real-weights int8; backend choice."""

import json

import pytest
from click.testing import CliRunner
from conftest import make_folder_dataset

from edgetl.cli import main as host
from edgetl.exporters import EXPORT_FORMATS, resolve_formats
from edgetl.exporters.bundle import export_run
from edgetl.finetune import FinetuneConfig, finetune
from edgetl.heads import HeadConfig
from edgetl.runtime import EdgeModel, read_bundle_manifest
from edgetl.runtime.errors import AccuracyGateError, ConfigError, MissingDependencyError
from edgetl.runtime.inference.evaluate import evaluate_bundle
from edgetl.runtime.machine import cpu_facts

ALL_FORMATS = ",".join(EXPORT_FORMATS)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = make_folder_dataset(tmp_path_factory.mktemp("tiny") / "data", classes=("red", "green", "blue"),
                               per_class=10, size=(36, 36))
    run = finetune(str(root), root.parent / "run",
                   FinetuneConfig(backbone="tiny_cnn_test", head=HeadConfig(epochs=20, lr=0.05)))
    return root, run


def test_every_format_builds_verifies_and_runs(tiny_run, tmp_path):
    root, run = tiny_run
    result = export_run(run.run_dir, tmp_path / "bundle", formats=ALL_FORMATS, max_accuracy_drop=100.0,
                        calibration_size=16, options={"fp16": False})
    manifest = read_bundle_manifest(tmp_path / "bundle")  # every sha256, companions included
    names = {a.name for a in manifest.artifacts}
    assert names == set(EXPORT_FORMATS) | {"onnx-fused"}
    flags = cpu_facts()["flags"]
    for artifact in manifest.artifacts:
        assert artifact.deployable and (artifact.accuracy is not None or artifact.measured == "not-measured")
        assert (tmp_path / "bundle" / artifact.file).stat().st_size == artifact.size
        if artifact.role != "backbone" or not artifact.runs_on(flags):
            continue
        with EdgeModel(tmp_path / "bundle", artifact=artifact.name) as model:
            report = evaluate_bundle(model, str(root), split="all")
        assert report["n"] == 30 and report["artifact"] == artifact.name
    by_name = {a.name: a for a in result.manifest.artifacts}
    assert by_name["openvino"].companions[0]["file"] == "backbone-openvino.bin"
    assert by_name["onnx-int8-trt"].evaluated_with == "onnxruntime-reference"
    assert by_name["openvino"].max_abs_diff <= 1e-4
    assert by_name["onnx-fp16"].precision == "fp16" and by_name["onnx-int8"].precision == "int8"
    assert by_name["openvino-bf16"].file == by_name["openvino"].file      # bf16 is a compile setting of the IR
    assert by_name["openvino-bf16"].requires_cpu == ["avx512_bf16", "amx_bf16"]
    assert by_name["onnx-int8-vnni"].requires_cpu == ["avx512_vnni", "avx_vnni", "amx_int8"]
    assert by_name["openvino-bf16"].measured == ("as-deployed" if set(flags) & {"avx512_bf16", "amx_bf16"}
                                                 else "emulated" if by_name["openvino-bf16"].accuracy is not None
                                                 else "not-measured")


def test_int8_graphs_are_qdq_with_the_promised_types(tiny_run, tmp_path):
    import onnx

    _, run = tiny_run
    export_run(run.run_dir, tmp_path / "b", formats="onnx-int8,onnx-int8-trt,onnx-fp16", max_accuracy_drop=100.0,
               calibration_size=8)
    for name, activation in (("backbone-onnx-int8.onnx", onnx.TensorProto.UINT8),
                             ("backbone-onnx-int8-trt.onnx", onnx.TensorProto.INT8)):
        model = onnx.load(str(tmp_path / "b" / name))
        onnx.checker.check_model(model)
        quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert quantizers, name
        zero_points = {i.name: i for i in model.graph.initializer}
        types = {zero_points[n.input[2]].data_type for n in quantizers
                 if len(n.input) > 2 and n.input[2] in zero_points}
        assert types == {activation}, name
    fp16 = onnx.load(str(tmp_path / "b" / "backbone-onnx-fp16.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # io kept fp32
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)


def test_accuracy_gate_failure_writes_nothing_and_names_both_accuracies(tiny_run, tmp_path):
    _, run = tiny_run
    with pytest.raises(AccuracyGateError, match=r"top-1 against .* for fp32") as info:
        export_run(run.run_dir, tmp_path / "bundle", formats="onnx,onnx-int8", max_accuracy_drop=-1.0,
                   calibration_size=8)
    assert "3 attempt(s)" in str(info.value)
    assert not (tmp_path / "bundle").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]


def test_format_and_option_checks_happen_before_any_work():
    with pytest.raises(ConfigError, match="did you mean 'openvino-int8'"):
        resolve_formats("openvino-int9")
    with pytest.raises(ConfigError, match="--fp16 applies to none.*openvino"):
        resolve_formats("onnx,onnx-int8", {"fp16": True})
    assert [f.name for f in resolve_formats("openvino", {"fp16": True})] == ["openvino"]


def test_openvino_fp16_weights(tiny_run, tmp_path):
    _, run = tiny_run
    result = export_run(run.run_dir, tmp_path / "b", formats="openvino", options={"fp16": True})
    artifact = next(a for a in result.manifest.artifacts if a.name == "openvino")
    assert artifact.precision == "fp16" and artifact.max_abs_diff < 1e-2


def test_real_weights_int8_within_one_point(digits_bundle):
    manifest = read_bundle_manifest(digits_bundle.bundle)
    int8 = manifest.artifact("onnx-int8")
    assert int8.accuracy_drop <= 1.0 and int8.deployable
    assert int8.size < manifest.artifact("onnx").size / 3
    assert manifest.artifact("openvino").max_abs_diff <= 1e-4


def test_default_artifact_is_the_fastest_measured_here(digits_bundle, tmp_path):
    import shutil

    from edgetl.runtime.bundle.timings import read_timings

    bundle = tmp_path / "bundle"
    shutil.copytree(digits_bundle.bundle, bundle, ignore=shutil.ignore_patterns("timings"))
    with EdgeModel(bundle, measure=False) as model:            # nothing measured: this CPU class's order
        assert "CPU order (nothing measured here)" in model.choice_reason and model.measured is None
    lines = []
    with EdgeModel(bundle, log=lines.append) as model:      # the first choice measures every candidate
        rows = read_timings(bundle).rows
        assert {(r.artifact, r.backend) for r in rows} == {("onnx", "onnxruntime"), ("onnx-int8", "onnxruntime"),
                                                          ("openvino", "openvino")}
        chosen = next(r for r in rows if r.artifact == model.artifact.name)
        assert chosen.p50_ms <= 1.05 * min(r.p50_ms for r in rows)     # the fastest, or a near tie
        assert "measuring 3 artifact(s)" in lines[0] and "recorded in" in lines[-1]
        assert all(r.load_s > 0 and r.first_s > 0 and r.p50_ms > 0 and r.eligible for r in rows)
    with EdgeModel(bundle) as model:                        # and never again on this machine
        assert model.measured is None and "measured on this machine" in model.choice_reason
    with EdgeModel(bundle, backend="openvino") as model:
        assert model.artifact.name == "openvino" and model.backend.name == "openvino"


def test_compare_reports_every_artifact(digits_bundle, digits_folder):
    out = CliRunner().invoke(host,
                             ["compare", str(digits_bundle.bundle), str(digits_folder), "--limit", "32", "--json"])
    assert out.exit_code == 0, out.output
    rows = {(r["artifact"], r["backend"]): r for r in json.loads(out.stdout)["rows"]}
    assert rows[("openvino", "openvino")]["max_abs_diff"] <= 1e-4
    assert rows[("onnx-fused", "onnxruntime")]["top1_agreement"] == 1.0
    assert rows[("onnx-int8", "onnxruntime")]["top1_agreement"] >= 0.9


def test_missing_openvino_gives_the_install_line(monkeypatch, digits_bundle):
    import sys

    from edgetl.runtime.engines.backends.openvino import OpenVINOBackend

    monkeypatch.setitem(sys.modules, "openvino", None)  # makes "import openvino" fail as if absent
    with pytest.raises(MissingDependencyError, match=r'pip install "edgetl\[openvino\]"'):
        OpenVINOBackend(digits_bundle.bundle / "backbone-openvino.xml").open()
