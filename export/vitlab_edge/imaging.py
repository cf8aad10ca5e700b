"""Robust image reading and resizing, torch-free: the one implementation vitlab and the edge kit share.

``read_image`` decodes a file into HWC uint8 with 1 (grey) or 3 (RGB) channels: EXIF orientation applied,
palette/transparent images composited on a background, 16-bit and float images rescaled to 0..255, CMYK
converted, animated files give their first frame. A bad file raises ``ImageReadError`` with the path and the
reason; callers turn that into an error record. ``resize`` and ``to_layout`` turn any decoded image into the
model's ``C x H x W`` uint8 input as a preprocessing description (vitlab's ``PreprocessCfg``, the ``vitlab``
metadata of an exported model) says, with Pillow's resampling (antialiased when shrinking, like timm's eval).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from vitlab_edge.boxes import letterbox_geometry

# Folder scans pick files by these suffixes: the raster formats Pillow decodes by itself, by the extensions it
# registers (plus .spider, which SPIDER does not register). Left out: what Pillow only writes (.pdf, .palm) or only
# identifies (.mpeg), what needs an outside program or handler (.eps/.ps: Ghostscript; .wmf/.emf: Windows;
# .h5/.hdf, .bufr, .grib: stubs), IPTC blocks (.iim) and .fit (also Garmin activity files). A file named directly
# is read whatever its suffix.
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp", ".dib", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".pfm", ".mpo", ".avif", ".avifs", ".jp2", ".j2k", ".j2c", ".jpc", ".jpf", ".jpx",
    ".psd", ".ico", ".cur", ".icns", ".tga", ".icb", ".vda", ".vst", ".qoi", ".pcx", ".dcx", ".sgi", ".rgb", ".rgba",
    ".bw", ".dds", ".blp", ".spider", ".xbm", ".xpm", ".ras", ".msp", ".im", ".pxr", ".fli", ".flc", ".gbr", ".ftc",
    ".ftu", ".fits", ".pcd",
)
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default bomb limit; configurable per call
RESIZE_POLICIES = ("squash", "center_crop", "letterbox")
DRAFT_MARGIN = 4  # a JPEG decoded at reduced scale keeps >= this many source pixels per model pixel per side
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")


class ImageReadError(Exception):
    """An input that is not a readable image; ``str(e)`` is '<path>: <reason>'."""

    def __init__(self, path: str | os.PathLike | None, reason: str) -> None:
        self.path, self.reason = str(path) if path is not None else None, reason
        super().__init__(f"{path}: {reason}" if path is not None else reason)


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_pil_image(x) -> bool:
    from PIL import Image

    return isinstance(x, Image.Image)


def _to_8bit(img):
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            a = a / 65535.0 * 255.0
        elif img.mode == "I":
            lo, hi = (0.0, 65535.0) if a.min() >= 0 and a.max() > 255 else (0.0, 255.0)
            a = (a - lo) / (hi - lo) * 255.0
        else:  # float images: assume 0..1 when they fit, else min-max
            lo, hi = (0.0, 1.0) if a.min() >= 0 and a.max() <= 1 else (float(a.min()), float(a.max()) or 1.0)
            a = (a - lo) / max(hi - lo, 1e-12) * 255.0
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))  # 2-D uint8 -> mode "L"
    return img


def pil_to_array(img, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Any PIL image -> HWC uint8 with 1 (grey) or 3 (RGB) channels."""
    from PIL import Image

    img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "L":  # the common modes go to numpy as they are (convert would copy them first)
        return np.asarray(img)[:, :, None]
    if img.mode == "RGB":
        return np.asarray(img)
    if img.mode == "1":
        return np.asarray(img.convert("L"))[:, :, None]
    if img.mode in ("LA", "La", "RGBA", "RGBa", "PA"):
        rgba = (img.convert("LA") if img.mode == "La" else img).convert("RGBA")  # Pillow has no La -> RGBA
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return np.asarray(canvas)
    return np.asarray(img.convert("RGB"))


