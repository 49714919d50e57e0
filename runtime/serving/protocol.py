"""The Open Inference Protocol (KServe v2 REST) request and response bodies, with Triton's binary tensor extension.

Clients such as ``tritonclient.http`` send tensors either inline in the JSON (``"data"``) or, by default, as raw
bytes after the JSON (the request's ``Inference-Header-Content-Length`` header gives the JSON's size, each input's
``parameters.binary_data_size`` its share).  BYTES tensors are raw as 4-byte little-endian lengths each followed by
the element; inline, an element is a string, base64 when the input says ``"content_type": "base64"`` (MLServer's
convention, so a JPEG fits in JSON).  Everything a client can get wrong raises :class:`ProtocolError` with the HTTP
status it earns.

Every list a request holds is bounded before it is built on: the JSON's arrays, objects and strings, the inputs,
the requested outputs, the parameters, a shape's rank and its element count (which the body must be able to carry;
BYTES elements at most ``max_items``), the nesting of ``data``, and names.  So a small body cannot make a large
response or a large allocation.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
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
#: Arrays, objects and strings one request's JSON may hold (a nested FP32 input [N, 3, S, S] takes N * (3 * S + 4)).
MAX_JSON_VALUES = 100_000
#: Inputs and requested outputs one request may list (the service takes two inputs and has four outputs).
MAX_INPUTS = MAX_OUTPUTS = 16
#: Keys of one ``parameters`` object.
MAX_PARAMETERS = 32
#: Dimensions of one shape (and the nesting of its inline ``data``).
MAX_RANK = 8
#: Characters of an input's or output's name, and of a request's id.
MAX_NAME_CHARS = 256


def one_line(text: str) -> str:
    """``text`` with its control characters (a newline in a client's name, say) escaped: an error stays one line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class ProtocolError(Exception):
    """A request the service refuses: ``status`` is its HTTP status (4xx), the message its JSON ``error`` (one line:
    the client's own text in it is escaped)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(one_line(message))
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


def _object(value, what: str, max_keys: int = MAX_PARAMETERS) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    if len(value) > max_keys:
        raise ProtocolError(f"{what} has {len(value)} keys; at most {max_keys}")
    return value


def _name(value, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"every {what} needs a 'name'")
    if len(value) > MAX_NAME_CHARS:
        raise ProtocolError(f"a {what} name of {len(value)} characters; at most {MAX_NAME_CHARS}")
    return value


def _shape(value, name: str, max_count: int, status: int = 400, what: str = "values") -> list[int]:
    """A shape: at most :data:`MAX_RANK` non-negative integers whose non-zero ones multiply to at most
    ``max_count`` (checked as it multiplies: ``[0, 10**30]`` holds nothing yet describes too much)."""
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value[:MAX_RANK + 1]):
        raise ProtocolError(f"input '{name}': shape must be a list of non-negative integers")
    if len(value) > MAX_RANK:
        raise ProtocolError(f"input '{name}': a shape of {len(value)} dimensions; at most {MAX_RANK}")
    described = 1
    for dimension in value:
        described *= max(dimension, 1)
        if described > max_count:
            shown = str(value) if len(str(value)) <= 80 else str(value)[:80] + "...]"
            raise ProtocolError(f"input '{name}': shape {shown} holds more than {max_count} {what}", status)
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
    flat = _flatten(data, count, name)
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


def _flatten(data, count: int, name: str) -> list:
    """Inline ``data``, nested or flat, as one list: nested at most :data:`MAX_RANK` deep and holding at most
    ``count`` values (walked without recursion: the cost is the values', not values times depth)."""
    flat, stack = [], [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, list):
            flat.append(item)
            if len(flat) > count:
                break
            continue
        if depth >= MAX_RANK:
            raise ProtocolError(f"input '{name}': data nests deeper than {MAX_RANK} lists")
        stack.extend((child, depth + 1) for child in reversed(item))
    return flat


def parse_tensor(spec, binary: memoryview | None, max_values: int, max_items: int | None = None) -> tuple[Tensor, int]:
    """One input of a request; ``binary`` is the data after the JSON (None without it); ``max_values`` bounds its
    elements (what the body can carry), ``max_items`` a BYTES input's (413 beyond).  Returns the tensor and how
    many binary bytes it used."""
    spec = _object(spec, "every input")
    name = _name(spec.get("name"), "input")
    datatype = spec.get("datatype")
    if not isinstance(datatype, str) or (datatype != BYTES and datatype not in DTYPES):
        shown = repr(datatype)[:40] if isinstance(datatype, (str, int, float)) else type(datatype).__name__
        raise ProtocolError(f"input '{name}': unknown datatype {shown} (valid: {', '.join([BYTES, *DTYPES])})")
    if datatype == BYTES and max_items is not None and max_items < max_values:
        shape = _shape(spec.get("shape"), name, max_items, 413, "elements (--max-images per request)")
    else:
        shape = _shape(spec.get("shape"), name, max_values, what="values (more than the body carries)")
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
    flat = _flatten(spec["data"], count, name)
    if len(flat) != count:
        raise ProtocolError(f"input '{name}': {'more' if len(flat) > count else len(flat)} values do not fill the "
                            f"shape {shape}")
    if not all(isinstance(x, (int, float)) for x in flat):
        raise ProtocolError(f"input '{name}': {datatype} data must be numbers")
    try:
        array = np.array(flat, dtype=DTYPES[datatype]).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise ProtocolError(f"input '{name}': {exc}") from None
    return Tensor(name, datatype, shape, array), 0


def parse_infer_request(body: bytes, header_length: int | None = None, max_items: int | None = None) -> InferRequest:
    """An OIP infer (or update) request body; ``header_length`` from ``Inference-Header-Content-Length``;
    ``max_items`` bounds each BYTES input's elements (413 beyond; the service passes its ``--max-images``)."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise ProtocolError(f"Inference-Header-Content-Length {header_length} does not fit a body of {len(body)} bytes")
    head = body if header_length is None else body[:header_length]
    binary = None if header_length is None else memoryview(body)[header_length:]
    values = head.count(b"[") + head.count(b"{") + head.count(b'"') // 2      # before parsing: what it would build
    if values > MAX_JSON_VALUES:
        raise ProtocolError(f"the request's JSON holds about {values} arrays, objects and strings; at most "
                            f"{MAX_JSON_VALUES}")
    try:
        document = json.loads(head)
    except ValueError as exc:        # not UTF-8, not JSON, or an integer past Python's digit limit
        raise ProtocolError(f"the request body is not valid JSON ({str(exc)[:120]})") from None
    except RecursionError:
        raise ProtocolError("the request body nests JSON too deeply") from None
    document = _object(document, "the request body")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    if len(raw_inputs) > MAX_INPUTS:
        raise ProtocolError(f"{len(raw_inputs)} inputs; at most {MAX_INPUTS}")
    inputs, offset = {}, 0
    for spec in raw_inputs:
        tensor, used = parse_tensor(spec, None if binary is None else binary[offset:], len(body), max_items)
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
        specs = document["outputs"] if isinstance(document["outputs"], list) else [None]
        if len(specs) > MAX_OUTPUTS:
            raise ProtocolError(f"{len(specs)} requested outputs; at most {MAX_OUTPUTS}")
        for spec in specs:
            spec = _object(spec, "every requested output")
            name = _name(spec.get("name"), "requested output")
            out_parameters = _object(spec.get("parameters", {}), f"output '{name}' parameters")
            outputs.append(RequestedOutput(name, bool(out_parameters.get("binary_data", binary_default))))
    return InferRequest(_request_id(document.get("id")), inputs, outputs, binary_default, parameters)


def _request_id(value) -> str | None:
    """The request's ``id`` (a string; a number is taken as its text), echoed in the response."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ProtocolError("the request's 'id' must be a string")
    text = value if isinstance(value, str) else repr(value)[:MAX_NAME_CHARS + 1]
    if len(text) > MAX_NAME_CHARS:
        raise ProtocolError(f"the request's 'id' has more than {MAX_NAME_CHARS} characters")
    return text


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
