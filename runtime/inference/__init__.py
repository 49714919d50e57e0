"""Inference: a bundle's backbone features, its predictions and its accuracy on labelled data."""

from ..exports import lazy_names

_NAMES = {
    **dict.fromkeys(("EdgeModel", "Prediction"), ".model"),
    **dict.fromkeys(("evaluate_bundle", "require_accuracy"), ".evaluate"),
    **dict.fromkeys(("backbone_features", "apply_adapter", "Features", "FeatureSource"), ".features"),
}
__all__ = list(_NAMES)
__getattr__, __dir__ = lazy_names(__name__, _NAMES)
