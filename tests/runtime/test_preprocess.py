import io

import numpy as np
import pytest
from PIL import Image

from edgetl.runtime.errors import ConfigError, ImageDecodeError
from edgetl.runtime.preprocess import PreprocessConfig, load_image, preprocess, resize_and_crop

from conftest import write_image

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


def test_resize_keeps_aspect_then_crops_centre():
    image = Image.new("RGB", (200, 100))
    out = resize_and_crop(image, CONFIG)
    assert out.size == (32, 32)


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
