"""Image decoding shared by datasets and (later) the Predictor: every mode -> 8-bit grey or RGB, bad files -> error."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from vitlab.inference.io import ImageReadError, read_image
from vitlab.inference.predictor import to_hwc_uint8

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


def _exif6() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return exif.tobytes()


def _png_text(key: str, value: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if key.startswith("XML"):  # XMP lives in an iTXt chunk
        info.add_itxt(key, value)
    else:
        info.add_text(key, value)
    return {"pnginfo": info}


XMP6 = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')


@pytest.mark.parametrize("name,kw", [  # every place Pillow reads an orientation from, in formats whose loaders
    ("exif.png", lambda: {"exif": _exif6()}),  # differ: read_image turns its own file in place, no copy
    ("raw_profile.png", lambda: _png_text("Raw profile type exif",
                                          f"\nexif\n{len(_exif6()):8}\n{_exif6().hex()}\n")),
    ("xmp.png", lambda: _png_text("XML:com.adobe.xmp", XMP6)),
    ("exif.jpg", lambda: {"exif": _exif6(), "quality": 95}),
    ("exif.webp", lambda: {"exif": _exif6(), "lossless": True}),
    ("tag.tif", lambda: {"tiffinfo": {0x0112: 6}}),
])
def test_orientation_from_every_source_pillow_reads(tmp_path, name, kw):
    path = _save(tmp_path, name, Image.fromarray(RGB), **kw())
    with Image.open(path) as img:
        expected = np.asarray(ImageOps.exif_transpose(img))
    out = read_image(path)
    assert out.shape == (16, 12, 3) and np.array_equal(out, expected)


def test_orientation_of_an_in_memory_image_is_applied_to_a_copy():
    img = Image.fromarray(RGB)
    img.getexif()[0x0112] = 6
    out = to_hwc_uint8(img)
    assert out.shape == (16, 12, 3) and np.array_equal(out, np.rot90(RGB, -1))
    assert img.size == (16, 12) and img.getexif()[0x0112] == 6 and np.array_equal(np.asarray(img), RGB)  # unchanged


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


def _psd(composite: np.ndarray, layer: np.ndarray) -> bytes:
    """A minimal PSD (Pillow reads PSD but cannot write it): 8-bit grey or RGB, one raw layer, raw composite."""
    import struct

    h, w, c = composite.shape
    planes = [struct.pack(">H", 0) + layer[:, :, k].tobytes() for k in range(c)]
    extra = struct.pack(">II", 0, 0) + b"\x05layer\x00\x00"  # no mask, no blending ranges, padded Pascal name
    channels = b"".join(struct.pack(">hI", k, len(p)) for k, p in enumerate(planes))  # id, data length
    record = (struct.pack(">iiiiH", 0, 0, h, w, c) + channels + b"8BIMnorm" + bytes([255, 0, 0, 0])
              + struct.pack(">I", len(extra)) + extra)  # bounds, channels, blend mode, opacity, extra data
    info = struct.pack(">h", 1) + record + b"".join(planes)
    info += b"\x00" * (len(info) % 2)
    layers = struct.pack(">I", len(info)) + info + struct.pack(">I", 0)
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, c, h, w, 8, 1 if c == 1 else 3)
    return (header + struct.pack(">II", 0, 0) + struct.pack(">I", len(layers)) + layers + struct.pack(">H", 0)
            + composite.transpose(2, 0, 1).tobytes())


def write_frame_corpus(root) -> dict:
    """Multi-frame and read-only formats, each holding a known first frame (or composite) and a different second
    one: ``{path: (expected HWC uint8, max abs error allowed)}``. Lossless formats must decode exactly."""
    from PIL import features

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    first = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    second = 255 - first
    four = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [250, 250, 250]], np.uint8)  # GIF: palette-exact
    gif0, gif1 = four[rng.integers(0, 4, (20, 24))], four[rng.integers(0, 4, (20, 24))]
    xx, yy = np.meshgrid(np.linspace(0, 255, 24), np.linspace(0, 255, 20))
    smooth = np.dstack([xx, yy, np.full_like(xx, 128)]).astype(np.uint8)  # JPEG (MPO) keeps a gradient closely
    frames = lambda a, b: (Image.fromarray(a), [Image.fromarray(b)])  # noqa: E731
    out = {}

    def save(name, pair, expected, tol=0, **kw):
        img, rest = pair
        img.save(root / name, save_all=True, append_images=rest, **kw)
        out[root / name] = (expected, tol)

    save("anim.gif", frames(gif0, gif1), gif0, duration=100, loop=0)
    save("anim.png", frames(first, second), first)  # APNG
    save("pages.tiff", frames(first, second), first)
    if features.check("webp"):
        save("anim.webp", frames(first, second), first, lossless=True)
    square = np.ascontiguousarray(first[:16, :16])
    Image.fromarray(square).save(root / "icon.ico", sizes=[(8, 8), (16, 16)])  # opens at its largest size
    out[root / "icon.ico"] = (square, 0)
    save("stereo.mpo", frames(smooth, 255 - smooth), smooth, tol=12, quality=95)
    (root / "layers.psd").write_bytes(_psd(first, second))
    (root / "grey.psd").write_bytes(_psd(first[:, :, :1], second[:, :, :1]))
    out[root / "layers.psd"], out[root / "grey.psd"] = (first, 0), (first[:, :, :1], 0)
    grey = first[:, :, :1].copy()
    grey[0, :2, 0] = (0, 255)  # full range: SPIDER stores floats, read back min-max scaled
    Image.fromarray(grey[:, :, 0]).convert("F").save(root / "single.spider", format="SPIDER")
    out[root / "single.spider"] = (grey, 0)
    return out


def test_every_frame_format_decodes_its_first_frame(tmp_path):
    corpus = write_frame_corpus(tmp_path)
    assert len(corpus) >= 9
    for path, (expected, tol) in corpus.items():
        Image.open(path).load()  # Pillow itself reads each one
        got = read_image(path)
        assert got.shape == expected.shape, path.name
        diff = np.abs(got.astype(int) - expected.astype(int))
        assert diff.max() <= tol, f"{path.name}: max abs diff {diff.max()}"


def test_ico_decodes_whatever_was_read_before(tmp_path):
    """A multi-size ICO read after a TGA, in a fresh process (Pillow's plugin order is process state). A bare
    ``Image.open`` tries the plugins already imported first, and TGA's header check accepts an ICO whose first
    (smallest) frame holds 64-128 KiB: the frame size's third byte reads as a TGA depth of 1. Pillow's own
    pillow.ico is such a file and was refused ("cannot load this image"); ``read_image`` tries the suffix's format
    first and gives the largest size, as Pillow alone does."""
    import subprocess
    import sys

    rgba = np.dstack([np.random.default_rng(5).integers(0, 256, (256, 256, 3)), np.full((256, 256), 255)])
    rgba = rgba.astype(np.uint8)  # noise: the 160 px frame compresses to ~85 KB
    Image.fromarray(rgba).save(tmp_path / "x.ico", sizes=[(160, 160), (192, 192), (256, 256)])
    first_frame_bytes = (tmp_path / "x.ico").read_bytes()[14:18]
    assert first_frame_bytes[2:] == b"\x01\x00"  # the case: a TGA header with depth 1, no orientation flags
    Image.fromarray(RGB).save(tmp_path / "first.tga")
    code = ("import sys\nfrom vitlab_edge.imaging import read_image\n"
            "read_image(sys.argv[1])\nsys.stdout.buffer.write(read_image(sys.argv[2]).tobytes())\n")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "first.tga"), str(tmp_path / "x.ico")],
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode()[-500:]
    assert np.array_equal(np.frombuffer(res.stdout, np.uint8).reshape(256, 256, 3), rgba[:, :, :3])


def test_folder_scan_finds_every_pillow_format_and_no_text(tmp_path):
    from vitlab_edge.imaging import IMAGE_EXTENSIONS
    from vitlab_edge.sources import expand_inputs

    corpus = write_frame_corpus(tmp_path / "imgs")
    (tmp_path / "imgs" / "README.txt").write_text("a.png\n")
    (tmp_path / "imgs" / "notes.pdf").write_bytes(b"%PDF-1.4\n")
    assert expand_inputs([tmp_path / "imgs"]) == sorted(str(p) for p in corpus)
    registered = set(Image.registered_extensions())
    assert set(IMAGE_EXTENSIONS) - {".spider"} <= registered  # every suffix is one Pillow knows
    assert not {".txt", ".lst", ".pdf", ".json", ".h5"} & set(IMAGE_EXTENSIONS)


def test_sources_expand_names_only_at_the_top_level(tmp_path):
    from vitlab_edge.sources import EmptySourceError, as_inputs, expand_inputs

    d = tmp_path / "d"
    d.mkdir()
    for name in ("b.png", "a.png"):
        Image.fromarray(RGB).save(d / name)
    listing = tmp_path / "list.txt"
    listing.write_text("# two files\nd/a.png\n\nd/b.png\n")
    assert expand_inputs([listing, str(d / "*.png")]) == [str(d / "a.png"), str(d / "b.png")] * 2
    assert as_inputs(str(listing)) == [str(d / "a.png"), str(d / "b.png")]  # a single name: expanded
    assert as_inputs(d) == [str(d / "a.png"), str(d / "b.png")]
    items = [listing, str(d), RGB]
    assert as_inputs(items) == items  # list items are inputs, one each
    assert as_inputs(RGB) == [RGB] and as_inputs(iter([RGB]))[0] is RGB
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("# nothing\n")
    for name, msg in [(str(tmp_path / "*.jpg"), "matches no files"), (tmp_path / "empty", "no image files"),
                      (tmp_path / "blank.txt", "lists no paths")]:
        with pytest.raises(EmptySourceError, match=msg):
            expand_inputs([d, name])
        with pytest.raises(EmptySourceError, match=msg):
            as_inputs(name)
    with pytest.raises(KeyError, match="matches no files"):
        expand_inputs([str(tmp_path / "*.jpg")], error=KeyError)
    assert expand_inputs([tmp_path / "missing.png"]) == [str(tmp_path / "missing.png")]  # its own error record


def test_in_memory_images_are_treated_like_files(tmp_path):
    import io

    from vitlab_edge.imaging import to_hwc_uint8

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(RGB).save(buf, "JPEG", exif=exif, quality=95)
    (tmp_path / "o.jpg").write_bytes(buf.getvalue())
    in_memory = to_hwc_uint8(Image.open(io.BytesIO(buf.getvalue())))
    assert in_memory.shape == (16, 12, 3) and np.array_equal(in_memory, read_image(tmp_path / "o.jpg"))
    with pytest.raises(ImageReadError, match="pixel limit"):
        to_hwc_uint8(Image.fromarray(RGB), max_pixels=100)
    broken = Image.open(io.BytesIO(buf.getvalue()[:-100]))  # opens lazily, fails on load
    with pytest.raises(ImageReadError, match="OSError"):
        to_hwc_uint8(broken)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, :, 0], rgba[0, :, 3] = 255, 255  # top row opaque red, bottom row transparent
    assert to_hwc_uint8(rgba).tolist() == [[[255, 0, 0]] * 2, [[255, 255, 255]] * 2]
    la = np.array([[[10, 255], [10, 0]]], np.uint8)  # grey + alpha: composited on white like an LA file
    assert to_hwc_uint8(la).tolist() == [[[10, 10, 10], [255, 255, 255]]]
    Image.fromarray(la).save(tmp_path / "la.png")
    assert np.array_equal(to_hwc_uint8(la), read_image(tmp_path / "la.png"))


def test_jpeg_draft_decodes_smaller_but_close(tmp_path):
    """A large JPEG decodes at reduced DCT scale, never below the request; the model input it gives stays close to
    the full decode's; PNGs, letterbox models and callers' PIL images are left alone."""
    from vitlab_edge.imaging import DRAFT_MARGIN, draft_request, resize

    from vitlab.data.datasets import skimage_photos

    photo = Image.fromarray(skimage_photos()[0]).resize((480, 360))
    jpg = _save(tmp_path, "big.jpg", photo, quality=90)
    png = _save(tmp_path, "big.png", photo)
    req = draft_request((28, 28), "squash")
    assert req == (28 * DRAFT_MARGIN,) * 2 and draft_request((28, 28), "letterbox") is None
    assert draft_request((224, 224), "center_crop", 0.875)[0] >= 224 * DRAFT_MARGIN / 0.875
    full, small = read_image(jpg), read_image(jpg, draft=req)
    assert full.shape == (360, 480, 3) and min(small.shape[:2]) >= req[0] and small.shape[0] < 360
    assert read_image(png, draft=req).shape == (360, 480, 3)
    a, b = (resize(x, (28, 28)).astype(int) for x in (full, small))
    assert np.abs(a - b).mean() < 3.0
    with Image.open(jpg) as img:  # an opened PIL image is the caller's: decoded as it is
        from vitlab_edge.imaging import to_hwc_uint8

        assert to_hwc_uint8(img, draft=req).shape == (360, 480, 3)
