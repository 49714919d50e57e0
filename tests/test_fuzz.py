"""Seeded fuzzing of what a client can send to ``edgetl-rt serve`` (issue 27, item 7).

Four targets, each a ``hypothesis`` test, derandomized (the same examples on every run) and without an example
database:

- **parser**: :func:`~edgetl.runtime.serving.protocol.parse_infer_request` and the checks of
  :mod:`~edgetl.runtime.serving.requests` on OIP-shaped documents, arbitrary JSON, and byte mutations of real
  request bodies (inline and binary);
- **tensors**: the binary-tensor decoder (:func:`~edgetl.runtime.serving.protocol.parse_tensor`) on arbitrary
  specs and data, and every datatype's round trip through :func:`encode_infer_response`;
- **images**: :func:`~edgetl.runtime.data.preprocess.preprocess` (``load_image``, crop, normalize) on byte mutations
  of real images (builtin digits, two photos of data/, and small images written in 19 formats) and on random
  bytes behind each format's magic number; beside it, a sweep of every single change of a TIFF directory field
  (about 2,300 files, the same on every run);
- **http**: the whole service, a child process serving the tiny bundle (``serving(...)`` of tests/conftest.py),
  sent mutated infer, classify and update requests, mutated ``Inference-Header-Content-Length`` headers and raw
  mutated HTTP over a socket.

A case fails on an exception escaping the parser other than ``ProtocolError`` (with a 4xx status) or the image
decoder other than ``ImageDecodeError``; a 5xx; a 4xx whose body is not one line of JSON ``{"error": ...}``; no
answer to a request that has a request line; a case that takes longer than :data:`CASE_DEADLINE_S` (a hang: the
bound is far above any real case, so it does not depend on the machine's speed); and, for the service, a peak RSS
(the child's ``VmHWM``, reset before each case through ``/proc/PID/clear_refs``) more than :data:`RSS_BOUND_MB`
above its RSS before the case, or an RSS after the run more than that above its RSS after warming up.

Budget: ``EDGETL_FUZZ_EXAMPLES`` (default 100) examples per unit: 3 units for the parser and the tensor decoder, 2
for images, 1 for the tensors' round trip and for HTTP. ``make test`` runs the default (this file, regression cases
included, in about 10 s on a shared 2-core VM); ``make bench`` runs 5000 (about 5 minutes there).

The findings of this fuzzing (issue 27: 500s from header lengths, huge shapes, long integers and datatypes that are
not strings; multi-line errors; no answer to other HTTP versions; Pillow's TypeError, OverflowError, RuntimeError and
NotImplementedError on mutated TIFF, AVIF and DDS files; NaN pixels; the int32 TIFF's memory) are fixed; each keeps
its minimal reproducer among the regression cases at the end.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import re
import socket
import struct
import subprocess
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, REPO_ROOT, TINY_BUNDLE
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from edgetl.runtime.data.preprocess import PreprocessConfig, preprocess
from edgetl.runtime.errors import ImageDecodeError
from edgetl.runtime.serving.protocol import (
    BYTES,
    DTYPES,
    ProtocolError,
    Tensor,
    encode_infer_response,
    parse_infer_request,
    parse_tensor,
)
from edgetl.runtime.serving.requests import (
    OUTPUTS,
    UPDATE_PARAMETERS,
    Signature,
    infer_input,
    requested_outputs,
    update_inputs,
    update_parameters,
    utf8_texts,
)

#: Examples per unit of budget (see the module's docstring).
EXAMPLES = int(os.environ.get("EDGETL_FUZZ_EXAMPLES", "100"))
#: Longer than any case takes on the slowest machine the suite runs on (a real case takes milliseconds): a case
#: past it is a hang.
CASE_DEADLINE_S = 30.0
#: The most one request may add to the service's peak RSS, at default options, one request at a time: a 4096 x 4096
#: image (--max-pixels) decoded to RGB is 48 MiB, its conversions and crop a few copies of that, an 8 MiB body
#: (--max-body-mb) and its base64 decoding 14 MiB more.
RSS_BOUND_MB = 256
#: Pixels the in-process image decoder accepts here: mutated headers may claim up to this much (4 MP), which keeps
#: the test process small; the service runs at its default (16 MP).
IMAGE_MAX_PIXELS = 1 << 22
CONFIG = PreprocessConfig(32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
# Decoding mutated files makes Pillow warn (corrupt EXIF, tags past the end) and numpy too (NaN cast to uint8: the
# finding nan-pixels); the warnings are not what this test checks.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::RuntimeWarning")]
#: How many values a tensor parsed outside a request may hold (a request passes its body's length).
MAX_VALUES = 1 << 20
SIGNATURES = (Signature(text=False, input_size=32, max_items=256), Signature(text=True, input_size=None, max_items=8))


def fuzz_settings(units: int):
    """The targets' settings: seeded and repeatable, no database, our own deadline (hypothesis's is timed per
    example and re-runs slow ones, which a shared machine turns into flaky failures)."""
    return settings(max_examples=max(1, EXAMPLES * units), derandomize=True, database=None, deadline=None,
                    print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                            HealthCheck.filter_too_much])


# --- failures -----------------------------------------------------------------------------------------------------


def _short(case: object, limit: int = 300) -> str:
    text = repr(case)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _fail(target: str, description: str, case: object) -> None:
    raise AssertionError(f"{target}: {description} <- {_short(case)}")


def _where(error: BaseException) -> str:
    """The innermost frame of the runtime, and the innermost frame of all where it is another (Pillow, numpy)."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if f"{os.sep}runtime{os.sep}" in f.filename]
    mine = f"{Path(ours[-1].filename).name}:{ours[-1].name}" if ours else "?"
    inner = frames[-1] if frames else None
    if inner is None or (ours and inner is ours[-1]):
        return mine
    parts = Path(inner.filename).parts
    library = "/".join(parts[-2:]) if len(parts) >= 2 else inner.filename
    return f"{mine} <- {library}:{inner.name}"


