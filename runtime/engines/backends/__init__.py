"""Registry of runtime backends; a backend's module, and its engine, are imported only when it is used."""

from __future__ import annotations

import importlib

from ...errors import ConfigError
from .base import Backend

#: backend name -> (module of this package, class name).
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "OnnxRuntimeBackend"),
    "onnxruntime-reference": ("onnxruntime", "OnnxRuntimeReferenceBackend"),
    "openvino": ("openvino", "OpenVINOBackend"),
    "tensorrt": ("tensorrt", "TensorRTBackend"),
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


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend '{name}'; available: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def create_backend(name: str, path, threads: int | None = None, device: str | None = None,
                   precision: str = "fp32", cache_dir=None, shared_cores: bool = False) -> Backend:
    """A backend for the model file ``path``; ``precision`` is the precision its artifact declares;
    ``shared_cores``: other CPU work runs beside it (its threads then never spin-wait)."""
    return backend_class(name)(path, threads=threads, device=device, precision=precision, cache_dir=cache_dir,
                               shared_cores=shared_cores)


__all__ = ["Backend", "BACKENDS", "BACKEND_MODULES", "available_backends", "backend_class", "create_backend",
           "installed"]
