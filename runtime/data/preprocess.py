"""Image decoding and preprocessing, implemented once for host and device.

The host extracts training features with exactly this code and the device
runtime predicts with it, so the two can never disagree on how an image
becomes a tensor (the most common cause of "accuracy dropped after export").
Only numpy and Pillow are used.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

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
CROP_ARITHMETIC = 2

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


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (grayscale, 16-bit, RGBA, CMYK, palette)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(values / 257.0, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode ``source`` into an RGB image, with EXIF orientation applied.

    Raises :class:`ImageDecodeError` naming the source for corrupt, truncated,
    non-image or oversized input.  ``draft_size`` lets JPEG decoding skip
    resolution that the resize would throw away anyway.
    """
    name = describe_source(source)
    if isinstance(source, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(source))
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (1, 3, 4)):
            raise ImageDecodeError(name, f"array of shape {source.shape} is not an HxW or HxWxC image")
        array = source
        if array.dtype != np.uint8:
            raise ImageDecodeError(name, f"in-memory images must be uint8, got {array.dtype}")
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        return _to_rgb(Image.fromarray(array))
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
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    name,
                    f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
                    "(a possible decompression bomb; raise --max-pixels if the image is genuine)",
                )
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            image = ImageOps.exif_transpose(image)
        except ImageDecodeError:
            raise
        except UnidentifiedImageError as exc:
            raise ImageDecodeError(name, "not an image file Pillow can read") from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError(name, f"exceeds Pillow's decompression-bomb limit ({exc})") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageDecodeError(name, f"corrupt or truncated image ({exc})") from exc
    return _to_rgb(image)


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


def crop(source: ImageSource, config: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode, resize and crop one image: the (S, S, 3) uint8 pixels the network sees before normalization."""
    image = load_image(source, max_pixels=max_pixels, draft_size=config.resize_size)
    return np.asarray(resize_and_crop(image, config), dtype=np.uint8)


def preprocess(source: ImageSource, config: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode and preprocess one image to a (3, S, S) float32 array."""
    return normalize(crop(source, config, max_pixels), config)