def _describe(error: BaseException) -> str:
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message[:200]} @ {_where(error)}"


class Hang(Exception):
    pass


def _within_deadline(function, *args):
    """``function(*args)`` in a daemon thread, raising :class:`Hang` past :data:`CASE_DEADLINE_S` (the thread is
    left behind: a daemon, it does not hold the interpreter's exit)."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:        # noqa: BLE001 - handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(CASE_DEADLINE_S)
    if thread.is_alive():
        raise Hang(f"no result after {CASE_DEADLINE_S:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --- the seeded mutator -------------------------------------------------------------------------------------------

INTERESTING_8 = (0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF)
INTERESTING_32 = (0, 1, 2, 3, 4, 8, 16, 0xFF, 0x100, 0x1000, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                  0xFFFFFFFF)
OPERATIONS = ("set8", "flip", "set16", "set32", "delete", "insert", "duplicate", "truncate", "field")


def tiff_fields(data: bytes) -> tuple[tuple[int, int], ...]:
    """(offset, size) of the type, count and value of each entry of a TIFF's first directory: where a TIFF's
    meaning lives, so the mutator's ``field`` operation aims there (a uniform byte hits it once in hundreds)."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return ()
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    (entries,) = struct.unpack_from(order + "H", data, offset)
    starts = [offset + 2 + 12 * n for n in range(entries)]
    return tuple((start + delta, size) for start in starts for delta, size in ((2, 2), (4, 4), (8, 4)))


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """``data`` with 1 to 6 mutations, half of them within its first 64 bytes (headers), and for a TIFF in the
    fields of its directory; hypothesis shrinks them to the fewest, earliest and smallest, so a finding's
    reproducer is its seed plus a change or two."""
    out = bytearray(data)
    fields = tiff_fields(data)
    for _ in range(draw(st.integers(1, 6))):
        operation = draw(st.sampled_from(OPERATIONS))
        if not out:
            out += draw(st.binary(min_size=1, max_size=16))
            continue
        if operation == "field" and fields:
            position, size = draw(st.sampled_from(fields))
            value = draw(st.sampled_from(INTERESTING_32) | st.integers(0, 20)) & ((1 << (8 * size)) - 1)
            out[position:position + size] = value.to_bytes(size, "little" if data[:2] == b"II" else "big")
            continue
        position = draw(st.integers(0, min(len(out), 64) - 1) | st.integers(0, len(out) - 1))
        if operation == "set8":
            out[position] = draw(st.sampled_from(INTERESTING_8) | st.integers(0, 255))
        elif operation == "flip":
            out[position] ^= 1 << draw(st.integers(0, 7))
        elif operation in ("set16", "set32", "field"):
            size = 4 if operation == "set32" else 2
            value = draw(st.sampled_from(INTERESTING_32)) & ((1 << (8 * size)) - 1)
            out[position:position + size] = value.to_bytes(size, draw(st.sampled_from(("little", "big"))))
        elif operation == "delete":
            del out[position:position + draw(st.integers(1, 64))]
        elif operation == "insert":
            out[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "duplicate":
            out[position:position] = out[position:position + draw(st.integers(1, 64))]
        else:
            del out[position:]
    return bytes(out)


def mutated(seeds: dict[str, bytes]):
    """(seed name, a mutation of it)."""
    names = sorted(seeds)
    return st.sampled_from(names).flatmap(lambda name: st.tuples(st.just(name), mutations(seeds[name])))


# --- seeds: real images and real requests -------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@functools.cache
def image_seeds() -> dict[str, bytes]:
    """Small real images: three builtin digits, the two smallest photos of data/, and a seeded 12 x 9 picture
    written in 19 formats (32 files: the modes the decoder has a branch for, EXIF rotation, compressions).  EPS,
    which Pillow decodes by running Ghostscript, is left out: a machine with Ghostscript would run it per case."""
    from edgetl.runtime.data.builtin import BUILTIN_DATASETS

    seeds = {}
    digits = BUILTIN_DATASETS["digits"].load_arrays().images
    for n in (0, 1, 2):
        seeds[f"digit-{n}.png"] = _encode(Image.fromarray(digits[n]), "PNG")
    seeds["photo-rose.jpg"] = (DATA / "flowers3" / "rose" / "4.jpg").read_bytes()
    seeds["photo-t-shirt.jpg"] = (DATA / "clothing10" / "val" / "t-shirt" /
                                  "941adb4c-bf6f-4d99-b355-6b0df31fa16a.jpg").read_bytes()
    rng = np.random.default_rng(27)
    pixels = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    rgb = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6                                                   # orientation: rotate 90
    i32 = Image.fromarray(rng.integers(-2 ** 20, 2 ** 20, (9, 12), dtype=np.int32))
    f32 = Image.fromarray(rng.normal(128, 60, (9, 12)).astype(np.float32))
    i16 = Image.fromarray(rng.integers(0, 2 ** 16, (9, 12), dtype=np.uint16))
    seeds.update({
        "rgb.png": _encode(rgb, "PNG"), "l.png": _encode(rgb.convert("L"), "PNG"),
        "la.png": _encode(rgb.convert("LA"), "PNG"), "rgba.png": _encode(rgb.convert("RGBA"), "PNG"),
        "p-transparency.png": _encode(rgb.convert("P"), "PNG", transparency=0),
        "i16.png": _encode(i16, "PNG"),
        "rgb.jpg": _encode(rgb, "JPEG", quality=90), "progressive.jpg": _encode(rgb, "JPEG", progressive=True),
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"), "exif-rotated.jpg": _encode(rgb, "JPEG", exif=exif),
        "p.gif": _encode(rgb.convert("P"), "GIF"), "rgb.bmp": _encode(rgb, "BMP"),
        "raw.tif": _encode(rgb, "TIFF"), "lzw.tif": _encode(rgb, "TIFF", compression="tiff_lzw"),
        "i32-deflate.tif": _encode(i32, "TIFF", compression="tiff_adobe_deflate"),
        "f32.tif": _encode(f32, "TIFF"), "i16.tif": _encode(i16, "TIFF"),
        "rgb.webp": _encode(rgb, "WEBP", quality=80), "lossless.webp": _encode(rgb, "WEBP", lossless=True),
        "rgb.ico": _encode(rgb, "ICO", sizes=[(12, 9)]), "rgb.tga": _encode(rgb, "TGA"),
        "rgb.ppm": _encode(rgb, "PPM"), "rgb.pcx": _encode(rgb, "PCX"), "rgb.sgi": _encode(rgb, "SGI"),
        "rgb.j2k": _encode(rgb, "JPEG2000"), "rgb.qoi": _encode(rgb, "QOI"), "rgb.avif": _encode(rgb, "AVIF"),
        "rgb.dds": _encode(rgb, "DDS"), "rgb.im": _encode(rgb, "IM"), "1.msp": _encode(rgb.convert("1"), "MSP"),
        "1.xbm": _encode(rgb.convert("1"), "XBM"), "f.spider": _encode(rgb.convert("F"), "SPIDER"),
    })
    return seeds


#: The first bytes of each format the decoder reads, for random bytes to follow.
MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBP",
         b"\x00\x00\x01\x00", b"P6\n", b"\x01\xda", b"\x0a\x05\x01\x08", b"\xffO\xffQ",
         b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"qoif", b"\x00\x00\x00\x1cftypavif", b"DDS |\x00\x00\x00",
         b"Image type: RGB image\r\n", b"DanM", b"#define ", b"icns", b"\x00\x00\x02\x00")


