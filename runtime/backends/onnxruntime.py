"""ONNX Runtime backend (CPU execution provider by default)."""

from __future__ import annotations

import numpy as np

from ..errors import BundleError, MissingDependencyError
from .base import Backend


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    optimization = "ORT_ENABLE_ALL"

    def _open_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependencyError("onnxruntime", None, "the onnxruntime backend") from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self.optimization)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad models
            raise BundleError(f"onnxruntime cannot load {self.path.name}: {exc}") from exc
        model_input = self._session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in model_input.shape)
        self._output_name = self._session.get_outputs()[0].name
        self._version = ort.__version__

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output_name], {self.input_name: batch})[0]

    def _close_impl(self) -> None:
        del self._session

    def describe(self) -> dict:
        info = super().describe()
        info["version"] = getattr(self, "_version", None)
        info["providers"] = ["CPUExecutionProvider"]
        return info


class OnnxRuntimeReferenceBackend(OnnxRuntimeBackend):
    """ONNX Runtime with graph optimizations off: Q/DQ pairs run as float fake-quantization.

    This computes what an int8 engine with int32 accumulation computes (TensorRT's
    explicit quantization) without the CPU int8 kernels, which saturate on CPUs
    without VNNI.  Slow; for measuring TensorRT-form artifacts where TensorRT is absent.
    """

    name = "onnxruntime-reference"
    optimization = "ORT_DISABLE_ALL"
