"""edgetl device runtime: torch-free loading, prediction, evaluation and on-device learning of bundles.

Imports numpy, Pillow and, when a model is opened, its backend (onnxruntime,
openvino or tensorrt); never torch or onnx.  The names below are loaded on
first use (PEP 562), so ``edgetl-rt predict`` pays only for what it runs.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Bundle": "bundle", "EdgeModel": "model", "Prediction": "model", "Backbone": "backbone",
    "backbone_features": "features", "evaluate_bundle": "evaluate",
    "BundleManifest": "manifest", "read_bundle_manifest": "manifest",
    "PreprocessConfig": "preprocess", "preprocess": "preprocess", "load_image": "preprocess",
    "ImageRecord": "data", "LabeledData": "data", "open_data": "data",
    "Head": "heads", "LinearHead": "heads", "MLPHead": "heads", "RidgeHead": "heads", "NCMHead": "heads",
    "HEAD_KINDS": "heads", "load_head": "heads",
    "RidgeLearner": "learning", "SGDLearner": "learning", "NCMLearner": "learning",
    "FeatureStore": "store", "UpdateSettings": "update", "update_bundle": "update", "learn_features": "update",
    "adapt_bundle": "update", "rollback_bundle": "update",
    "EdgetlError": "errors", "BundleError": "errors", "ConfigError": "errors", "DataError": "errors",
    "ImageDecodeError": "errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgetl.runtime' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