def _png(color=(200, 30, 30), size=(32, 32)) -> bytes:
    return _encode(Image.new("RGB", size, color), "PNG")


def infer_body(images: list[bytes], outputs=None) -> bytes:
    document = {"inputs": [{"name": "image", "datatype": BYTES, "shape": [len(images)],
                            "data": [base64.b64encode(x).decode() for x in images],
                            "parameters": {"content_type": "base64"}}]}
    if outputs:
        document["outputs"] = [{"name": name} for name in outputs]
    return json.dumps(document).encode()


def binary_body(document: dict, blobs: list[bytes]) -> tuple[bytes, int]:
    head = json.dumps(document).encode()
    return head + b"".join(blobs), len(head)


def update_body(images: list[bytes], labels: list[str], **parameters) -> bytes:
    return json.dumps({"inputs": [
        {"name": "image", "datatype": BYTES, "shape": [len(images)], "parameters": {"content_type": "base64"},
         "data": [base64.b64encode(x).decode() for x in images]},
        {"name": "label", "datatype": BYTES, "shape": [len(labels)], "data": labels}],
        "parameters": parameters}).encode()


@functools.cache
def request_seeds() -> dict[str, tuple[bytes, int | None]]:
    """Real infer and update bodies, each with its ``Inference-Header-Content-Length`` (None: JSON alone)."""
    tensor = np.random.default_rng(27).normal(0, 1, (1, 3, 32, 32)).astype(np.float32)
    fp32, fp32_head = binary_body({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                               "parameters": {"binary_data_size": tensor.nbytes}}],
                                   "outputs": [{"name": "label"}, {"name": "scores",
                                                                   "parameters": {"binary_data": True}}]},
                                  [tensor.tobytes()])
    png = _png()
    images, images_head = binary_body({"inputs": [{"name": "image", "datatype": BYTES, "shape": [2],
                                                   "parameters": {"binary_data_size": 2 * (4 + len(png))}}],
                                       "parameters": {"binary_data_output": True}},
                                      [struct.pack("<I", len(png)) + png] * 2)
    inline = json.dumps({"id": "7", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                                "data": np.round(tensor, 2).reshape(-1).tolist()}]}).encode()
    return {
        "infer-json": (infer_body([png], ["label", "scores", "head_version"]), None),
        "infer-inline-fp32": (inline, None),
        "infer-binary-fp32": (fp32, fp32_head),
        "infer-binary-bytes": (images, images_head),
        "update-json": (update_body([png], ["red"], skip_bad=True, holdout=0.0), None),
        "text-json": (json.dumps({"inputs": [{"name": "text", "datatype": BYTES, "shape": [1],
                                              "data": ["what is my balance"]}]}).encode(), None),
    }