def draft_request(size: tuple[int, int], policy: str = "squash", crop_pct: float = 1.0) -> tuple[int, int] | None:
    """The ``(w, h)`` a JPEG may be decoded down to (Pillow's ``Image.draft``: 1/2, 1/4 or 1/8 scale in the DCT
    domain, never below the request) before the exact resize to ``size`` (h, w): ``DRAFT_MARGIN`` times the largest
    side the resize needs, as a square (EXIF may turn the image). None for ``letterbox``: detection boxes map back
    through the decoded image's own size, which must stay the file's."""
    if policy == "letterbox":
        return None
    side = int(-(-max(size) * DRAFT_MARGIN // min(crop_pct, 1.0)))
    return side, side


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               draft: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` to HWC uint8 (1 or 3 channels), EXIF orientation applied; raises ImageReadError.

    ``draft`` (w, h): a JPEG may be decoded at 1/2, 1/4 or 1/8 scale, as long as the result stays at least that
    large (``draft_request`` says how large a model input needs); other formats ignore it.

    The frame Pillow opens is the one decoded: a multi-frame file's first frame (GIF, APNG, TIFF pages, WebP
    animation, MPO), a PSD's composite, an ICO's largest size. Seeking is left to Pillow, because formats
    differ in what frame 0 means (PSD numbers its layers from 1; SPIDER refuses to seek outside a stack)."""
    p = Path(path)
    try:
        st = os.stat(p)  # one call for both checks: this runs per file, and small files decode in ~40 us
        if stat.S_ISDIR(st.st_mode):
            raise ImageReadError(p, "is a directory")
        if st.st_size == 0:
            raise ImageReadError(p, "empty file")
        with _open(p) as img:
            return decode_pil(img, max_pixels, p, draft, owned=True)
    except ImageReadError:
        raise
    except Exception as e:  # PIL raises many types for bad data: UnidentifiedImageError, OSError, SyntaxError, ...
        raise ImageReadError(p, _reason(e)) from None


def _open(path: Path):
    """``Image.open`` with the format the suffix names tried first, then every format in Pillow's fixed order.

    A bare ``Image.open`` tries the plugins already imported first, so its answer depends on what the process read
    before: once a .tga has been read, TGA's loose header check claims an ICO (Pillow's own ``pillow.ico`` opens
    as a 32x19140 TGA that cannot load). A file whose content is not what its suffix says is still found."""
    from PIL import Image, UnidentifiedImageError

    fmt = Image.registered_extensions().get(path.suffix.lower())  # imports every plugin once: a fixed order
    if fmt in Image.OPEN:  # not MPO: Pillow opens it through JPEG
        try:
            return Image.open(path, formats=[fmt])
        except UnidentifiedImageError:
            pass
    return Image.open(path)


def decode_pil(img, max_pixels: int | None = DEFAULT_MAX_PIXELS, source: str | os.PathLike | None = None,
               draft: tuple[int, int] | None = None, owned: bool = False) -> np.ndarray:
    """An opened PIL image (from a file or in memory) -> HWC uint8: the pixel-limit check, its current frame
    loaded (a JPEG at reduced scale when ``draft`` allows, see ``read_image``), EXIF orientation applied, the mode
    converted (``pil_to_array``). ``owned``: the image is this call's to change (``read_image``'s file), so the
    orientation is applied in place; otherwise (a caller's image) on a copy. Raises ImageReadError."""
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageReadError(source, f"{w}x{h} exceeds the pixel limit {max_pixels} (decompression bomb guard)")
    try:
        if draft is not None and img.format == "JPEG" and img.mode in ("L", "RGB"):
            img.draft(img.mode, draft)
        img.load()
    except Exception as e:  # a lazily opened image whose data is truncated or corrupt
        raise ImageReadError(source, _reason(e)) from None
    return pil_to_array(_upright(img, owned))


def _upright(img, in_place: bool = False):
    """EXIF orientation applied; a damaged EXIF block leaves the pixels as stored rather than losing the image.
    ``in_place`` for an image nobody else holds: Pillow copies the whole image otherwise, even when there is nothing
    to turn (36 MB for a 12 MP photo; ``benchmarks/bench_predict.py`` compares both)."""
    from PIL import ImageOps

    try:
        if in_place:
            ImageOps.exif_transpose(img, in_place=True)
            return img
        return ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - orientation is a hint; the decoded pixels are still good
        return img


def _reason(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def to_hwc_uint8(item, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None
                 ) -> np.ndarray:
    """A path, PIL image or HW/HWC uint8 array -> HWC uint8; anything else raises ImageReadError. ``draft``: see
    ``read_image`` (files only: a caller's PIL image is not changed).

    In-memory PIL images are treated like files (pixel limit, EXIF orientation, a failed load becomes an
    ImageReadError). Arrays are taken as pixels: 1 channel grey, 3 RGB, 2 grey + alpha (LA) and 4 RGBA, alpha
    composited on white like a transparent file; other channel counts pass through (``to_layout`` keeps the first
    planes)."""
    if isinstance(item, (str, os.PathLike)):
        return read_image(item, max_pixels, draft)
    if is_pil_image(item):
        return decode_pil(item, max_pixels)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or 0 in item.shape:
            raise ImageReadError(None, f"arrays must be HWC or HW uint8, got {item.dtype} {list(item.shape)}")
        if item.ndim == 3 and item.shape[2] in (2, 4):
            from PIL import Image

            return pil_to_array(Image.fromarray(np.ascontiguousarray(item)))  # uint8 x2 -> LA, x4 -> RGBA
        return item if item.ndim == 3 else item[:, :, None]
    raise ImageReadError(None, f"cannot read an input of type {type(item).__name__}")


def _resample(image: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """HWC uint8 -> ``size`` (h, w) with Pillow, channel count kept."""
    from PIL import Image

    h, w = size
    if image.shape[:2] == (h, w):
        return image
    method = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
              "bicubic": Image.Resampling.BICUBIC, "area": Image.Resampling.BOX}[interpolation]
    if image.shape[2] == 3:
        return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), method))
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c])).resize((w, h), method))
              for c in range(image.shape[2])]  # grey, or any other channel count plane by plane
    return np.stack(planes, axis=2)


def resize(image: np.ndarray, size: tuple[int, int], policy: str = "squash", interpolation: str = "bilinear",
           crop_pct: float = 1.0) -> np.ndarray:
    """HWC uint8 of any size -> ``size`` (h, w) by the resize policy, channel count kept.

    ``squash`` ignores the aspect ratio; ``center_crop`` scales the shorter side to size / crop_pct and cuts the
    centre; ``letterbox`` fits the image inside and pads the rest with zeros, content centred.
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if image.ndim == 2:
        image = image[:, :, None]
    h, w = size
    ih, iw = image.shape[:2]
    if policy == "squash":
        out = _resample(image, (h, w), interpolation)
    elif policy == "center_crop":
        scale = max(h / crop_pct / ih, w / crop_pct / iw)
        rh, rw = max(h, round(ih * scale)), max(w, round(iw * scale))
        out = _resample(image, (rh, rw), interpolation)
        top, left = (rh - h) // 2, (rw - w) // 2
        out = out[top:top + h, left:left + w]
    else:
        scale_y, scale_x, top, left = letterbox_geometry((ih, iw), (h, w))  # the rule boxes are mapped with
        rh, rw = round(ih * scale_y), round(iw * scale_x)
        small = _resample(image, (rh, rw), interpolation)
        out = np.zeros((h, w, image.shape[2]), np.uint8)
        out[top:top + rh, left:left + rw] = small
    return np.ascontiguousarray(out)


def to_layout(image: np.ndarray, channels: int) -> np.ndarray:
    """HWC uint8 (any channel count the decoder produced) -> CHW uint8 with ``channels`` planes.

    Colour to grey is ITU-R 601-2 luma, 0.299 R + 0.587 G + 0.114 B in float, rounded to nearest. Pillow's
    ``convert("L")`` computes the same sum in 16-bit fixed point: the two differ by one level (never more) on 9,481
    of the 16,777,216 RGB colours (0.057 %)."""
    if image.ndim == 2:
        image = image[:, :, None]
    have = image.shape[2]
    if have != channels:
        if channels == 1 and have >= 3:  # ITU-R 601-2 luma (see above)
            image = (image[:, :, :3] @ np.array([0.299, 0.587, 0.114]))[:, :, None].round().astype(np.uint8)
        elif channels == 1 or have < 3:  # grey (+ alpha) in, or one plane wanted from two: the first plane
            image = np.repeat(image[:, :, :1], channels, axis=2)
        else:  # RGBA / extra planes: the colour planes
            image = image[:, :, :3]
    return np.ascontiguousarray(image.transpose(2, 0, 1))
