"""Adapters for ``timm:<name>`` and ``torchvision:<name>`` backbones.

Weights are never downloaded at run time: pretrained weights must already be
in the local timm / Hugging Face or torch hub cache, or be given with
``--weights PATH``.  Stage lists are derived for the common model families so
``--train-last`` works where a model exposes its blocks; other models train
the head only.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from edgetl.runtime.errors import ConfigError, MissingDependencyError

from .base import Backbone, GlobalAveragePool, PretrainedConfig, load_state_dict_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Sequential(nn.Module):
    """A stage made of several modules owned by the wrapped model."""

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x


class WrappedBackbone(Backbone):
    """A third-party classifier with its classifier removed, split into stages."""

    def __init__(self, name: str, model: nn.Module, stages: list[nn.Module], pretrained: PretrainedConfig):
        super().__init__()
        self.name = name
        self.model = model
        self.stages = stages
        self.pretrained = pretrained
        self.eval()
        with torch.no_grad():
            probe = torch.zeros(1, 3, pretrained.input_size, pretrained.input_size)
            self.feature_dim = int(self.forward(probe).shape[1])


def _timm_stages(model: nn.Module) -> list[nn.Module]:
    """EfficientNet / MobileNet-style timm models expose stem, blocks and head."""
    if all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        return [
            _Sequential(model.conv_stem, model.bn1),
            *model.blocks,
            _Sequential(model.conv_head, model.bn2),
            GlobalAveragePool(),
        ]
    return [_TimmFeatures(model), _TimmPool(model)]


class _TimmFeatures(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class _TimmPool(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self._model = [model]  # not registered: the pool has no parameters of its own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._model[0].forward_head(x, pre_logits=True)


def create_timm(name: str, weights: str | None) -> Backbone:
    try:
        import timm
    except ImportError as exc:
        raise MissingDependencyError("timm", "timm", f"backbone timm:{name}") from exc
    if name not in timm.list_models():
        raise ConfigError(f"timm has no model '{name}'")
    if weights:
        model = timm.create_model(name, pretrained=False, num_classes=0)
        missing, _ = model.load_state_dict(load_state_dict_file(weights), strict=False)
        if missing:
            raise ConfigError(f"{weights} lacks {len(missing)} weights of timm:{name}, e.g. {missing[:3]}")
        source = weights
    else:
        previous = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as exc:
            raise ConfigError(
                f"pretrained weights for timm:{name} are not in the local cache and edgetl does not "
                f"download at run time; give local weights (a state dict file) ({exc})", remedy="weights"
            ) from exc
        finally:
            if previous is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous
        source = f"timm:{name} (local cache)"
    cfg = model.pretrained_cfg
    pretrained = PretrainedConfig(
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bilinear")),
        weights_source=source,
    )
    return WrappedBackbone(f"timm:{name}", model, _timm_stages(model), pretrained)


def _torchvision_stages(model: nn.Module) -> list[nn.Module]:
    if hasattr(model, "features") and isinstance(model.features, nn.Sequential):
        return [*model.features, GlobalAveragePool()]
    if all(hasattr(model, a) for a in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer4")):
        return [
            _Sequential(model.conv1, model.bn1, model.relu, model.maxpool),
            model.layer1, model.layer2, model.layer3, model.layer4,
            GlobalAveragePool(),
        ]
    raise ConfigError(f"torchvision model {type(model).__name__} has no known feature stages")


def create_torchvision(name: str, weights: str | None) -> Backbone:
    try:
        import torchvision
    except Exception as exc:  # PyPI torchvision can fail to import beside some torch builds
        raise MissingDependencyError("torchvision", "torchvision", f"backbone torchvision:{name}") from exc
    try:
        weight_enum = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"torchvision has no model '{name}'") from exc
    model = torchvision.models.get_model(name, weights=None)
    if weights:
        state, source = load_state_dict_file(weights), weights
    else:
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weight_enum.url))
        if not os.path.isfile(cached):
            raise ConfigError(
                f"pretrained weights for torchvision:{name} are not in the local cache ({cached}) and "
                "edgetl does not download at run time; give local weights (a state dict file)", remedy="weights"
            )
        state, source = load_state_dict_file(cached), cached
    model.load_state_dict(state, strict=True)
    transforms = weight_enum.transforms()
    crop = int(transforms.crop_size[0])
    pretrained = PretrainedConfig(
        input_size=crop,
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        crop_pct=crop / int(transforms.resize_size[0]),
        interpolation=str(transforms.interpolation.value),
        weights_source=source,
    )
    return WrappedBackbone(f"torchvision:{name}", model, _torchvision_stages(model), pretrained)