# --- strategies of OIP-shaped documents ---------------------------------------------------------------------------

BIG_INTS = (0, 1, -1, 3, 32, 2 ** 31, 2 ** 32, 2 ** 63, 2 ** 64, 10 ** 30)
scalars = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.sampled_from(BIG_INTS)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
names = st.sampled_from(["image", "input", "label", "text", ""]) | st.text(max_size=6)
datatypes = st.sampled_from([*DTYPES, BYTES, "fp32", "STRING", ""]) | st.text(max_size=5)
dimensions = st.integers(-2, 4) | st.sampled_from(BIG_INTS) | st.booleans() | st.floats(0, 4)
shapes = st.lists(dimensions, max_size=5) | json_values
elements = (st.integers(-300, 300) | st.floats(allow_nan=True) | st.booleans()
            | st.text(max_size=8) | st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode()))
datas = st.recursive(elements, lambda inner: st.lists(inner, max_size=4), max_leaves=16) | json_values
input_parameters = st.fixed_dictionaries({}, optional={
    "binary_data_size": st.integers(-1, 80) | st.sampled_from(BIG_INTS) | json_values,
    "content_type": st.sampled_from(["base64", "str", "bytes"]) | json_values})
input_specs = st.fixed_dictionaries({}, optional={"name": names, "datatype": datatypes, "shape": shapes,
                                                  "data": datas, "parameters": input_parameters}) | json_values
output_specs = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(OUTPUTS) | names,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data": json_values}) | json_values}) | json_values
request_parameters = st.dictionaries(st.sampled_from([*UPDATE_PARAMETERS, "binary_data_output"]) | st.text(max_size=6),
                                     scalars, max_size=4)
documents = st.fixed_dictionaries({}, optional={
    "id": scalars, "inputs": st.lists(input_specs, max_size=3) | json_values,
    "outputs": st.lists(output_specs, max_size=3) | json_values,
    "parameters": request_parameters | json_values}) | json_values


#: JSON that :mod:`json` parses but a document strategy cannot write: numbers past Python's 4300-digit limit for
#: ``int()``, overflowing floats, deep nesting (the parser's limit is Python's recursion limit), lone surrogates.
RAW_TOKENS = ("9" * 5000, "-" + "1" * 4301, "1" * 4300, "1e999", "-1e999", "NaN", "-Infinity", "0." + "1" * 5000,
              "[" * 990 + "1" + "]" * 990, "[" * 5000 + "]" * 5000, '"\\ud800"', '"\\u0000"', "-0", "1E400")
RAW_TEMPLATES = ('{"inputs": %s}', '{"id": %s, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1], '
                 '"data": [1]}]}',
                 '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, %s], "data": [1]}]}',
                 '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [%s]}]}',
                 '{"inputs": [{"name": "input", "datatype": "INT64", "shape": [1], "data": %s}]}',
                 '{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"], '
                 '"parameters": {"binary_data_size": %s}}]}',
                 '{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]}], '
                 '"parameters": {"holdout": %s, "lock_timeout": %s}}',
                 '{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [%s]}], '
                 '"outputs": [{"name": "label", "parameters": {"binary_data": %s}}]}')


@st.composite
def bodies(draw) -> tuple[bytes, int | None]:
    """(body, Inference-Header-Content-Length): a document and maybe binary data after it, JSON with a raw token
    in it, or a mutated real body."""
    source = draw(st.integers(0, 3))
    if source == 0:
        name, body = draw(mutated({k: v[0] for k, v in request_seeds().items()}))
        header = request_seeds()[name][1]
    elif source == 1:
        template = draw(st.sampled_from(RAW_TEMPLATES))
        tokens = tuple(draw(st.sampled_from(RAW_TOKENS)) for _ in range(template.count("%s")))
        body, header = (template % tokens).encode(), None
    else:
        head = json.dumps(draw(documents)).encode()
        tail = draw(st.binary(max_size=48))
        body, header = head + tail, (len(head) if tail or draw(st.booleans()) else None)
    if draw(st.integers(0, 5)) == 0:
        header = draw(st.none() | st.integers(-2, len(body) + 2))
    return body, header


# --- target: the request parser -----------------------------------------------------------------------------------


class Refusal(Exception):
    """A ``ProtocolError`` that is not a proper refusal (its status, or its message), described."""


def _refused(error: ProtocolError) -> None:
    if not 400 <= error.status < 500:
        raise Refusal(f"ProtocolError with status {error.status}: {error}")
    if "\n" in str(error) or "\r" in str(error):
        raise Refusal(f"ProtocolError message of more than one line: {str(error)!r:.200}")


def parse_and_check(body: bytes, header: int | None) -> None:
    """Everything the service does with a body before the model: parse it, then each check of requests.py."""
    try:
        request = parse_infer_request(body, header)
    except ProtocolError as exc:
        _refused(exc)
        return
    for signature in SIGNATURES:
        for check, argument in ((infer_input, signature), (lambda r, _: requested_outputs(r), None),
                                (lambda r, _: update_parameters(r.parameters), None)):
            try:
                check(request, argument)
            except ProtocolError as exc:
                _refused(exc)
        try:
            items, _ = update_inputs(request, signature)
            if signature.text:
                utf8_texts(items)
        except ProtocolError as exc:
            _refused(exc)


