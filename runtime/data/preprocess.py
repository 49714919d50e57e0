"""Image decoding and preprocessing, implemented once for host and device.

The host extracts training features with exactly this code and the device
runtime predicts with it, so the two can never disagree on how an image
becomes a tensor (the most common cause of "accuracy dropped after export").
Only numpy and Pillow are used.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ConfigError, ImageDecodeError
from .text import TextPreprocess

#: Default pixel limit (width * height) above which an image is refused as a
#: likely decompression bomb; the same figure Pillow warns at.
DEFAULT_MAX_PIXELS = 89_478_485

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

#: Version of the arithmetic that turns an image into its crop.  Feature caches of images record it, so features
#: made by another version are computed again: 2 (edgetl 0.7) resamples only the crop's box, where 1 resized the
#: whole image and then cropped.  The geometry is the same; Pillow's rounding differs: on 90 real photos at 32 to
#: 240 px, pixels moved by at most 2 levels with bilinear resampling, 7 with bicubic, 11 with lanczos, and nearest
#: picked another neighbour on ties.
#: 3 decodes a JPEG 2000 image at the coarsest of its resolution levels that keeps its shorter side at least the resize
#: (as a JPEG is drafted); other formats' pixels are those of 2.
CROP_ARITHMETIC = 3

T = TypeVar("T")

#: A file path, decoded pixels, or the encoded bytes of an image file (what a service receives).
ImageSource = str | Path | np.ndarray | Image.Image | bytes


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the network's input tensor (recorded in every bundle).

    The shorter side is resized to ``resize_size`` with ``interpolation``, the
    centre ``input_size`` square is cropped, pixels are scaled to [0, 1] and
    normalized per channel with ``mean`` and ``std``.  Output layout is NCHW
    float32, RGB.
    """

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    kind = "image"
    pad_id = None          # a text model's pad token (TextPreprocess); images have none

    def __post_init__(self) -> None:
        if self.input_size < 8:
            raise ConfigError(f"input size {self.input_size} is too small (at least 8 pixels)")
        if self.resize_size < self.input_size:
            raise ConfigError(
                f"resize size {self.resize_size} is smaller than the crop {self.input_size}"
            )
        if self.interpolation not in _RESAMPLING:
            raise ConfigError(
                f"unknown interpolation '{self.interpolation}'; choose one of {sorted(_RESAMPLING)}"
            )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std}")

    @classmethod
    def for_size(
        cls,
        input_size: int,
        crop_pct: float,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        interpolation: str = "bilinear",
    ) -> PreprocessConfig:
        """The timm convention: resize to ``input_size / crop_pct``, then crop."""
        if not 0.0 < crop_pct <= 1.0:
            raise ConfigError(f"crop fraction must be in (0, 1], got {crop_pct}")
        return cls(
            input_size=input_size,
            resize_size=int(round(input_size / crop_pct)),
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            interpolation=interpolation,
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        return cls(
            input_size=int(data["input_size"]),
            resize_size=int(data["resize_size"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            interpolation=str(data.get("interpolation", "bilinear")),
        )

    def example(self, batch: int = 2) -> np.ndarray:
        """An input of the right type and shape for exporting and probing: zeros."""
        return np.zeros((batch, 3, self.input_size, self.input_size), dtype=np.float32)


def preprocess_from_dict(data: dict, folder: str | Path = "") -> PreprocessConfig | TextPreprocess:
    """A run's or bundle's recorded preprocessing: an image's, or a text model's (its tokenizer in ``folder``)."""
    if data.get("kind", "image") == "text":
        return TextPreprocess.from_dict(data, folder)
    missing = [key for key in ("input_size", "resize_size", "mean", "std") if key not in data]
    if missing:
        raise ConfigError(f"image preprocessing lacks {', '.join(missing)}")
    return PreprocessConfig.from_dict(data)


def describe_source(source: ImageSource) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return f"<in-memory {type(source).__name__}>"


#: Rows of a 16-bit, 32-bit or float image converted to 8 bits at once: about a megapixel, so the conversion costs
#: a band of the image (4 MB), never a float64 copy of all of it (a 4096 x 4096 int32 TIFF once cost 134 MB a copy).
_BAND_PIXELS = 1 << 20

#: Modes whose values are scaled to 8 bits by edgetl rather than by Pillow: integers / 257, floats as they are.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float images as 8-bit grayscale, a band of rows at a time; other modes as they are.

    The arithmetic is that of edgetl 0.7 (integers divided by 257, floats taken as they are, both clipped to
    [0, 255] and truncated), done in each band's own type: integers as ``clip(v, 0, 65535) // 257``, which equals
    ``floor(v / 257.0)`` clipped for every 32-bit integer.  A float image with NaN or infinite pixels is refused."""
    if image.mode not in _WIDE_MODES:
        return image
    width, height = image.size
    rows = max(1, _BAND_PIXELS // max(1, width))
    out = np.empty((height, width), np.uint8)
    for top in range(0, height, rows):
        band = np.asarray(image.crop((0, top, width, min(top + rows, height))))
        if image.mode == "F":
            if not np.isfinite(band).all():
                raise ImageDecodeError("<image>", "the float image has NaN or infinite pixels")
            out[top:top + rows] = np.clip(band, 0, 255)               # truncated on assignment, as astype did
        else:
            out[top:top + rows] = np.clip(band, 0, 65535) // 257
    return Image.fromarray(out)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (grayscale, 16-bit, 32-bit, float, RGBA, CMYK, palette)."""
    image = _eight_bit(image)
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


# Formats whose frames Pillow decodes at the frames' own sizes, not at the size the file's directory declares (up to
# 256 x 256): an ICO is decoded while it is opened, an ICNS while it is loaded, each only under Pillow's own bomb
# limit (89 MP).  Their frames' sizes are read from the frames' headers first (nothing decoded), so an icon that
# wraps a 9400 x 9400 PNG is refused as what it is.  Every other installed plugin (Pillow 13) decodes its first
# frame at the size its header gives, in load(), after load_image has checked that size.
_ICO_MAGIC, _ICNS_MAGIC, _PNG_MAGIC = b"\x00\x00\x01\x00", b"icns", b"\x89PNG\r\n\x1a\n"
_JP2_MAGICS = (b"\xff\x4f\xff\x51", b"\x0d\x0a\x87\x0a", b"\x00\x00\x00\x0cjP  \x0d\x0a\x87\x0a")


def _frame_size(frame: bytes, dib: bool) -> tuple[int, int] | None:
    """The size an icon's embedded PNG, JPEG 2000 or (in an ICO) bitmap decodes to, from its header alone."""
    from PIL import BmpImagePlugin, Jpeg2KImagePlugin, PngImagePlugin

    if frame.startswith(_PNG_MAGIC):
        return PngImagePlugin.PngImageFile(io.BytesIO(frame)).size
    if frame.startswith(_JP2_MAGICS):
        return Jpeg2KImagePlugin.Jpeg2KImageFile(io.BytesIO(frame)).size
    if dib:
        return BmpImagePlugin.DibImageFile(io.BytesIO(frame)).size
    return None                 # an ICNS raw frame: its type fixes its size (at most 128 x 128)


def _icon_size(data: bytes) -> tuple[int, int] | None:
    """The largest frame of an ICO or ICNS, read from the frames' own headers; None for every other format."""
    from PIL import IcnsImagePlugin, IcoImagePlugin

    if data.startswith(_ICO_MAGIC):
        frames = [(data[entry.offset:], True) for entry in IcoImagePlugin.IcoFile(io.BytesIO(data)).entry]
    elif data.startswith(_ICNS_MAGIC):
        entries = IcnsImagePlugin.IcnsFile(io.BytesIO(data)).dct.values()
        frames = [(data[start:start + length], False) for start, length in entries]
    else:
        return None
    sizes = [size for frame, dib in frames if (size := _frame_size(frame, dib)) is not None]
    return max(sizes, key=lambda size: size[0] * size[1], default=(1, 1))


def header_pixels(data: bytes) -> int:
    """The pixels an encoded image declares, from its header alone (an icon's from its frames' headers); 0 when
    the header cannot be read (decoding it will say why).  What a service orders its decodes by.  A PNG's are read
    from its IHDR directly (a microsecond, where opening it costs ten: every request pays this)."""
    if data.startswith(_PNG_MAGIC) and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width * height
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            icon = _icon_size(data)
            if icon is not None:
                return icon[0] * icon[1]
            with Image.open(io.BytesIO(data)) as image:
                return image.width * image.height
    except Exception:     # noqa: BLE001 - only an order: the decode itself reports a bad header
        return 0


def _decoding(name: str, step: Callable[[], T]) -> T:
    """``step()``, any exception of the decoder turned into an :class:`ImageDecodeError` naming the image.

    Pillow raises what its plugins raise on a mutated file (TypeError, OverflowError, struct.error, zlib.error,
    IndexError, KeyError, MemoryError...), not only OSError: each is a bad image, so a service answers 400 and
    ``skip_bad`` skips it."""
    try:
        return step()
    except ImageDecodeError as exc:
        raise ImageDecodeError(name, exc.reason) from None
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(name, "not an image file Pillow can read") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(name, f"exceeds Pillow's decompression-bomb limit ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(name, f"corrupt or truncated image ({exc})") from exc
    except Exception as exc:     # noqa: BLE001 - whatever else the decoder raises is a bad image, named by its kind
        raise ImageDecodeError(name, f"corrupt image (the decoder failed: {type(exc).__name__})") from exc


#: Decoders that hold the GIL while they decode run one at a time, and at most half the time: Pillow's JPEG 2000
#: decoder (it pulls its data from Python: a 4096 x 4096 image holds the GIL for 0.6 s and more) and the decoders
#: Pillow writes in Python.  Every other thread of the process waits while one runs, so after each such decode the
#: next waits as long as it took: a service answers its normal requests in between (a flood of JPEG 2000 images
#: decoded back to back left a normal request waiting about one decode, p50 620 ms), and two at once would only
#: take turns on the GIL, holding both images' memory.
_GIL_HOLDERS = threading.Lock()


@contextmanager
def _gil_holder(image: Image.Image, fair: bool) -> Iterator[None]:
    """Around a decode in a service (``fair``: it decodes under a budget, beside requests it must not stall): one
    at a time for the decoders that hold the GIL, and a rest as long as the decode after it (the GIL free for the
    other threads).  Nothing for other decoders, nor for a command or the host, which have no one to be fair to."""
    if not fair or not _holds_the_gil(image):
        yield
        return
    with _GIL_HOLDERS:
        started = time.monotonic()
        try:
            yield
        finally:
            time.sleep(time.monotonic() - started)


#: At most this many halvings of a JPEG 2000 image's resolution are skipped (the 1/8 a JPEG draft reaches):
#: encoders keep five levels by default, so this needs no more than any ordinary file holds.
MAX_JPEG2000_REDUCTION = 3


def _jpeg2000_reduction(size: tuple[int, int], target: int) -> int:
    """How many resolution levels of a JPEG 2000 image to skip so its shorter side stays at least ``target``: the
    draft JPEG decoding already takes, through the format's own resolution levels (a 4096 x 4096 image decodes at
    512 x 512 in milliseconds instead of 0.7 s at full size, holding the GIL)."""
    levels, short = 0, min(size)
    while levels < MAX_JPEG2000_REDUCTION and short >> (levels + 1) >= target:
        levels += 1
    return levels


def _holds_the_gil(image: Image.Image) -> bool:
    codec = image.tile[0][0] if getattr(image, "tile", None) else None
    return codec == "jpeg2k" or codec in Image.DECODERS


def _check_pixels(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(
            name,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
            "(a possible decompression bomb; raise --max-pixels if the image is genuine)",
        )


def _reserve(name: str, reserve: Callable[[int], object] | None, pixels: int) -> None:
    if reserve is None:
        return
    try:
        reserve(pixels)
    except ImageDecodeError as exc:          # larger than the whole budget: a bad image, named
        raise ImageDecodeError(name, exc.reason) from None


def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None,
               reserve: Callable[[int], object] | None = None) -> Image.Image:
    """Decode ``source`` into an RGB image, with EXIF orientation applied.

    Raises :class:`ImageDecodeError` naming the source for corrupt, truncated, non-image or oversized input, and
    for any exception the decoder raises.  ``draft_size`` lets JPEG decoding skip resolution that the resize
    would throw away anyway.  ``reserve(pixels)``, when given, is called once with the pixels about to be decoded
    (read from the header, after ``max_pixels`` is checked, before any decoding): a service's decode budget
    (:class:`~edgetl.runtime.data.decoding.Budget`) waits there for room.
    """
    name = describe_source(source)
    if isinstance(source, Image.Image):
        return _decoding(name, lambda: _to_rgb(ImageOps.exif_transpose(source)))
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (1, 3, 4)):
            raise ImageDecodeError(name, f"array of shape {source.shape} is not an HxW or HxWxC image")
        array = source
        if array.dtype != np.uint8:
            raise ImageDecodeError(name, f"in-memory images must be uint8, got {array.dtype}")
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        return _decoding(name, lambda: _to_rgb(Image.fromarray(array)))
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ImageDecodeError(name, exc.strerror or str(exc)) from exc
    if not data:
        raise ImageDecodeError(name, "the file is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        icon = _decoding(name, lambda: _icon_size(data))
        if icon is not None:                   # decoded while opening (ICO) or at its frames' sizes (ICNS)
            _check_pixels(name, *icon, max_pixels)
            _reserve(name, reserve, icon[0] * icon[1])
        image = _decoding(name, lambda: Image.open(io.BytesIO(data)))
        _check_pixels(name, *image.size, max_pixels)
        if draft_size is not None and image.format == "JPEG":
            _decoding(name, lambda: image.draft("RGB", (draft_size, draft_size)))
        reduction = _jpeg2000_reduction(image.size, draft_size) \
            if draft_size is not None and image.format == "JPEG2000" else 0
        if reduction:
            image.reduce = reduction
        if icon is None:
            _reserve(name, reserve, image.width * image.height)
        with _gil_holder(image, fair=reserve is not None):
            try:
                _decoding(name, lambda: ImageOps.exif_transpose(image, in_place=True))    # decodes; no copy made
            except ImageDecodeError:
                if not reduction:
                    raise
                image = _decoding(name, lambda: Image.open(io.BytesIO(data)))   # fewer levels than that: in full
                _decoding(name, lambda: ImageOps.exif_transpose(image, in_place=True))
        image = _decoding(name, lambda: _eight_bit(image))       # the wide original is released before RGB
        return _decoding(name, lambda: _to_rgb(image))


def crop_box(width: int, height: int, config: PreprocessConfig) -> tuple[float, float, float, float]:
    """The part of a ``width`` x ``height`` image that becomes the crop, in its own pixels.

    The arithmetic is that of resizing the whole image (shorter side to ``config.resize_size``, each side rounded
    to whole pixels) and cropping the centre ``input_size`` square at whole-pixel offsets: mapped back through
    each side's own scale, so resampling just this box samples the points that resize-then-crop did (the pixels
    differ only by Pillow's rounding: :data:`CROP_ARITHMETIC`)."""
    scale = config.resize_size / min(width, height)
    new_w = max(config.input_size, int(round(width * scale)))
    new_h = max(config.input_size, int(round(height * scale)))
    left, top = (new_w - config.input_size) // 2, (new_h - config.input_size) // 2
    x, y = width / new_w, height / new_h
    return left * x, top * y, (left + config.input_size) * x, (top + config.input_size) * y


def resize_and_crop(image: Image.Image, config: PreprocessConfig) -> Image.Image:
    """The centre crop of the image with its shorter side resized to ``config.resize_size``, resampled from the
    crop's box alone (Pillow's ``resize(box=...)``): the whole image is never resized, so a long strip costs the
    crop's memory, not its own length times the scale (a 16 x 65536 strip would have become gigabytes)."""
    size = (config.input_size, config.input_size)
    return image.resize(size, _RESAMPLING[config.interpolation], box=crop_box(*image.size, config))


def normalize(image: Image.Image | np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """RGB uint8 image (or HxWx3 uint8 array) to a CHW float32 array normalized with mean and std."""
    array = np.asarray(image, dtype=np.float32) * np.float32(1.0 / 255.0)
    mean = np.asarray(config.mean, dtype=np.float32)
    inv_std = np.float32(1.0) / np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(((array - mean) * inv_std).transpose(2, 0, 1))


def normalize_batch(pixels: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """(N, S, S, 3) uint8 crops to the (N, 3, S, S) float32 batch, with :func:`normalize`'s arithmetic (so a batch
    equals its images preprocessed one by one, bit for bit)."""
    array = pixels.astype(np.float32) * np.float32(1.0 / 255.0)
    mean = np.asarray(config.mean, dtype=np.float32)
    inv_std = np.float32(1.0) / np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(((array - mean) * inv_std).transpose(0, 3, 1, 2))


def crop(source: ImageSource, config: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS,
         hold: Callable[[int], AbstractContextManager] | None = None) -> np.ndarray:
    """Decode, resize and crop one image: the (S, S, 3) uint8 pixels the network sees before normalization.

    ``hold(pixels)``, when given, is entered with the image's pixels before it decodes and left once its crop is
    made (a :class:`~edgetl.runtime.data.decoding.DecodeLane`'s ``hold``: the service's decode budget)."""
    with ExitStack() as held:
        reserve = None if hold is None else (lambda pixels: held.enter_context(hold(pixels)))
        image = load_image(source, max_pixels=max_pixels, draft_size=config.resize_size, reserve=reserve)
        name = describe_source(source)
        return _decoding(name, lambda: np.asarray(resize_and_crop(image, config), dtype=np.uint8))


def preprocess(source: ImageSource, config: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS,
               hold: Callable[[int], AbstractContextManager] | None = None) -> np.ndarray:
    """Decode and preprocess one image to a (3, S, S) float32 array (``hold``: see :func:`crop`)."""
    return normalize(crop(source, config, max_pixels, hold), config)
