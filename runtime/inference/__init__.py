"""Inference: a bundle's backbone features, its predictions, its accuracy on labelled data and drift."""

from ..exports import lazy_names

_NAMES = {
    **dict.fromkeys(("EdgeModel", "Prediction"), ".model"),
    **dict.fromkeys(("evaluate_bundle", "require_accuracy"), ".evaluate"),
    **dict.fromkeys(("backbone_features", "apply_adapter", "Features", "FeatureSource"), ".features"),
    **dict.fromkeys(("DriftReference", "DriftDetector", "DriftMonitor", "DriftSnapshot", "WindowScore", "detector_for",
                     "score_windows"), ".drift"),
    **dict.fromkeys(("drift_bundle", "DriftReport"), ".drift_batch"),
}
__all__ = list(_NAMES)
__getattr__, __dir__ = lazy_names(__name__, _NAMES)