def _expect_protocol(target: str, function, *args) -> None:
    try:
        _within_deadline(function, *args)
    except ProtocolError as exc:
        try:
            _refused(exc)
        except Refusal as refusal:
            _fail(target, str(refusal), args)
    except Refusal as exc:
        _fail(target, str(exc), args)
    except Hang as exc:
        _fail(target, f"hang: {exc}", args)
    except Exception as exc:        # noqa: BLE001 - the finding
        _fail(target, _describe(exc), args)


def test_fuzz_request_parser():
    @fuzz_settings(3)
    @given(case=bodies())
    def run(case):
        _expect_protocol("parser", parse_and_check, *case)

    run()


# --- target: the binary-tensor decoder ----------------------------------------------------------------------------


@st.composite
def tensors(draw) -> Tensor:
    datatype = draw(st.sampled_from([*DTYPES, BYTES]))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    count = int(np.prod(shape))
    if datatype == BYTES:
        return Tensor("x", BYTES, shape, draw(st.lists(st.binary(max_size=8), min_size=count, max_size=count)))
    dtype = np.dtype(DTYPES[datatype])
    raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    return Tensor("x", datatype, shape, np.frombuffer(raw, dtype).reshape(shape))


def test_fuzz_binary_tensors_round_trip():
    """What :func:`encode_infer_response` writes as binary tensors, the request parser reads back bit for bit."""
    @fuzz_settings(1)
    @given(given_tensors=st.lists(tensors(), min_size=1, max_size=3))
    def run(given_tensors):
        named = [Tensor(f"t{i}", t.datatype, t.shape, t.data) for i, t in enumerate(given_tensors)]
        body, header = encode_infer_response("m", "1", None, [(t, True) for t in named], {})
        document = json.loads(body[:header])
        document["inputs"] = document.pop("outputs")
        head = json.dumps(document).encode()
        parsed = parse_infer_request(head + body[header:], len(head)).inputs
        for tensor in named:
            back = parsed[tensor.name]
            assert (back.datatype, back.shape) == (tensor.datatype, tensor.shape)
            if tensor.datatype == BYTES:
                assert back.data == tensor.data
            else:
                assert back.data.dtype == tensor.data.dtype and back.data.tobytes() == tensor.data.tobytes()

    run()


@st.composite
def binary_inputs(draw) -> tuple[object, bytes | None]:
    """(an input's spec, the binary data after the JSON): a spec whose ``binary_data_size`` is often the data's
    length or 0, with shapes of small and huge dimensions, or any spec at all."""
    binary = draw(st.none() | st.binary(max_size=80))
    if draw(st.integers(0, 3)) == 0:
        return draw(input_specs), binary
    size = draw(st.sampled_from([0, len(binary or b"")]) | st.integers(0, 80))
    shape = draw(st.lists(st.integers(0, 4) | st.sampled_from([0, 2 ** 31, 2 ** 32, 2 ** 63, 10 ** 30]), max_size=4))
    spec = {"name": "x", "datatype": draw(st.sampled_from([*DTYPES, BYTES])), "shape": shape,
            "parameters": {"binary_data_size": size}}
    return spec, binary


def _parse_tensor(spec, binary: bytes | None):
    """As the service parses an input: at most as many values as a body of this size can carry."""
    return parse_tensor(spec, None if binary is None else memoryview(binary), MAX_VALUES)


def test_fuzz_binary_tensor_decoder():
    @fuzz_settings(3)
    @given(case=binary_inputs())
    def run(case):
        spec, binary = case
        _expect_protocol("tensors", _parse_tensor, spec, binary)

    run()


# --- target: the image decoder ------------------------------------------------------------------------------------


def decode_and_check(data: bytes) -> None:
    array = preprocess(data, CONFIG, max_pixels=IMAGE_MAX_PIXELS)
    assert array.shape == (3, 32, 32) and array.dtype == np.float32 and np.isfinite(array).all(), array.shape


def test_fuzz_image_decoder():
    randoms = st.tuples(st.sampled_from(MAGIC), st.binary(max_size=200)).map(lambda p: ("magic", p[0] + p[1]))

    @fuzz_settings(2)
    @given(case=mutated(image_seeds()) | randoms)
    def run(case):
        try:
            _within_deadline(decode_and_check, case[1])
        except ImageDecodeError:
            pass
        except Hang as exc:
            _fail("images", f"hang: {exc}", case)
        except Exception as exc:        # noqa: BLE001 - the finding
            _fail("images", _describe(exc), case)

    run()


def test_every_tiff_directory_field_change():
    """Exhaustive where random mutation is thin: each directory entry of each TIFF seed with its type set to each of
    0 to 20, its count and its value to each interesting value, one change at a time (about 2,300 files)."""
    choices = (range(21), (0, 2, 3, 4, 8, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF), INTERESTING_32)   # type, count, value
    for name, data in sorted(image_seeds().items()):
        for n, (position, size) in enumerate(tiff_fields(data)):
            for value in choices[n % 3]:
                case = (name, position, value)
                order = "little" if data[:2] == b"II" else "big"
                changed = data[:position] + value.to_bytes(size, order) + data[position + size:]
                try:
                    _within_deadline(decode_and_check, changed)
                except ImageDecodeError:
                    pass
                except Hang as exc:
                    _fail("images", f"hang: {exc}", case)
                except Exception as exc:        # noqa: BLE001 - the finding
                    _fail("images", _describe(exc), case)


