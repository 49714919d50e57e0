import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image
from PIL import Image

from edgetl.runtime.data.preprocess import PreprocessConfig, load_image, preprocess, resize_and_crop
from edgetl.runtime.errors import ConfigError, ImageDecodeError

CONFIG = PreprocessConfig.for_size(32, 0.875, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_config_follows_the_timm_resize_convention():
    config = PreprocessConfig.for_size(224, 0.875, (0.498,) * 3, (0.502,) * 3)
    assert config.resize_size == 256
    assert PreprocessConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("bad", [dict(input_size=4), dict(interpolation="magic"), dict(std=(0.1, 0.0, 0.1))])
def test_invalid_config_is_refused(bad):
    args = dict(input_size=32, resize_size=40, mean=(0.5,) * 3, std=(0.2,) * 3, interpolation="bilinear")
    args.update(bad)
    if bad.get("input_size") == 4:
        args["resize_size"] = 4
    with pytest.raises(ConfigError):
        PreprocessConfig(**args)


def test_output_is_normalized_chw_float32(tmp_path):
    path = write_image(tmp_path / "red.png", size=(64, 48), color=(255, 0, 0))
    x = preprocess(path, CONFIG)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], (1.0 - 0.5) / 0.25, rtol=1e-6)
    np.testing.assert_allclose(x[1], (0.0 - 0.5) / 0.25, rtol=1e-6)


def _resize_whole_then_crop(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """The 0.6 arithmetic, as a reference: the whole image resized (shorter side to resize_size), then the centre
    crop at whole-pixel offsets."""
    scale = config.resize_size / min(image.size)
    width = max(config.input_size, round(image.width * scale))
    height = max(config.input_size, round(image.height * scale))
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - config.input_size) // 2, (height - config.input_size) // 2
    return np.asarray(resized.crop((left, top, left + config.input_size, top + config.input_size)), np.int16)


@pytest.mark.parametrize("size", [(200, 100), (100, 200), (333, 211), (600, 20), (20, 600), (32, 32)])
def test_the_crop_is_the_centre_of_the_resized_image(size):
    """Resampling only the crop's box gives the pixels of resizing the whole image and cropping its centre (within
    the rounding of Pillow's intermediate pass): the same geometry as before, without the whole resize."""
    rng = np.random.default_rng(sum(size))
    smooth = rng.integers(0, 255, (size[1] // 4 + 1, size[0] // 4 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(smooth).resize(size, Image.Resampling.BILINEAR)   # photo-like: no pixel-level noise
    out = resize_and_crop(image, CONFIG)
    assert out.size == (32, 32)
    assert np.abs(np.asarray(out, np.int16) - _resize_whole_then_crop(image, CONFIG)).max() <= 2


def test_the_crop_of_a_strip_is_its_centre():
    """A 2000 x 3 gradient strip (refused before 0.7) is accepted; its crop is the middle three pixels of the
    gradient, not an end of it, and a 3 x 2000 strip's the middle three rows."""
    ramp = np.linspace(0, 255, 2000)
    across = np.repeat(ramp[None, :, None], 3, axis=0).repeat(3, axis=2).astype(np.uint8)
    down = np.ascontiguousarray(across.transpose(1, 0, 2))
    for strip in (across, down):
        out = np.asarray(resize_and_crop(Image.fromarray(strip), CONFIG), np.float64)
        assert out.shape == (32, 32, 3) and abs(out.mean() - 127.5) < 2 and out.std() < 1


STRIP_MEMORY = """
import io, sys
import numpy as np
from PIL import Image
from edgetl.runtime.data.preprocess import PreprocessConfig, crop

def peak_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024

buffer = io.BytesIO()
Image.new("L", (int(sys.argv[1]), int(sys.argv[2])), 128).save(buffer, "PNG")
config = PreprocessConfig.for_size(224, 0.875, (0.5,) * 3, (0.5,) * 3)
small = io.BytesIO()
Image.new("L", (16, 64), 128).save(small, "PNG")
crop(small.getvalue(), config)                       # warm: the PNG plugin and resampling loaded on a small image
before = peak_mb()
pixels = crop(buffer.getvalue(), config)
print(pixels.shape, round(peak_mb() - before, 1))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux)")
def test_a_long_strip_costs_the_crop_not_its_length(child_python):
    """A 16 x 65536 PNG (1 MP, within any pixel limit) once had to be refused: resizing its short side to 256 would
    have made 256 x 1,048,576 pixels (768 MB).  Resampling the crop's box alone, it costs little more than the
    decoded strip."""
    out = subprocess.run([child_python, "-c", STRIP_MEMORY, "16", "65536"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    shape, grown_mb = out.stdout.rsplit(" ", 1)
    assert shape == "(224, 224, 3)" and float(grown_mb) < 64


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK", "P", "I;16", "1"])
def test_every_common_mode_becomes_rgb(tmp_path, mode):
    image = Image.new(mode, (20, 10))
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    path = tmp_path / f"img.{fmt.lower()}"
    image.save(path, format=fmt)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (20, 10)


def test_palette_with_transparency_is_converted(tmp_path):
    image = Image.new("P", (8, 8))
    image.info["transparency"] = 0
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    assert load_image(path).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    assert load_image(path).size == (20, 40)


def test_in_memory_grayscale_digits_array():
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert load_image(pixels).size == (8, 8)
    with pytest.raises(ImageDecodeError, match="uint8"):
        load_image(pixels.astype(np.float64))


def test_corrupt_truncated_and_non_images_name_the_file(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path, reason in ((truncated, "truncated"), (text, "not an image"), (empty, "empty")):
        with pytest.raises(ImageDecodeError, match=reason) as info:
            load_image(path)
        assert str(path) in str(info.value)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ImageDecodeError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_image_bomb_over_the_pixel_limit_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (4000, 3000)).save(path)  # 12 MP of zeros compresses to a few kB
    assert path.stat().st_size < 50_000
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        load_image(path, max_pixels=10_000_000)
