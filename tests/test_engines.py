"""Host extraction through OpenVINO / ONNX Runtime: same features as torch, export reused."""

import numpy as np
import pytest
from conftest import make_folder_dataset

from edgetl import engines, pipeline
from edgetl.backbones import create_backbone
from edgetl.extract import extract_features, resolve_device
from edgetl.finetune import FinetuneConfig, finetune
from edgetl.heads import HeadConfig
from edgetl.runtime.data.sources import open_data
from edgetl.runtime.errors import ConfigError


@pytest.fixture()
def tiny(tmp_path):
    root = make_folder_dataset(tmp_path / "data", classes=("a", "b"), per_class=6, size=(40, 40))
    backbone = create_backbone("tiny_cnn_test")
    frozen, _ = backbone.split(0)
    records = open_data(root).split("all")
    return root, backbone, frozen, records


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_engine_features_match_torch_and_the_export_is_reused(tiny, tmp_path, engine, monkeypatch):
    _, backbone, frozen, records = tiny
    preprocess = backbone.pretrained.preprocess()
    compute = resolve_device("cpu")
    reference, _, _ = extract_features(frozen, records, preprocess, compute)
    choice = engines.choose_engine(engine, frozen, records, preprocess, compute, tmp_path, backbone.weights_sha256(),
                                   len(frozen))
    assert choice.name == engine and choice.max_abs_diff <= engines.PARITY_TOLERANCE
    monkeypatch.setattr(pipeline, "usable_cores", lambda: 2)
    replicas = []
    original = type(choice.runner).replica
    monkeypatch.setattr(type(choice.runner), "replica",
                        lambda self, threads: replicas.append(threads) or original(self, threads))
    features, valid, _ = extract_features(frozen, records, preprocess, compute, runner=choice.runner)
    beside, _, _ = extract_features(frozen, records, preprocess, compute, runner=choice.runner, workers=0)
    if engine == "onnxruntime":        # decoding shares the cores: the pass's engine never spin-waits
        assert choice.runner.settings["session.intra_op.allow_spinning"] == "0"
    # ONNX Runtime runs the pass in 2 lanes of single-threaded copies; OpenVINO beside decoding threads
    assert replicas == ([1, 1] if engine == "onnxruntime" else [])
    choice.runner.close()
    assert valid.all() and np.abs(features - reference).max() <= engines.PARITY_TOLERANCE
    assert np.abs(beside - features).max() <= 1e-5

    def no_export(*args, **kwargs):
        raise AssertionError("the frozen part was exported again")

    monkeypatch.setattr(engines, "_export_frozen", no_export)
    again = engines.choose_engine(engine, frozen, records, preprocess, compute, tmp_path, backbone.weights_sha256(),
                                  len(frozen))
    assert again.name == engine
    again.runner.close()


def test_auto_keeps_torch_for_a_short_pass_and_cuda_runs_torch(tiny, tmp_path):
    _, backbone, frozen, records = tiny
    choice = engines.choose_engine("auto", frozen, records, backbone.pretrained.preprocess(), resolve_device("cpu"),
                                   tmp_path, backbone.weights_sha256(), len(frozen))
    assert choice.name == "torch" and "short" in choice.reason
    with pytest.raises(ConfigError, match="unknown engine"):
        engines.choose_engine("tensorflow", frozen, records, backbone.pretrained.preprocess(), resolve_device("cpu"),
                              tmp_path, "x", 1)


def test_finetune_records_the_engine(tiny, tmp_path):
    root, *_ = tiny
    run = finetune(str(root), tmp_path / "run", FinetuneConfig(backbone="tiny_cnn_test", engine="onnxruntime",
                                                               cache_dir=str(tmp_path / "cache"),
                                                               head=HeadConfig(epochs=2)))
    assert run.manifest.compute["engine"] == "onnxruntime"
