"""Registry of runtime backends; each imports its engine only when opened."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Backend
from .onnxruntime import OnnxRuntimeBackend

BACKENDS: dict[str, type[Backend]] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
}


def create_backend(name: str, path, threads: int | None = None) -> Backend:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend '{name}'; available: {', '.join(BACKENDS)}")
    return BACKENDS[name](path, threads=threads)


__all__ = ["Backend", "BACKENDS", "create_backend"]
