"""Registry of runtime backends; each imports its engine only when opened."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Backend
from .onnxruntime import OnnxRuntimeBackend, OnnxRuntimeReferenceBackend
from .openvino import OpenVINOBackend
from .tensorrt import TensorRTBackend

BACKENDS: dict[str, type[Backend]] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
    OnnxRuntimeReferenceBackend.name: OnnxRuntimeReferenceBackend,
    OpenVINOBackend.name: OpenVINOBackend,
    TensorRTBackend.name: TensorRTBackend,
}

#: Python module each backend needs, to tell which are usable here without importing them.
BACKEND_MODULES = {"onnxruntime": "onnxruntime", "onnxruntime-reference": "onnxruntime", "openvino": "openvino",
                   "tensorrt": "tensorrt"}


def installed(names) -> list[str]:
    """``names`` (in their order) whose engine is installed here."""
    here = available_backends()
    return [name for name in names if name in here]


def available_backends() -> list[str]:
    """Backends whose engine is installed (found without importing it)."""
    import importlib.util

    return [name for name, module in BACKEND_MODULES.items() if importlib.util.find_spec(module) is not None]


def create_backend(name: str, path, threads: int | None = None, device: str | None = None) -> Backend:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend '{name}'; available: {', '.join(BACKENDS)}")
    return BACKENDS[name](path, threads=threads, device=device)


__all__ = ["Backend", "BACKENDS", "available_backends", "create_backend", "installed"]
