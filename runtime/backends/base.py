"""The runtime backend interface, after Polygraphy's runners.

A backend opens one model file, runs it, and closes.  Input checks and state
checks live here once; a backend implements only ``_open_impl``,
``_infer_impl`` and ``_close_impl``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, EdgetlError


class Backend:
    """Base class of runtime backends (onnxruntime, and later OpenVINO, TensorRT)."""

    name: str = "base"

    def __init__(self, path: str | Path, threads: int | None = None, device: str | None = None):
        self.path = Path(path)
        self.threads = threads
        self.requested_device = device      # e.g. OpenVINO's GPU; backends without devices ignore it
        self.input_name = ""
        self.input_shape: tuple = ()
        self._open = False

    def open(self) -> "Backend":
        if self._open:
            return self
        self._open_impl()
        self._open = True
        return self

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one NCHW float32 batch; the shape is checked against the model's input."""
        if not self._open:
            raise EdgetlError(f"{self.name} backend for {self.path.name} is not open; call open() first")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        expected = self.input_shape
        if batch.ndim != len(expected) or any(
            isinstance(e, int) and e != got for e, got in zip(expected, batch.shape)
        ):
            raise ConfigError(
                f"{self.path.name} expects input of shape {tuple(expected)}, got {batch.shape}"
            )
        return self._infer_impl(batch)

    def close(self) -> None:
        if self._open:
            self._close_impl()
            self._open = False

    def __enter__(self) -> "Backend":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_impl(self) -> None:
        raise NotImplementedError

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _close_impl(self) -> None:
        pass

    def describe(self) -> dict:
        """Versions and settings recorded next to measurements."""
        return {"backend": self.name, "threads": self.threads}
