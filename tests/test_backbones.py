import numpy as np
import pytest
import torch

from edgetl.backbones import create_backbone, list_backbones
from edgetl.runtime.data.preprocess import preprocess
from edgetl.runtime.errors import ConfigError, MissingDependencyError


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0")


def test_lite0_really_is_imagenet_trained(lite0):
    """scikit-learn's flower photo is a daisy (ImageNet class 985) with mean/std 0.498/0.502."""
    from sklearn.datasets import load_sample_images

    flower = next(f for f in load_sample_images().filenames if f.endswith("flower.jpg"))
    config = lite0.pretrained.preprocess()
    assert config.mean == (0.498,) * 3 and config.std == (0.502,) * 3 and config.resize_size == 256
    with torch.inference_mode():
        logits = lite0.classify_imagenet(torch.from_numpy(preprocess(flower, config))[None])
    assert int(logits.argmax()) == 985


@pytest.mark.parametrize("name,size,params_m,blocks", [("efficientnet_lite1", 240, 5.42, 21),
                                                      ("efficientnet_lite2", 260, 6.09, 21)])
def test_lite1_and_lite2_are_imagenet_trained(name, size, params_m, blocks, flowers_dir):
    """The larger Lite members load their package's weights strictly and name real photos' ImageNet classes:
    every daisy of flowers3 is a daisy (985) and scikit-learn's China photo a palace (698)."""
    from sklearn.datasets import load_sample_images

    backbone = create_backbone(name)
    config = backbone.pretrained.preprocess()
    assert (config.input_size, config.resize_size) == (size, size + 32) and config.mean == (0.498,) * 3
    assert round(sum(p.numel() for p in backbone.parameters()) / 1e6, 2) == params_m
    assert backbone.trainable_stage_count == blocks + 2 and backbone.feature_dim == 1280
    china = next(f for f in load_sample_images().filenames if f.endswith("china.jpg"))
    daisies = sorted((flowers_dir / "daisy").glob("*.jpg"))
    images = torch.from_numpy(np.stack([preprocess(str(f), config) for f in [china, *daisies]]))
    with torch.inference_mode():
        classes = backbone.classify_imagenet(images).argmax(dim=1).tolist()
    assert classes == [698] + [985] * len(daisies)


def test_lite_family_widths_follow_compound_scaling():
    """Lite2's widths are Lite0's times 1.1 rounded to multiples of 8; stem, head and end stages stay fixed."""
    from edgetl.backbones.efficientnet_lite import LITE_VARIANTS

    lite2 = LITE_VARIANTS["efficientnet_lite2"].stages()
    assert [s.out_ch for s in lite2] == [16, 24, 48, 88, 120, 208, 352]
    assert [s.repeats for s in lite2] == [1, 3, 3, 4, 4, 5, 1]
    assert [s.repeats for s in LITE_VARIANTS["efficientnet_lite0"].stages()] == [1, 2, 2, 3, 3, 4, 1]


def test_lite0_describes_itself(lite0):
    assert lite0.feature_dim == 1280
    assert lite0.pretrained.input_size == 224 and lite0.pretrained.interpolation == "bilinear"
    assert lite0.trainable_stage_count == 18  # stem, 16 MBConv blocks, head conv
    with torch.inference_mode():
        assert lite0(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)


def test_freeze_point_splits_the_stages(lite0):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = lite0(x)
        for n in (0, 1, 3):
            frozen, tail = lite0.split(n)
            assert sum(1 for s in tail if any(True for _ in s.parameters())) == n
            torch.testing.assert_close(tail(frozen(x)), full)
    with pytest.raises(ConfigError, match="out of range"):
        lite0.split(19)


def test_weights_digest_identifies_the_weights(lite0, tmp_path):
    other = create_backbone("efficientnet_lite0")
    assert other.weights_sha256() == lite0.weights_sha256()
    state = {k: v.clone() for k, v in lite0.state_dict().items()}
    state["_conv_stem.weight"] += 0.01
    path = tmp_path / "w.pt"
    torch.save(state, path)
    assert create_backbone("efficientnet_lite0", weights=str(path)).weights_sha256() != lite0.weights_sha256()


def test_unsafe_or_missing_weights_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"x": np.dtype}, evil)  # not loadable with weights_only=True
    with pytest.raises(ConfigError, match="safely"):
        create_backbone("efficientnet_lite0", weights=str(evil))
    with pytest.raises(ConfigError, match="not found"):
        create_backbone("efficientnet_lite0", weights=str(tmp_path / "none.pt"))


def test_unknown_backbone_lists_choices():
    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        create_backbone("resnet9000")
    assert "timm:<name>" in list_backbones()


def test_missing_optional_packages_give_the_install_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name in ("timm", "torchvision"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)
    with pytest.raises(MissingDependencyError, match=r'pip install "edgetl\[timm\]"'):
        create_backbone("timm:mobilenetv3_small_100")
    with pytest.raises(MissingDependencyError, match=r'pip install "edgetl\[torchvision\]"'):
        create_backbone("torchvision:mobilenet_v3_small")


def test_lite2_runs_the_whole_path(flowers_dir, tmp_path):
    """Downstream of the registry nothing is Lite0-specific: Lite2 at its native 260 px fine-tunes, exports to
    fp32 and int8 ONNX for a target (both gated), runs in the runtime, and learns a new class on the device."""
    from edgetl.exporters.bundle import export_run
    from edgetl.finetune import FinetuneConfig, finetune
    from edgetl.heads import HeadConfig
    from edgetl.runtime import EdgeModel
    from edgetl.runtime.learning import UpdateSettings, update_bundle

    run = finetune(str(flowers_dir), tmp_path / "run", FinetuneConfig(backbone="efficientnet_lite2",
                                                                       head=HeadConfig(kind="ridge")))
    assert run.manifest.preprocess["input_size"] == 260 and run.manifest.backbone["name"] == "efficientnet_lite2"
    bundle = export_run(run.run_dir, tmp_path / "bundle", target="x86-avx2").bundle
    with EdgeModel(bundle, artifact="onnx-int8") as model:
        daisy = sorted((flowers_dir / "daisy").glob("*.jpg"))[0]
        assert model.predict([str(daisy)])[0].top[0][0] == "daisy"
    from PIL import Image, ImageOps

    new = tmp_path / "new" / "mirrored-rose"      # photos the store has not seen: mirrored roses, a new class
    new.mkdir(parents=True)
    for image in sorted((flowers_dir / "rose").glob("*.jpg"))[:4]:
        ImageOps.mirror(Image.open(image).convert("RGB")).save(new / image.name, quality=95)
    report = update_bundle(bundle, str(tmp_path / "new"), UpdateSettings(holdout_fraction=0.0))
    assert report["version"] == 1 and report["classes"][-1] == "mirrored-rose"
