import json
import shutil

import numpy as np
import pytest

from edgetl.exporters import resolve_formats
from edgetl.exporters.bundle import export_run
from edgetl.runtime import EdgeModel, read_bundle_manifest
from edgetl.runtime.errors import BundleError, ConfigError, ExportValidationError
from edgetl.runtime.inference.evaluate import evaluate_bundle


def test_bundle_layout_and_manifest(digits_bundle):
    from edgetl.runtime.bundle.timings import LOCAL_STATE

    folder = digits_bundle.bundle
    assert {p.name for p in folder.iterdir()} - set(LOCAL_STATE) == {
        "manifest.json", "backbone.onnx", "model.onnx", "head.npz", "backbone-onnx-int8.onnx",
        "backbone-openvino.xml", "backbone-openvino.bin", "learning", "check.npz", "unknown.npz"}
    manifest = read_bundle_manifest(folder)
    assert manifest.labels == [str(i) for i in range(10)] and manifest.feature_dim == 1280
    backbone = manifest.artifact("onnx")
    assert backbone.role == "backbone" and backbone.max_abs_diff <= 1e-4
    assert backbone.accuracy >= 0.95 and abs(backbone.accuracy_drop) <= 1.0
    assert manifest.artifact("onnx-fused").accuracy == pytest.approx(backbone.accuracy, abs=0.005)
    from edgetl.runtime.machine import cpu_facts

    arch = cpu_facts()["arch"]        # where each accuracy was measured: the gate of another architecture checks
    assert backbone.accuracy_by_arch == {arch: backbone.accuracy}
    assert manifest.artifact("onnx-int8").accuracy_by_arch == {arch: manifest.artifact("onnx-int8").accuracy}
    with np.load(folder / "check.npz", allow_pickle=False) as check:
        assert "logits:onnx-int8" in check.files                 # int8's own answers, for that device check


def test_runtime_accuracy_on_the_device_copy_of_the_data(digits_bundle, digits_folder):
    manifest = read_bundle_manifest(digits_bundle.bundle)
    for name in ("onnx", "onnx-int8", "openvino"):
        with EdgeModel(digits_bundle.bundle, artifact=name) as model:
            report = evaluate_bundle(model, str(digits_folder))
        assert report["split"] == "val" and report["n"] == 539 and report["artifact"] == name
        assert report["accuracy"] == pytest.approx(manifest.artifact(name).accuracy)
        assert report["accuracy"] >= 0.95


def test_dynamic_batch_and_fused_model_agree(digits_bundle):
    from edgetl.runtime.engines.backends import create_backend

    with EdgeModel(digits_bundle.bundle, artifact="onnx") as model:
        x = np.random.default_rng(0).standard_normal((5, 3, 64, 64)).astype(np.float32)
        logits = model.logits(x)
        with pytest.raises(ConfigError, match="expects input of shape"):
            model.features(x[:, :, :32])
    with create_backend("onnxruntime", digits_bundle.bundle / "model.onnx") as fused:
        np.testing.assert_allclose(fused.infer(x), logits, atol=1e-4)
    with EdgeModel(digits_bundle.bundle, artifact="openvino") as model:
        np.testing.assert_allclose(model.logits(x), logits, atol=1e-4)  # openvino fp32 matches onnx fp32


def test_tampered_bundle_file_is_refused(digits_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(digits_bundle.bundle, copy)
    data = bytearray((copy / "head.npz").read_bytes())
    data[-10] ^= 0xFF
    (copy / "head.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="head.npz fails its sha256"):
        EdgeModel(copy)


def test_unknown_schema_and_missing_files_are_refused(digits_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(digits_bundle.bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema version 99"):
        EdgeModel(copy)
    shutil.copytree(digits_bundle.bundle, tmp_path / "b2")
    (tmp_path / "b2" / "backbone.onnx").unlink()
    with pytest.raises(BundleError, match="backbone.onnx is missing"):
        EdgeModel(tmp_path / "b2", artifact="onnx")
    shutil.rmtree(tmp_path / "b2" / "timings", ignore_errors=True)
    with pytest.raises(BundleError, match="backbone.onnx is missing"):   # measuring verifies what it loads too
        EdgeModel(tmp_path / "b2")


def test_export_fails_typed_when_outputs_differ(digits_run, tmp_path, monkeypatch):
    """A wrong export (here: a perturbed tolerance check) raises and leaves no bundle behind."""
    import edgetl.exporters.bundle as bundle_module

    real_check = bundle_module.check_export

    def strict(module, path, images, tolerance, output_name):
        return real_check(module, path, images, 1e-12, output_name)

    monkeypatch.setattr(bundle_module, "check_export", strict)
    with pytest.raises(ExportValidationError, match="max \\|difference\\|") as info:
        export_run(digits_run.run_dir, tmp_path / "bundle")
    assert info.value.tolerance == 1e-12
    assert not (tmp_path / "bundle").exists()


def test_unknown_format_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'onnx'"):
        resolve_formats("onxx")


def test_flowers_end_to_end(flowers_dir, tmp_path):
    """Real photos at 224 px: finetune, export, evaluate through the runtime."""
    from edgetl.finetune import FinetuneConfig, finetune

    run = finetune(str(flowers_dir), tmp_path / "run", FinetuneConfig())
    assert run.manifest.split["source"] == "seeded" and run.metrics["n"] == 6
    bundle = export_run(run.run_dir, tmp_path / "bundle")
    artifact = bundle.manifest.artifact("onnx")
    assert artifact.max_abs_diff <= 1e-4 and abs(artifact.accuracy_drop) <= 1e-6
    with EdgeModel(bundle.bundle) as model:
        report = evaluate_bundle(model, str(flowers_dir))
        assert report["n"] == 30 and report["accuracy"] >= 0.8
        top = model.predict([str(flowers_dir / "daisy" / "1.jpg")], top_k=3)[0]
    assert len(top.top) == 3 and abs(sum(s for _, s in top.top) - 1.0) < 1e-5
