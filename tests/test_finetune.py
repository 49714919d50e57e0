import json

import numpy as np
import pytest
from conftest import make_folder_dataset

from edgetl import extract
from edgetl.finetune import FinetuneConfig, finetune
from edgetl.heads import HeadConfig
from edgetl.run import RunManifest
from edgetl.runtime.errors import ConfigError, ImageDecodeError


def test_digits_run_directory_and_metrics(digits_run):
    run_dir = digits_run.run_dir
    assert {p.name for p in run_dir.iterdir()} == {"manifest.json", "head.npz", "metrics.json"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.95
    assert set(metrics["per_class"]) == {str(i) for i in range(10)}
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == metrics["n"] == 539
    manifest = RunManifest.read(run_dir)
    assert manifest.preprocess["input_size"] == 64 and manifest.split == {"source": "data"}
    assert len(manifest.val_sources) == 539


def test_second_finetune_hits_the_cache_without_a_backbone_pass(digits_run, tmp_path, monkeypatch):
    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran although the features were cached")

    monkeypatch.setattr("edgetl.features.run_frozen", no_backbone)
    messages = []
    result = finetune("builtin:digits", tmp_path / "ridge", FinetuneConfig(head=HeadConfig(kind="ridge")),
                      log=messages.append)
    assert result.cache_hit and any("cache hit" in m for m in messages)
    assert result.metrics["accuracy"] >= 0.95
    assert result.manifest.cache["key"] == digits_run.manifest.cache["key"]


def test_mlp_head_and_train_last_on_a_subset(tmp_path):
    from edgetl.data_export import export_image_folder

    export_image_folder("builtin:digits", tmp_path / "d", classes=["0", "1", "7"])
    mlp = finetune(str(tmp_path / "d"), tmp_path / "mlp", FinetuneConfig(head=HeadConfig(kind="mlp", epochs=5)))
    assert mlp.metrics["accuracy"] > 0.9
    tail = finetune(str(tmp_path / "d"), tmp_path / "tail",
                    FinetuneConfig(train_last=1, head=HeadConfig(epochs=3)))
    assert (tail.run_dir / "tail.pt").is_file() and tail.metrics["accuracy"] > 0.9
    assert tail.manifest.cache["key"] != mlp.manifest.cache["key"]  # other freeze point, other cache entry


def test_ridge_refuses_a_trainable_tail(tmp_path):
    root = make_folder_dataset(tmp_path / "d")
    with pytest.raises(ConfigError, match="closed form on frozen features") as info:
        finetune(str(root), tmp_path / "r", FinetuneConfig(train_last=1, head=HeadConfig(kind="ridge")))
    assert info.value.option == "train_last"
    assert not (tmp_path / "r").exists()


def test_corrupt_image_fails_cleanly_or_is_skipped(tmp_path):
    root = make_folder_dataset(tmp_path / "d", per_class=5)
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        finetune(str(root), tmp_path / "run", FinetuneConfig(image_size=32, head=HeadConfig(epochs=2)))
    assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]
    result = finetune(str(root), tmp_path / "run",
                      FinetuneConfig(image_size=32, skip_bad=True, head=HeadConfig(epochs=2)))
    assert len(result.skipped) == 1 and "broken.jpg" in result.skipped[0]
    assert len(result.manifest.train_sources) + len(result.manifest.val_sources) == 10


def test_existing_run_is_not_overwritten_by_default(digits_run):
    with pytest.raises(ConfigError, match="already exists; choose another path, or overwrite it") as info:
        finetune("builtin:digits", digits_run.run_dir, FinetuneConfig())
    assert info.value.remedy == "overwrite"


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA"):
        extract.resolve_device("cuda")


def test_head_training_keeps_torch_dynamo_out_of_the_process():
    """Gradient heads step the runtime's Adam, not ``torch.optim`` (whose first use imports ``torch._dynamo``,
    about 1.3 s per process): checked in a fresh interpreter, where nothing imported it before."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import json, sys
        import numpy as np
        from torch import nn
        from edgetl.extract import resolve_device
        from edgetl.heads import HeadConfig, train_gradient_head

        rng = np.random.default_rng(0)
        x = (np.repeat(np.eye(3, 8), 20, axis=0) * 4 + rng.normal(0, 1, (60, 8))).astype(np.float32)
        y = np.repeat(np.arange(3), 20)
        result = train_gradient_head(nn.Sequential(), x, y, x, y, 3, 8,
                                     HeadConfig(kind="mlp", epochs=20, lr=0.05, hidden=16),
                                     resolve_device("cpu"))
        accuracy = float(np.mean(result.head.logits(x).argmax(1) == y))
        print(json.dumps({"dynamo": "torch._dynamo" in sys.modules, "accuracy": accuracy}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"dynamo": False, "accuracy": 1.0}
