"""The requests the service takes, checked against what the served model accepts: the Open Inference Protocol's
inputs, outputs and update parameters, before any of them reaches the model.

:mod:`.protocol` parses a body into tensors; this module says whether those tensors are a request this model can
answer (names, datatypes, shapes, counts, finite values, UTF-8 texts, typed update parameters), raising
:class:`~.protocol.ProtocolError` with the 4xx status each mistake earns.  :mod:`.service` then only runs the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..data.text import check_text
from ..errors import DataError
from .protocol import BYTES, InferRequest, ProtocolError

#: What an infer request may ask for.
OUTPUTS = ("label", "logits", "scores", "head_version", "ood_score", "unknown")
#: What a request that names no output gets (``ood_score`` and ``unknown``, the unknown-input score and whether it
#: is above the threshold, are sent when asked for by name).
DEFAULT_OUTPUTS = ("label", "logits", "scores", "head_version")
#: An update request's parameters and their types (``holdout`` is :attr:`UpdateSettings.holdout_fraction`).
UPDATE_PARAMETERS = {"method": str, "holdout": float, "max_accuracy_drop": float, "force": bool,
                     "reselect_alpha": bool, "lock_timeout": float, "skip_bad": bool}
#: The longest a request may ask an update to wait for the store (seconds).
MAX_LOCK_TIMEOUT = 300.0
#: The longest class name an update may introduce.
MAX_LABEL_CHARS = 200


@dataclass(frozen=True)
class Signature:
    """What the served model takes over the protocol: encoded images (``image``, BYTES) or preprocessed tensors
    (``input``, FP32 ``[N, 3, S, S]``) for an image model, UTF-8 texts (``text``, BYTES) for a text model; at
    most ``max_items`` of them per request."""

    text: bool
    input_size: int | None          # S of an image model's preprocessed input
    max_items: int

    @property
    def input_name(self) -> str:
        return "text" if self.text else "image"

    @property
    def input_shape(self) -> list[int]:
        return [3, self.input_size, self.input_size]

    @property
    def items(self) -> str:
        """What one request carries, in words: ``texts`` or ``images``."""
        return "texts" if self.text else "images"

    def check_count(self, count: int, what: str | None = None) -> None:
        """Refuse (413) a request carrying more than :attr:`max_items`."""
        if count > self.max_items:
            raise ProtocolError(f"{count} {what or self.items} in one request; at most {self.max_items} "
                                "(--max-images)", 413)


@dataclass(frozen=True)
class ModelInput:
    """An infer request's input: ``encoded`` items (image files or UTF-8 texts) or an FP32 ``tensor``."""

    encoded: list[bytes] | None = None
    tensor: np.ndarray | None = None


def infer_input(request: InferRequest, signature: Signature) -> ModelInput:
    """The one input of an infer request, checked."""
    name = signature.input_name
    unknown = sorted(set(request.inputs) - {name, "input"})
    if unknown:
        takes = f"'{name}'" if signature.text else f"'{name}' or 'input'"
        raise ProtocolError(f"unknown input(s) {', '.join(unknown)} (this model takes {takes})")
    if len(request.inputs) != 1:
        raise ProtocolError(f"give either '{name}' or 'input' (preprocessed), not both")
    if name in request.inputs:
        tensor = request.inputs[name]
        what = "UTF-8 texts" if signature.text else "encoded JPEG/PNG"
        if tensor.datatype != BYTES:
            raise ProtocolError(f"input '{name}' must be BYTES ({what}), got {tensor.datatype}")
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1) or not tensor.data:
            raise ProtocolError(f"input '{name}' must have shape [N] or [N, 1] with N >= 1, got {tensor.shape}")
        signature.check_count(len(tensor.data))
        return ModelInput(encoded=tensor.data)
    if signature.text:
        raise ProtocolError("a text model takes its texts as 'text' (BYTES); token ids are not accepted")
    tensor = request.inputs["input"]
    if tensor.datatype != "FP32":
        raise ProtocolError(f"input 'input' must be FP32, got {tensor.datatype}")
    if len(tensor.shape) != 4 or tensor.shape[1:] != signature.input_shape or tensor.shape[0] < 1:
        raise ProtocolError(f"input 'input' must have shape {[-1, *signature.input_shape]}, got {tensor.shape}")
    signature.check_count(tensor.shape[0], "inputs")
    if not np.isfinite(tensor.data).all():
        raise ProtocolError("input 'input' holds NaN or infinite values")
    return ModelInput(tensor=np.ascontiguousarray(tensor.data, dtype=np.float32))


