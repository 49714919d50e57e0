"""edgetl device runtime: torch-free loading, prediction and evaluation of bundles.

Imports numpy, Pillow and, when a model is opened, its backend
(onnxruntime); never torch or onnx.
"""

from .data import ImageRecord, LabeledData, open_data
from .errors import BundleError, ConfigError, DataError, EdgetlError, ImageDecodeError
from .heads import HEAD_KINDS, Head, LinearHead, MLPHead, RidgeHead, load_head
from .manifest import BundleManifest, read_bundle_manifest
from .model import EdgeModel, Prediction
from .preprocess import PreprocessConfig, load_image, preprocess

__all__ = [
    "EdgeModel", "Prediction", "BundleManifest", "read_bundle_manifest",
    "PreprocessConfig", "preprocess", "load_image",
    "ImageRecord", "LabeledData", "open_data",
    "Head", "LinearHead", "MLPHead", "RidgeHead", "HEAD_KINDS", "load_head",
    "EdgetlError", "BundleError", "ConfigError", "DataError", "ImageDecodeError",
]
