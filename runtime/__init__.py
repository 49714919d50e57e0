"""edgetl device runtime: torch-free loading, prediction, evaluation and on-device learning of bundles.

Imports numpy, Pillow and, when a model is opened, its backend
(onnxruntime); never torch or onnx.
"""

from .data import ImageRecord, LabeledData, open_data
from .errors import BundleError, ConfigError, DataError, EdgetlError, ImageDecodeError
from .heads import HEAD_KINDS, Head, LinearHead, MLPHead, NCMHead, RidgeHead, load_head
from .learning import NCMLearner, RidgeLearner, SGDLearner
from .manifest import BundleManifest, read_bundle_manifest
from .model import EdgeModel, Prediction
from .preprocess import PreprocessConfig, load_image, preprocess
from .store import FeatureStore
from .update import UpdateSettings, learn_features, update_bundle

__all__ = [
    "EdgeModel", "Prediction", "BundleManifest", "read_bundle_manifest",
    "PreprocessConfig", "preprocess", "load_image",
    "ImageRecord", "LabeledData", "open_data",
    "Head", "LinearHead", "MLPHead", "RidgeHead", "NCMHead", "HEAD_KINDS", "load_head",
    "RidgeLearner", "SGDLearner", "NCMLearner", "FeatureStore", "UpdateSettings", "update_bundle", "learn_features",
    "EdgetlError", "BundleError", "ConfigError", "DataError", "ImageDecodeError",
]