def test_every_image_seed_decodes():
    """The mutator starts from images the decoder reads, so it explores past their headers."""
    failed = {}
    for name, data in image_seeds().items():
        try:
            decode_and_check(data)
        except Exception as exc:       # noqa: BLE001 - collected, then reported together
            failed[name] = _describe(exc)
    assert not failed and len(image_seeds()) == 37, failed


# --- target: the whole service over HTTP --------------------------------------------------------------------------

CHILD = """
import sys
sys.path.insert(0, {tests!r})
from conftest import serving
with serving({bundle!r}, measure=False) as (server, address, events):
    print(address, flush=True)
    sys.stdin.read()
"""


@dataclass
class Service:
    process: subprocess.Popen
    address: str
    baseline_kb: int = 0

    def memory(self) -> dict[str, int]:
        lines = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in lines)
                if k in ("VmHWM", "VmRSS")}

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")     # VmHWM := VmRSS


@pytest.fixture(scope="module")
def service(tmp_path_factory, child_python):
    """``serving(...)`` of the tiny bundle (a copy: updates commit into it) in a child process."""
    import shutil

    if not Path("/proc/self/clear_refs").exists():
        pytest.fail("the HTTP fuzz target measures the service's peak RSS through /proc (Linux)", pytrace=False)
    bundle = tmp_path_factory.mktemp("fuzz") / "tiny-bundle"
    shutil.copytree(TINY_BUNDLE, bundle)
    source = CHILD.format(tests=str(REPO_ROOT / "tests"), bundle=str(bundle))
    process = subprocess.Popen([child_python, "-c", source], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True)
    try:
        address = process.stdout.readline().strip()
        assert address, "the service did not start"
        served = Service(process, address)
        for _ in range(3):                                     # warm up: the first requests load what they need
            assert send(served, _http("POST", "/v2/models/digits/infer", infer_body([_png()])))[0] == 200
        served.baseline_kb = served.memory()["VmRSS"]
        yield served
    finally:
        process.stdin.close()                                  # the child drains the service and exits
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _http(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: fuzz"]
    if method == "POST":
        lines.append(b"Content-Length: " + str(len(body)).encode())
    for key, value in (headers or {}).items():
        lines.append(key.encode() + b": " + (value if isinstance(value, bytes) else value.encode()))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def send(service: Service, raw: bytes) -> tuple[int | None, bytes, str]:
    """Send ``raw``, close our side (so the service never waits for more), read the answer to the end:
    (status or None, body, how the connection ended)."""
    host, port = service.address.split(":")
    received, ended = b"", "eof"
    with socket.create_connection((host, int(port)), timeout=CASE_DEADLINE_S) as connection:
        try:
            connection.sendall(raw)
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            ended = "reset while sending"
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except TimeoutError:
            ended = "hang"
        except OSError:
            ended = "reset"
    head, _, body = received.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    if match is None:
        return None, received, ended
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    return int(match.group(1)), body[:int(length.group(1))] if length else body, ended


HEADER_LENGTHS = st.sampled_from([b"\xb2", b"\xb9", "\u0663".encode(), b" 12", b"-1", b"+5", b"1_0", b"0x10", b"",
                                  b"9" * 5000, b"1" * 20]) | st.integers(-1, 300).map(lambda n: str(n).encode())
QUERIES = st.sampled_from(["", "?top_k=2", "?top_k=0", "?top_k=-1", "?top_k=x", "?top_k=" + "9" * 5000,
                           "?top_k=\u00b2"]) | st.text(max_size=12).map(lambda t: "?top_k=" + t)


@st.composite
def http_cases(draw) -> bytes:
    """One raw HTTP request."""
    kind = draw(st.sampled_from(["infer-image", "classify", "update", "body", "header-length", "raw"]))
    model = "/v2/models/digits"
    if kind == "infer-image":
        images = [draw(mutated(image_seeds()))[1] for _ in range(draw(st.integers(1, 3)))]
        outputs = draw(st.none() | st.lists(st.sampled_from(OUTPUTS) | names, max_size=4))
        return _http("POST", model + "/infer", infer_body(images, outputs))
    if kind == "classify":
        return _http("POST", model + "/classify" + draw(QUERIES), draw(mutated(image_seeds()))[1])
    if kind == "update":
        images = [draw(mutated(image_seeds()))[1] for _ in range(draw(st.integers(1, 2)))]
        labels = draw(st.lists(st.sampled_from(["red", "green", "blue"]) | st.text(max_size=6),
                               min_size=len(images), max_size=len(images)))
        return _http("POST", model + "/update", update_body(images, labels, skip_bad=draw(st.booleans()),
                                                            holdout=0.0, force=True))
    if kind == "body":
        body, header = draw(bodies())
        route = draw(st.sampled_from(["/infer", "/update"]))
        headers = {} if header is None else {"Inference-Header-Content-Length": str(header)}
        return _http("POST", model + route, body, headers)
    if kind == "header-length":
        body, _ = request_seeds()["infer-binary-fp32"]
        return _http("POST", model + "/infer", body, {"Inference-Header-Content-Length": draw(HEADER_LENGTHS)})
    seed = {"infer": _http("POST", model + "/infer", infer_body([_png()])),
            "ready": _http("GET", "/v2/health/ready"), "metadata": _http("GET", model),
            "classify": _http("POST", model + "/classify?top_k=2", _png())}
    return draw(mutated(seed))[1]


def check_answer(service: Service, raw: bytes) -> str | None:
    """What is wrong with the service's answer to ``raw`` (None: nothing)."""
    before = service.memory()["VmRSS"]
    service.reset_peak()
    status, body, ended = send(service, raw)
    if service.process.poll() is not None:
        return f"the service exited with {service.process.returncode}"
    peak = service.memory()["VmHWM"]
    if ended == "hang":
        return f"hang: no answer after {CASE_DEADLINE_S:g} s"
    if (peak - before) / 1024 > RSS_BOUND_MB:
        return f"memory: peak RSS {peak // 1024} MB, {(peak - before) // 1024} MB over the {before // 1024} MB before"
    if status is None:
        line = raw.split(b"\n", 1)[0].strip()
        if line and ended == "eof":
            return f"no response to a request line ({line[:60]!r}; {len(body)} bytes back)"
        return None                             # nothing to answer, or the connection was reset (counted below)
    text = body.decode("utf-8", "replace")
    if status >= 500 and status != 505:         # 505: an HTTP version the service does not speak (issue 27 allows it)
        return f"HTTP {status}: {text[:300]}"
    if status >= 400:
        try:
            error = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            return f"HTTP {status} without a JSON error: {text[:200]}"
        if not isinstance(error, str) or "Traceback" in error:
            return f"HTTP {status} with a traceback or no error text: {error!r:.200}"
        if "\n" in error or "\r" in error:
            return f"HTTP {status} with an error of more than one line: {error!r:.200}"
    return None


def test_fuzz_the_service_over_http(service):
    @fuzz_settings(1)
    @given(raw=http_cases())
    def run(raw):
        problem = check_answer(service, raw)
        if problem is not None:
            _fail("http", problem, raw)

    run()
    # the service is still up, answers a normal request, and kept its memory
    status, body, _ = send(service, _http("POST", "/v2/models/digits/infer", infer_body([_png()], ["label"])))
    assert status == 200, body
    rss = service.memory()["VmRSS"]
    assert (rss - service.baseline_kb) / 1024 <= RSS_BOUND_MB, (rss, service.baseline_kb)


# --- regression cases: the minimal reproducers of the findings ----------------------------------------------------


def tiff_entry(data: bytes, entry: int, field: str, value: int) -> bytes:
    """``data`` (a little-endian TIFF) with the ``type``, ``count`` or ``value`` of its directory's ``entry`` set."""
    position, size = tiff_fields(data)[3 * entry + ("type", "count", "value").index(field)]
    return data[:position] + value.to_bytes(size, "little") + data[position + size:]


def strip_offsets_as(kind: int) -> bytes:
    """The seed's raw RGB TIFF with its StripOffsets (entry 5, tag 273) typed ``kind``: 2 (ASCII) makes Pillow
    raise TypeError, 16 (LONG8) OverflowError, both from ``ImageFile.load``."""
    return tiff_entry(image_seeds()["raw.tif"], 5, "type", kind)


def avif_without_iloc() -> bytes:
    """The seed AVIF with its item-location box renamed (``iloc`` -> ``\\0loc``): Pillow raises RuntimeError ("Failed
    to decode image: Missing or empty image item") while opening it."""
    data = image_seeds()["rgb.avif"]
    assert data.count(b"iloc") == 1
    return data.replace(b"iloc", b"\x00loc")


def dds_unknown_flags() -> bytes:
    """The seed DDS with its pixel format's flags (offset 80) set to 0x4000: Pillow raises NotImplementedError."""
    data = image_seeds()["rgb.dds"]
    return data[:80] + (0x4000).to_bytes(4, "little") + data[84:]


def nan_tiff() -> bytes:
    return _encode(Image.fromarray(np.full((9, 12), np.nan, np.float32)), "TIFF")


@functools.cache
def int32_tiff_4096() -> bytes:
    """The issue's memory case: a deflate-compressed 4096 x 4096 int32 TIFF (tens of kB, 64 MiB of pixels)."""
    return _encode(Image.fromarray(np.zeros((4096, 4096), np.int32)), "TIFF", compression="tiff_adobe_deflate")


LONG_INT = "9" * 5000
DATATYPE_LIST = b'{"inputs": [{"name": "input", "datatype": [], "shape": [1], "data": [1]}]}'
OUTPUT_NEWLINE = b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]}], ' \
                 b'"outputs": [{"name": "\\n"}]}'
