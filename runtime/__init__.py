"""edgetl device runtime: torch-free loading, prediction, evaluation and on-device learning of bundles.

Imports numpy, Pillow and, when a model is opened, its backend (onnxruntime, openvino or tensorrt); never torch or
onnx.  The names below are loaded on first use (PEP 562), so ``edgetl-rt predict`` pays only for what it runs.

The folder is grouped by job, each group importing only the ones listed before it: the foundation modules here
(errors, deps, progress, fsutil, documents, machine, metrics, exports, compat, signing), then :mod:`.data`,
:mod:`.bundle`, :mod:`.engines`, :mod:`.inference`, :mod:`.learning` and :mod:`.serving`, with :mod:`.tools` and
:mod:`.cli` on top (``tests/test_layout.py`` holds the rule).
"""

from __future__ import annotations

from .compat import install_module_aliases, moved_name
from .exports import lazy_names

_NAMES = {
    "Bundle": ".bundle.folder", "BundleManifest": ".bundle.manifest", "read_bundle_manifest": ".bundle.manifest",
    **dict.fromkeys(("Head", "LinearHead", "MLPHead", "RidgeHead", "NCMHead", "HEAD_KINDS", "load_head"),
                    ".bundle.heads"),
    "FeatureStore": ".bundle.store",
    "EdgeModel": ".inference.model", "Prediction": ".inference.model", "evaluate_bundle": ".inference.evaluate",
    "backbone_features": ".inference.features", "BackboneRunner": ".engines.runner",
    **dict.fromkeys(("DriftMonitor", "detector_for"), ".inference.drift"), "drift_bundle": ".inference.drift_batch",
    "PreprocessConfig": ".data.preprocess", "preprocess": ".data.preprocess", "load_image": ".data.preprocess",
    "ImageRecord": ".data.sources", "LabeledData": ".data.sources", "open_data": ".data.sources",
    **dict.fromkeys(("RidgeLearner", "SGDLearner", "NCMLearner"), ".learning.learners"),
    "UpdateSettings": ".learning.settings", "LearningSession": ".learning.session",
    **dict.fromkeys(("update_bundle", "learn_features", "Learner"), ".learning.update"),
    "adapt_bundle": ".learning.adapt", "rollback_bundle": ".learning.rollback", "tune_alpha": ".learning.alpha",
    **dict.fromkeys(("UpdateReport", "AdaptReport", "AlphaReport"), ".learning.reports"),
    **dict.fromkeys(("EdgetlError", "BundleError", "ConfigError", "DataError", "ImageDecodeError",
                     "SignatureError"), ".errors"),
    **dict.fromkeys(("verify_bundle", "sign_bundle", "BundleVerification"), ".bundle.signature"),
    **dict.fromkeys(("sign_file", "verify_file_signature", "check_signature", "generate_key", "load_trusted_keys"),
                    ".signing"),
}

__all__ = list(_NAMES)
__getattr__, __dir__ = lazy_names(__name__, _NAMES, fallback=moved_name)
install_module_aliases()
