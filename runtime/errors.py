"""Typed errors shared by the host and the device runtime.

Every error a user can cause derives from :class:`EdgetlError`, so the CLIs
can print its message and exit non-zero without a traceback, and callers of
the Python API can catch one family.  Messages name the offending file or
value and say what to do about it.
"""

from __future__ import annotations


class EdgetlError(Exception):
    """Base class of every user-facing edgetl error."""

    exit_code = 1


class DataError(EdgetlError):
    """The input data is unusable: missing, empty, corrupt or inconsistent."""

    exit_code = 2


class ImageDecodeError(DataError):
    """One image cannot be decoded (corrupt, truncated, not an image, too large)."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason


class BundleError(EdgetlError):
    """A bundle is missing files, has an unknown schema or fails its checksums."""

    exit_code = 3


class ExportValidationError(EdgetlError):
    """An exported model disagrees with its source beyond the tolerance."""

    exit_code = 4

    def __init__(self, artifact: str, max_abs_diff: dict[str, float], tolerance: float):
        details = ", ".join(f"{name}: {diff:.3g}" for name, diff in max_abs_diff.items())
        super().__init__(
            f"exported {artifact} differs from the torch model by more than {tolerance:g} "
            f"(max |difference| per output: {details})"
        )
        self.artifact = artifact
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance


class ConfigError(EdgetlError):
    """An option or configuration value is invalid."""

    exit_code = 2


class MissingDependencyError(EdgetlError):
    """An optional package is needed but not installed."""

    exit_code = 5

    def __init__(self, package: str, extra: str | None, purpose: str):
        install = f'pip install "edgetl[{extra}]"' if extra else "pip install edgetl"
        super().__init__(
            f"{purpose} needs the package '{package}', which is not installed. Install it with: {install}"
        )
        self.package = package
        self.extra = extra


class AccuracyGateError(EdgetlError):
    """An exported artifact loses more accuracy than allowed, even after its fallbacks."""

    exit_code = 4

    def __init__(self, artifact: str, reference: float, accuracy: float, limit: float, attempts: list[str],
                 hint: str = ""):
        super().__init__(
            f"{artifact} reaches {accuracy:.4f} top-1 against {reference:.4f} for fp32: a drop of "
            f"{(reference - accuracy) * 100:.2f} points, over the limit of {limit:g} "
            f"(--max-accuracy-drop) after {len(attempts)} attempt(s): {'; '.join(attempts)}. "
            f"Nothing was written; {hint + '; or ' if hint else ''}raise the limit, use more --calib images, "
            "or choose another format."
        )
        self.artifact = artifact
        self.reference = reference
        self.accuracy = accuracy


class UpdateRejectedError(EdgetlError):
    """An on-device update would lower held-out accuracy by more than allowed; nothing was committed."""

    exit_code = 6