SHAPE_OVERFLOW = {"name": "input", "datatype": "FP32", "shape": [0, 10 ** 30], "parameters": {"binary_data_size": 0}}


@pytest.mark.parametrize("call", [
    pytest.param(lambda: parse_tensor(SHAPE_OVERFLOW, memoryview(b""), MAX_VALUES), id="shape-overflow"),
    pytest.param(lambda: parse_tensor({**SHAPE_OVERFLOW, "datatype": "BOOL", "shape": [0, 2 ** 31, 2 ** 32]},
                                      memoryview(b""), MAX_VALUES), id="shape-too-big"),
    pytest.param(lambda: parse_tensor({**SHAPE_OVERFLOW, "datatype": "BOOL", "shape": [2 ** 31, 2 ** 32, 0]},
                                      memoryview(b""), MAX_VALUES), id="shape-cannot-reshape"),
    pytest.param(lambda: parse_infer_request(b'{"inputs": ' + LONG_INT.encode() + b"}"), id="json-long-int"),
    pytest.param(lambda: update_parameters({"holdout": 10 ** 400}), id="update-parameter-long-int"),
    pytest.param(lambda: parse_infer_request(DATATYPE_LIST), id="datatype-unhashable"),
    pytest.param(lambda: requested_outputs(parse_infer_request(OUTPUT_NEWLINE)), id="error-not-one-line"),
    pytest.param(lambda: parse_infer_request(b'{"inputs": [{"name": "x\\n", "datatype": "FP32", "shape": [2], '
                                             b'"data": [1]}]}'), id="error-not-one-line-input"),
])
def test_regression_requests_are_protocol_errors(call):
    with pytest.raises(ProtocolError) as caught:
        call()
    assert 400 <= caught.value.status < 500 and "\n" not in str(caught.value)


