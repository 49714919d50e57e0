"""How a bundle's artifact is opened as deployed: on its backend, with its declared precision, and for OpenVINO
with a compiled-model cache of its own outside the bundle."""

from __future__ import annotations

from pathlib import Path

from ..bundle.manifest import Artifact
from ..bundle.timings import state_root
from .backends import Backend, create_backend


def model_cache_dir(artifact: Artifact) -> Path | None:
    """Where OpenVINO keeps this artifact's compiled models (its CACHE_DIR), or None when it cannot be made.

    Outside the bundle and keyed by the artifact's sha256, so a bundle copied or unpacked from elsewhere never
    brings compiled blobs with it (OpenVINO would load them in place of the verified IR)."""
    folder = state_root() / "openvino" / artifact.sha256[:32]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder


def artifact_backend(bundle: str | Path, artifact: Artifact, backend: str, threads: int | None = None,
                     device: str | None = None, shared_cores: bool = False) -> Backend:
    """The (unopened) backend that runs ``artifact`` as deployed: its declared precision, and OpenVINO's cache."""
    return create_backend(backend, Path(bundle) / artifact.file, threads, device=device, precision=artifact.precision,
                          cache_dir=model_cache_dir(artifact) if backend == "openvino" else None,
                          shared_cores=shared_cores)
