"""ONNX Runtime backend (CPU execution provider).

Stated, not defaulted: intra-op threads (one per usable physical core unless
given), one inter-op thread and sequential execution, the graph optimization
level, spinning, denormals kept (not flushed to zero), the ARM64 bf16
fast-math GEMM off, so an "fp32" artifact computes in fp32 on every CPU, and
the fast U8S8 int8 kernels (``session.x64quantprecision`` 0).  On x86 CPUs
without VNNI those saturate pairs of u8 x s8 products at int16; the switch to
exact U8U8 products fixes that (measured on digits under an emulated Haswell,
8-bit weights: 0.8222 without it, 0.9852 with it, as on a VNNI CPU) but costs
2.4x on a VNNI Xeon (2.35 -> 5.6 ms, Lite0 224 px), so exactness comes from
the artifacts instead: 7-bit weights everywhere, 8-bit only on VNNI/AMX CPUs.
"""

from __future__ import annotations

import numpy as np

from ...errors import BundleError, MissingDependencyError
from .base import Backend

#: Session config entries that change numerics or speed with the hardware (ONNX Runtime's names).
SESSION_CONFIG = {
    "session.intra_op.allow_spinning": "1",
    "session.set_denormal_as_zero": "0",
    "session.x64quantprecision": "0",
    "mlas.enable_gemm_fastmath_arm64_bfloat16": "0",
    "mlas.disable_kleidiai": "0",
}


def session_config() -> dict[str, str]:
    """``SESSION_CONFIG`` plus the entry whose default differs by architecture: int8 x int8 Q/DQ fusion,
    on by default on Arm only; stated as that default, so the record says which path ran."""
    from ...machine import cpu_facts

    return {**SESSION_CONFIG, "session.qdqisint8allowed": "1" if cpu_facts()["arch"] == "aarch64" else "0"}


def import_onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", None, "the onnxruntime backend") from exc
    return ort


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    optimization = "ORT_ENABLE_ALL"
    runs_in_lanes = True

    def session_options(self, ort):
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self.optimization)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        for key, value in self.session_config().items():
            options.add_session_config_entry(key, value)
        return options

    def session_config(self) -> dict[str, str]:
        """:func:`session_config`, with spinning off when other work shares the cores (measured on the host pass,
        2 cores decoding beside the engine: 0.56 -> 0.67 of the engine alone)."""
        return {**session_config(), **({"session.intra_op.allow_spinning": "0"} if self.shared_cores else {})}

    def _open_impl(self) -> None:
        ort = import_onnxruntime()
        try:
            self._session = ort.InferenceSession(str(self.path), self.session_options(ort),
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad models
            raise BundleError(f"onnxruntime cannot load {self.path.name}: {exc}") from exc
        model_input = self._session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in model_input.shape)
        self.input_dtype = np.int64 if model_input.type == "tensor(int64)" else np.float32
        self._output_name = self._session.get_outputs()[0].name
        self._version = ort.__version__
        stated = self._session.get_session_options()
        self.settings = {"intra_op_num_threads": stated.intra_op_num_threads,
                         "inter_op_num_threads": stated.inter_op_num_threads, "execution_mode": "sequential",
                         "graph_optimization_level": self.optimization,
                         **{key: stated.get_session_config_entry(key) for key in self.session_config()},
                         "effective_precision": self.precision}

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
    explicit quantization, or a CPU with VNNI) without the CPU int8 kernels, which
    saturate on CPUs without VNNI.  Slow; for measuring such artifacts where their
    hardware is absent.
    """

    name = "onnxruntime-reference"
    optimization = "ORT_DISABLE_ALL"
