"""Image decoding shared by datasets and (later) the Predictor: every mode -> 8-bit grey or RGB, bad files -> error."""

import numpy as np
import pytest
from PIL import Image

from vitlab.inference.io import ImageReadError, read_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)


def _save(tmp_path, name, img, **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode,channels", [("1", 1), ("L", 1), ("P", 3), ("RGB", 3), ("CMYK", 3)])
def test_plain_modes(tmp_path, mode, channels):
    img = Image.fromarray(RGB).convert(mode)
    ext = "tif" if mode == "CMYK" else "png"
    out = read_image(_save(tmp_path, f"x.{ext}", img))
    assert out.dtype == np.uint8 and out.shape == (12, 16, channels)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    out = read_image(_save(tmp_path, "a.png", Image.fromarray(rgba)))
    assert out[0, 0].tolist() == [255, 0, 0] and out[3, 0].tolist() == [255, 255, 255]


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.info["transparency"] = 0
    img.putpixel((0, 0), 0)
    out = read_image(_save(tmp_path, "p.png", img, transparency=0))
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [0, 255, 0]


def test_16bit_and_float_scale_to_8bit(tmp_path):
    a16 = np.array([[0, 32768, 65535]], dtype=np.uint16)
    out = read_image(_save(tmp_path, "g16.png", Image.fromarray(a16)))
    assert out[0, :, 0].tolist() == [0, 128, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert read_image(_save(tmp_path, "f.tif", f))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = read_image(_save(tmp_path, "o.jpg", img, exif=exif, quality=95))
    assert out.shape == (16, 12, 3)


@pytest.mark.parametrize("name,content,reason", [
    ("empty.jpg", b"", "empty file"),
    ("text.jpg", b"this is not an image\n", "UnidentifiedImageError"),
])
def test_bad_files_raise_with_reason(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageReadError, match=reason):
        read_image(tmp_path / name)


def test_truncated_jpeg_and_directory_and_bomb(tmp_path):
    good = _save(tmp_path, "good.jpg", Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path / "dir.png")
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(good, max_pixels=1000)
