"""Typed errors shared by the host and the device runtime, and the one table of exit codes.

Every error a user can cause derives from :class:`EdgetlError`, so the CLIs
can print its message and exit non-zero without a traceback, and callers of
the Python API can catch one family.  Messages name the offending file or
value and say what to do about it; they never name a command-line flag,
because the API has none: an error about one option says which with
``option="top_k"`` and the CLIs print it as ``--top-k`` (and the option that
would get past it, ``remedy="force"``, as ``(--force)`` after the message).

Scripts branch on exit codes, so each code has exactly one meaning
(:class:`ExitCode`, listed in docs/exit-codes.md).
"""

from __future__ import annotations

from enum import IntEnum, unique


@unique
class ExitCode(IntEnum):
    """Process exit status of ``edgetl`` and ``edgetl-rt``: one meaning per code, never reused."""

    OK = 0
    ERROR = 1                 # an error no more specific code covers (run with -v for an unexpected one's traceback)
    USAGE = 2                 # the command line does not parse (click: unknown option, missing argument, bad type)
    BUNDLE = 3                # a bundle is missing files, of an unknown schema or fails its checksums
    EXPORT_VALIDATION = 4     # an exported model's outputs differ from torch beyond the tolerance
    MISSING_DEPENDENCY = 5    # an optional package is not installed
    UPDATE_REJECTED = 6       # an on-device update would lower held-out accuracy; nothing was committed
    STORE_BUSY = 7            # another process holds the feature store's lock
    DATA = 8                  # input data unusable (was 2, shared with usage errors)
    CONFIG = 9                # an option or configuration value is invalid (was 2, shared with usage errors)
    EXPORT_ACCURACY = 10      # an exported artifact loses more accuracy than allowed (was 4, shared)
    BELOW_MIN_ACCURACY = 11   # evaluate's gate: accuracy below the required minimum (was 6, shared)
    CUDA = 12                 # a CUDA runtime call failed or libcudart is missing (was 5, shared)
    SIGNATURE = 13            # unsigned, signed by a key not trusted, or altered after signing


class EdgetlError(Exception):
    """Base class of every user-facing edgetl error.

    ``option`` names the parameter the error is about (a Python name such as
    ``"top_k"``), so the CLI can point at its flag without the library naming it;
    ``remedy`` names the parameter that would get past it (``"force"``,
    ``"overwrite"``), which the message describes in words and the CLI names as
    a flag.
    """

    exit_code = ExitCode.ERROR

    def __init__(self, *args: object, option: str | None = None, remedy: str | None = None):
        super().__init__(*args)
        self.option = option
        self.remedy = remedy


class DataError(EdgetlError):
    """The input data is unusable: missing, empty, corrupt or inconsistent."""

    exit_code = ExitCode.DATA


class ImageDecodeError(DataError):
    """One image cannot be decoded (corrupt, truncated, not an image, too large)."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason


class BundleError(EdgetlError):
    """A bundle is missing files, has an unknown schema or fails its checksums."""

    exit_code = ExitCode.BUNDLE


class ExportValidationError(EdgetlError):
    """An exported model disagrees with its source beyond the tolerance."""

    exit_code = ExitCode.EXPORT_VALIDATION

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
    """An option or configuration value is invalid (``option`` names it, e.g. ``option="top_k"``)."""

    exit_code = ExitCode.CONFIG


class MissingDependencyError(EdgetlError):
    """An optional package is needed but not installed."""

    exit_code = ExitCode.MISSING_DEPENDENCY

    def __init__(self, package: str, extra: str | None, purpose: str):
        install = f'pip install "edgetl[{extra}]"' if extra else "pip install edgetl"
        super().__init__(
            f"{purpose} needs the package '{package}', which is not installed. Install it with: {install}"
        )
        self.package = package
        self.extra = extra


class AccuracyGateError(EdgetlError):
    """An exported artifact loses more accuracy than allowed, even after its fallbacks."""

    exit_code = ExitCode.EXPORT_ACCURACY

    def __init__(self, artifact: str, reference: float, accuracy: float, limit: float, attempts: list[str],
                 hint: str = ""):
        super().__init__(
            f"{artifact} reaches {accuracy:.4f} top-1 against {reference:.4f} for fp32: a drop of "
            f"{(reference - accuracy) * 100:.2f} points, over the limit of {limit:g} "
            f"after {len(attempts)} attempt(s): {'; '.join(attempts)}. "
            f"Nothing was written; {hint + '; or ' if hint else ''}raise the limit, use more calibration data, "
            "or choose another format.",
            option="max_accuracy_drop",
        )
        self.artifact = artifact
        self.reference = reference
        self.accuracy = accuracy


class BelowMinAccuracyError(EdgetlError):
    """A bundle's measured accuracy is below the minimum a deployment gate asked for."""

    exit_code = ExitCode.BELOW_MIN_ACCURACY


class UpdateRejectedError(EdgetlError):
    """An on-device update would lower held-out accuracy by more than allowed; nothing was committed."""

    exit_code = ExitCode.UPDATE_REJECTED


class StoreBusyError(EdgetlError):
    """Another process holds the store's lock."""

    exit_code = ExitCode.STORE_BUSY


class DecodeBusyError(EdgetlError):
    """A service's images could not be decoded before the request's deadline: its decode pool and pixel budget
    stayed full with other requests' images (the client may retry)."""

    exit_code = ExitCode.ERROR


class CudaError(EdgetlError):
    """A CUDA runtime call failed, or the CUDA runtime library is missing."""

    exit_code = ExitCode.CUDA


class SignatureError(EdgetlError):
    """A bundle or file that must be signed is not, is signed by a key this device does not trust, or was altered
    after it was signed (the message names the file and the key id)."""

    exit_code = ExitCode.SIGNATURE