@pytest.mark.parametrize("data", [
    pytest.param(lambda: strip_offsets_as(2), id="tiff-type-error"),
    pytest.param(lambda: strip_offsets_as(16), id="tiff-overflow-error"),
    pytest.param(avif_without_iloc, id="avif-runtime-error"),
    pytest.param(dds_unknown_flags, id="dds-not-implemented-error"),
    pytest.param(nan_tiff, id="nan-pixels"),
])
def test_regression_images_are_image_decode_errors(data):
    with pytest.raises(ImageDecodeError):
        preprocess(data(), CONFIG, max_pixels=IMAGE_MAX_PIXELS)



def _binary_fp32() -> bytes:
    return request_seeds()["infer-binary-fp32"][0]

_INFER = "/v2/models/digits/infer"


def _binary_request(document: dict, blob: bytes = b"") -> bytes:
    body, header = binary_body(document, [blob])
    return _http("POST", _INFER, body, {"Inference-Header-Content-Length": str(header)})


@pytest.mark.parametrize("raw, statuses", [
    pytest.param(lambda: _http("POST", _INFER, _binary_fp32(), {"Inference-Header-Content-Length": b"\xb2"}), {400},
                 id="header-length-superscript"),
    pytest.param(lambda: _http("POST", _INFER, _binary_fp32(), {"Inference-Header-Content-Length": LONG_INT}), {400},
                 id="header-length-5000-digits"),
    pytest.param(lambda: _binary_request({"inputs": [SHAPE_OVERFLOW]}), {400}, id="shape-overflow"),
    pytest.param(lambda: _http("POST", _INFER, b'{"inputs": ' + LONG_INT.encode() + b"}"), {400}, id="json-long-int"),
    pytest.param(lambda: _http("POST", "/v2/models/digits/update", update_body([_png()], ["red"]).replace(
        b'"parameters": {}', b'"parameters": {"holdout": 1' + b"0" * 400 + b"}")), {400},
        id="update-parameter-long-int"),
    pytest.param(lambda: _http("POST", _INFER, DATATYPE_LIST), {400}, id="datatype-unhashable"),
    pytest.param(lambda: _http("POST", _INFER, OUTPUT_NEWLINE), {400}, id="error-not-one-line"),
    pytest.param(lambda: _http("POST", "/v2/models/digits/classify", strip_offsets_as(2)), {400}, id="tiff-type-error"),
    pytest.param(lambda: _http("POST", "/v2/models/digits/classify", strip_offsets_as(16)), {400},
                 id="tiff-overflow-error"),
    pytest.param(lambda: _http("POST", _INFER, infer_body([avif_without_iloc()])), {400}, id="avif-runtime-error"),
    pytest.param(lambda: _http("POST", _INFER, infer_body([dds_unknown_flags()])), {400},
                 id="dds-not-implemented-error"),
    pytest.param(lambda: _http("POST", "/v2/models/digits/classify", nan_tiff()), {400}, id="nan-pixels"),
    pytest.param(lambda: _http("POST", "/v2/models/digits/classify", int32_tiff_4096()), {200}, id="int32-tiff-4096"),
    pytest.param(lambda: b"POST /v2/models/digits/infer \x00HTTP/1.1\r\nHost: fuzz\r\n\r\n", {400},
                 id="garbage-request-line"),
    pytest.param(lambda: b"GET /v2/health/ready HTTP/2.0\r\nHost: fuzz\r\n\r\n", {400, 505}, id="http-2"),
    pytest.param(lambda: b"\x00OST /v2/models/digits/classify HTTP/1.1\r\nHost: fuzz\r\nContent-Length: 0\r\n\r\n",
                 {400, 405}, id="malformed-method"),
    pytest.param(lambda: _http("POST", _INFER, infer_body([_png()], ["label"])), {200}, id="normal-request"),
])
def test_regression_over_http(service, raw, statuses):
    request = raw()
    assert check_answer(service, request) is None
    assert send(service, request)[0] in statuses