def requested_outputs(request: InferRequest) -> list[tuple[str, bool]]:
    """(output name, binary) of each output the request asks for, every output when it names none."""
    if request.outputs is None:
        return [(name, request.binary_default) for name in DEFAULT_OUTPUTS]
    unknown = sorted({o.name for o in request.outputs} - set(OUTPUTS))
    if unknown:
        raise ProtocolError(f"unknown output(s) {', '.join(unknown)} (valid: {', '.join(OUTPUTS)})")
    names = [o.name for o in request.outputs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:             # each output once: a short request must not ask for a long response
        raise ProtocolError(f"output(s) {', '.join(twice)} requested more than once")
    return [(o.name, o.binary) for o in request.outputs]


def utf8_texts(items: list[bytes]) -> list[str]:
    """The UTF-8 texts of a request, each checked (not empty, not oversized)."""
    texts = []
    for index, data in enumerate(items):
        try:
            texts.append(check_text(data.decode("utf-8"), f"text[{index}]"))
        except UnicodeDecodeError:
            raise ProtocolError(f"text[{index}] is not UTF-8") from None
        except DataError as exc:
            raise ProtocolError(str(exc)) from None
    return texts


def update_inputs(request: InferRequest, signature: Signature) -> tuple[list[bytes], list[str]]:
    """An update request's items (``image`` or ``text``, BYTES [N]) and their class names (``label``, BYTES [N])."""
    name = signature.input_name
    items, labels = request.inputs.get(name), request.inputs.get("label")
    if items is None or labels is None or set(request.inputs) != {name, "label"}:
        raise ProtocolError(f"an update takes exactly two inputs: '{name}' (BYTES, "
                            f"{'UTF-8 texts' if signature.text else 'encoded images'}) and 'label' (BYTES, "
                            "class names)")
    if items.datatype != BYTES or labels.datatype != BYTES:
        raise ProtocolError(f"'{name}' and 'label' must both be BYTES")
    signature.check_count(len(items.data))
    if len(items.data) != len(labels.data) or not items.data:
        raise ProtocolError(f"{len(items.data)} {signature.items} and {len(labels.data)} labels; give one label per "
                            f"{signature.items[:-1]}")
    try:
        names = [label.decode("utf-8").strip() for label in labels.data]
    except UnicodeDecodeError:
        raise ProtocolError("labels must be UTF-8 text") from None
    if any(not label or len(label) > MAX_LABEL_CHARS for label in names):
        raise ProtocolError(f"every label must be a non-empty class name of at most {MAX_LABEL_CHARS} characters")
    return items.data, names


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:            # an integer past a float's range
        return False


def update_parameters(parameters: dict) -> dict:
    """An update's parameters as :class:`~edgetl.runtime.learning.settings.UpdateSettings` fields, type-checked: a
    wrong type is a 400, never a guess; what a request leaves out keeps the settings' default."""
    unknown = sorted(set(parameters) - set(UPDATE_PARAMETERS))
    if unknown:
        raise ProtocolError(f"unknown update parameter(s) {', '.join(unknown)} (valid: {', '.join(UPDATE_PARAMETERS)})")
    values = {}
    for key, kind in UPDATE_PARAMETERS.items():
        if key not in parameters:
            continue
        value = parameters[key]
        ok = isinstance(value, bool) if kind is bool else isinstance(value, str) if kind is str else \
            isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
        if not ok:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
            raise ProtocolError(f"update parameter '{key}' must be {kind.__name__}, got {shown}")
        values["holdout_fraction" if key == "holdout" else key] = float(value) if kind is float else value
    if not 0 <= values.get("lock_timeout", 0.0) <= MAX_LOCK_TIMEOUT:
        raise ProtocolError(f"lock_timeout must lie in [0, {MAX_LOCK_TIMEOUT:g}] seconds")
    return values
