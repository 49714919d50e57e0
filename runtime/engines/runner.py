"""The bundle's backbone as this machine runs it: which artifact (:mod:`.choice`, measuring first when nothing
is recorded here: :mod:`.measure`), verified, on its backend.

Update, adapt and cluster need features only, so they open a :class:`BackboneRunner`; prediction adds the head
(:class:`~edgetl.runtime.inference.model.EdgeModel`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bundle.folder import Bundle
from ..compat import renamed_keyword
from ..errors import BundleError
from ..machine import cpu_facts, this_cpu_class
from .artifacts import artifact_backend
from .choice import choose, deployment_backends, imported_engines, to_measure


class BackboneRunner:
    """The chosen artifact of ``bundle`` opened on its backend.

    ``images`` says how many inputs the caller will run (a one-shot command), so the choice weighs time to
    those results; None means a long run.  ``measure=False`` never measures: with nothing recorded here, the
    profile or CPU-class order decides.  ``log`` receives a line when the candidates are measured.
    ``shared_cores``: numpy work follows each batch in this process (learning), so the engine's threads never
    spin-wait for the next batch.
    """

    @renamed_keyword("tune", "measure")
    def __init__(self, bundle: str | Path | Bundle, artifact: str | None = None, backend: str | None = None,
                 threads: int | None = None, images: int | None = None, measure: bool = True,
                 log=lambda message: None, shared_cores: bool = False):
        imported = imported_engines()    # before measuring, which imports them all
        self.bundle = Bundle.open(bundle)
        manifest = self.bundle.manifest
        self.preprocess = self.bundle.preprocess
        self.feature_dim = manifest.feature_dim
        device = manifest.openvino_device
        timings = self.bundle.timings() if artifact is None else None
        flags = cpu_facts()["flags"]
        self.measured = None
        if artifact is None and measure and to_measure(manifest, backend, flags, timings):
            from .measure import measure_bundle  # measuring (and its check set) is loaded only when it runs

            self.measured = measure_bundle(self.bundle, backend, threads, device, timings, log)
            timings = self.bundle.timings()
        choice = choose(manifest, artifact, backend, timings, this_cpu_class(), flags, images, imported)
        self.artifact, self.choice_reason, backend = choice.artifact, choice.reason, choice.backend
        if backend is None:
            runnable = deployment_backends(self.artifact)
            if not runnable:
                raise BundleError(f"artifact {self.artifact.name} needs one of {', '.join(self.artifact.backends)}, "
                                  "none of which is installed here")
            backend = runnable[0]
        self.bundle.verify_artifact(self.artifact)
        self.backend = artifact_backend(self.bundle.path, self.artifact, backend, threads, device, shared_cores).open()

    @property
    def tuning(self):
        """0.6's name of :attr:`measured` (goes in 0.8)."""
        from ..compat import deprecated_use

        deprecated_use("BackboneRunner.tuning", "BackboneRunner.measured")
        return self.measured

    def features(self, batch: np.ndarray) -> np.ndarray:
        return self.backend.infer(batch)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> BackboneRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def __getattr__(name: str):
    from ..compat import moved_name

    return moved_name(__name__, name)
