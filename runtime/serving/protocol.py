"""The Open Inference Protocol (KServe v2 REST) request and response bodies, with Triton's binary tensor extension.

Clients such as ``tritonclient.http`` send tensors either inline in the JSON (``"data"``) or, by default, as raw
bytes after the JSON (the request's ``Inference-Header-Content-Length`` header gives the JSON's size, each input's
``parameters.binary_data_size`` its share).  BYTES tensors are raw as 4-byte little-endian lengths each followed by
the element; inline, an element is a string, base64 when the input says ``"content_type": "base64"`` (MLServer's
convention, so a JPEG fits in JSON).  Everything a client can get wrong raises :class:`ProtocolError` with the HTTP
status it earns.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

#: OIP datatype -> numpy dtype (BYTES is a list of ``bytes``).
DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
BYTES = "BYTES"


class ProtocolError(Exception):
    """A request the service refuses: ``status`` is its HTTP status (4xx), the message its JSON ``error``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Tensor:
    """One named tensor: ``data`` is a numpy array, or a list of ``bytes`` for BYTES."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]


@dataclass
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, Tensor]
    outputs: list[RequestedOutput] | None        # None: every output
    binary_default: bool                          # the request's ``binary_data_output`` parameter
    parameters: dict = field(default_factory=dict)


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _shape(value, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise ProtocolError(f"input '{name}': shape must be a list of non-negative integers, got {value!r}")
    return value


def _split_bytes(raw: bytes, count: int, name: str) -> list[bytes]:
    """A binary BYTES tensor: ``count`` elements, each a 4-byte little-endian length and its bytes."""
    items, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise ProtocolError(f"input '{name}': binary BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ProtocolError(f"input '{name}': binary BYTES element of {size} bytes runs past the data")
        items.append(raw[offset:offset + size])
        offset += size
    if offset != len(raw):
        raise ProtocolError(f"input '{name}': {len(raw) - offset} bytes left over after {count} BYTES elements")
    return items


def _inline_bytes(data, count: int, name: str, encoding: str | None) -> list[bytes]:
    flat = list(_flatten(data))
    if len(flat) != count or not all(isinstance(x, str) for x in flat):
        raise ProtocolError(f"input '{name}': BYTES data must be {count} string(s) for its shape")
    if encoding == "base64":
        try:
            return [base64.b64decode(x, validate=True) for x in flat]
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"input '{name}': invalid base64 ({exc})") from None
    if encoding not in (None, "str"):
        raise ProtocolError(f"input '{name}': unknown content_type '{encoding}' (valid: str, base64)")
    try:
        return [x.encode("utf-8") for x in flat]
    except UnicodeEncodeError:
        raise ProtocolError(f"input '{name}': BYTES strings must be valid Unicode (no lone surrogates)") from None


def _flatten(data):
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def parse_tensor(spec, binary: memoryview | None) -> tuple[Tensor, int]:
    """One input of a request; ``binary`` is the data after the JSON (None without it).  Returns the tensor and
    how many binary bytes it used."""
    spec = _object(spec, "every input")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError("every input needs a 'name'")
    datatype = spec.get("datatype")
    if datatype != BYTES and datatype not in DTYPES:
        raise ProtocolError(f"input '{name}': unknown datatype {datatype!r}")
    shape = _shape(spec.get("shape"), name)
    count = math.prod(shape)
    parameters = _object(spec.get("parameters", {}), f"input '{name}' parameters")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"input '{name}': binary_data_size must be a non-negative integer")
        if binary is None or size > len(binary):
            raise ProtocolError(f"input '{name}': binary_data_size {size} is more than the binary data sent")
        raw = bytes(binary[:size])
        if datatype == BYTES:
            return Tensor(name, datatype, shape, _split_bytes(raw, count, name)), size
        dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
        if size != count * dtype.itemsize:
            raise ProtocolError(f"input '{name}': {size} bytes of {datatype} do not fill the shape {shape}")
        return Tensor(name, datatype, shape, np.frombuffer(raw, dtype).astype(DTYPES[datatype]).reshape(shape)), size
    if "data" not in spec:
        raise ProtocolError(f"input '{name}' has neither 'data' nor binary_data_size")
    if datatype == BYTES:
        return Tensor(name, datatype, shape, _inline_bytes(spec["data"], count, name,
                                                           parameters.get("content_type"))), 0
    flat = list(_flatten(spec["data"]))
    if len(flat) != count:
        raise ProtocolError(f"input '{name}': {len(flat)} values do not fill the shape {shape}")
    if not all(isinstance(x, (int, float)) for x in flat):
        raise ProtocolError(f"input '{name}': {datatype} data must be numbers")
    try:
        array = np.array(flat, dtype=DTYPES[datatype]).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise ProtocolError(f"input '{name}': {exc}") from None
    return Tensor(name, datatype, shape, array), 0


def parse_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """An OIP infer (or update) request body; ``header_length`` from ``Inference-Header-Content-Length``."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise ProtocolError(f"Inference-Header-Content-Length {header_length} does not fit a body of {len(body)} bytes")
    head = body if header_length is None else body[:header_length]
    binary = None if header_length is None else memoryview(body)[header_length:]
    try:
        document = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise ProtocolError("the request body nests JSON too deeply") from None
    document = _object(document, "the request body")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    inputs, offset = {}, 0
    for spec in raw_inputs:
        tensor, used = parse_tensor(spec, None if binary is None else binary[offset:])
        if tensor.name in inputs:
            raise ProtocolError(f"input '{tensor.name}' given twice")
        inputs[tensor.name] = tensor
        offset += used
    if binary is not None and offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    parameters = _object(document.get("parameters", {}), "the request's parameters")
    binary_default = bool(parameters.get("binary_data_output", False))
    outputs = None
    if "outputs" in document:
        outputs = []
        for spec in document["outputs"] if isinstance(document["outputs"], list) else [None]:
            spec = _object(spec, "every requested output")
            if not isinstance(spec.get("name"), str):
                raise ProtocolError("every requested output needs a 'name'")
            out_parameters = _object(spec.get("parameters", {}), f"output '{spec['name']}' parameters")
            outputs.append(RequestedOutput(spec["name"], bool(out_parameters.get("binary_data", binary_default))))
    request_id = document.get("id")
    return InferRequest(None if request_id is None else str(request_id), inputs, outputs, binary_default, parameters)


def _inline(tensor: Tensor):
    if tensor.datatype == BYTES:
        return [item.decode("utf-8", errors="replace") for item in tensor.data]
    return np.asarray(tensor.data).reshape(-1).tolist()


def _raw(tensor: Tensor) -> bytes:
    if tensor.datatype == BYTES:
        return b"".join(struct.pack("<I", len(item)) + item for item in tensor.data)
    return np.ascontiguousarray(tensor.data, dtype=np.dtype(DTYPES[tensor.datatype]).newbyteorder("<")).tobytes()


def encode_infer_response(model_name: str, model_version: str, request_id: str | None,
                          outputs: list[tuple[Tensor, bool]], parameters: dict) -> tuple[bytes, int | None]:
    """The response body and, when any output goes binary, the JSON's length for ``Inference-Header-Content-Length``."""
    described, blobs = [], []
    for tensor, binary in outputs:
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary:
            blob = _raw(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _inline(tensor)
        described.append(entry)
    document = {"model_name": model_name, "model_version": model_version, "outputs": described,
                "parameters": parameters}
    if request_id is not None:
        document["id"] = request_id
    head = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
