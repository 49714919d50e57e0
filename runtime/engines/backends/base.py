"""The runtime backend interface, after Polygraphy's runners.

A backend opens one model file, runs it, and closes.  Input checks and state
checks live here once; a backend implements only ``_open_impl``,
``_infer_impl`` and ``_close_impl``.

Every setting that changes numerics or speed with the hardware is stated by
the backend, never left to the engine's default: the precision the artifact
declares (``precision``), the thread count (one per usable physical core
unless given) and the engine's own switches.  ``settings`` holds what the
engine reports it actually uses once opened, so a figure carries its truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import ConfigError, EdgetlError
from ...machine import default_threads

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


class Backend:
    """Base class of runtime backends (onnxruntime, OpenVINO, TensorRT)."""

    name: str = "base"
    #: Whether single-threaded copies (:meth:`replica`) may run side by side in threads of one process, as the
    #: host pass's lanes run them.  Off unless shown: OpenVINO copies compiled and run in pool threads left the
    #: process to crash at a later fork (its way to run several batches at once is its own streams).
    runs_in_lanes: bool = False

    def __init__(self, path: str | Path, threads: int | None = None, device: str | None = None,
                 precision: str = "fp32", cache_dir: str | Path | None = None, shared_cores: bool = False):
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{precision}' (valid: {', '.join(PRECISIONS)})")
        if threads is not None and threads < 1:
            raise ConfigError(f"must be at least 1, got {threads}", option="threads")
        self.path = Path(path)
        self.threads = threads or default_threads()
        self.requested_device = device      # e.g. OpenVINO's GPU; backends without devices ignore it
        self.precision = precision          # what the artifact declares; the backend makes the engine run it
        self.cache_dir = Path(cache_dir) if cache_dir else None   # compiled-model cache, where the engine has one
        # other CPU work runs beside the engine (the host pass decodes images on the same cores): engine threads
        # must not spin-wait between runs
        self.shared_cores = shared_cores
        self.settings: dict = {}            # the engine's effective settings, filled by _open_impl
        self.input_name = ""
        self.input_shape: tuple = ()
        self.input_dtype = np.float32       # int64 for a text model's token ids (set by the backend on open)
        self._open = False

    def replica(self, threads: int) -> Backend:
        """A closed backend of this kind on the same file and settings but ``threads`` threads: lanes of a pass
        each run their own copy (an engine's session or request is not shared between threads)."""
        return type(self)(self.path, threads=threads, device=self.requested_device, precision=self.precision,
                          cache_dir=self.cache_dir, shared_cores=self.shared_cores)

    def open(self) -> Backend:
        if self._open:
            return self
        self._open_impl()
        self._open = True
        return self

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch: NCHW float32 images, or (N, L) int64 token ids of a text model (cast to the model's input
        type, which the backend reads when it opens); the shape is checked against the model's input."""
        if not self._open:
            raise EdgetlError(f"{self.name} backend for {self.path.name} is not open; call open() first")
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
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

    def __enter__(self) -> Backend:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_impl(self) -> None:
        raise NotImplementedError

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _close_impl(self) -> None:
        pass

    @property
    def effective_precision(self) -> str:
        """The precision the engine computes in, as far as it reports it (else the declared one)."""
        return self.settings.get("effective_precision", self.precision)

    def describe(self) -> dict:
        """Versions and settings recorded next to measurements."""
        return {"backend": self.name, "threads": self.threads, "precision": self.precision,
                "effective_precision": self.effective_precision, "settings": dict(self.settings)}
