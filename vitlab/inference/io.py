"""Robust image reading shared by datasets and inference: decode, apply EXIF orientation, normalise the mode.

Every PIL mode is turned into 8-bit RGB or L: palette/transparent images are composited on a background,
16-bit and float images are rescaled to 0..255, CMYK is converted, animated files give their first frame.
A bad file raises ``ImageReadError`` with the path and the reason; callers turn that into an error record.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default bomb limit; configurable per call


class ImageReadError(Exception):
    """An input that is not a readable image; ``str(e)`` is '<path>: <reason>'."""

    def __init__(self, path: str | os.PathLike | None, reason: str) -> None:
        self.path, self.reason = str(path) if path is not None else None, reason
        super().__init__(f"{path}: {reason}" if path is not None else reason)


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


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
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"))[:, :, None]
    if img.mode in ("LA", "La", "RGBA", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return np.asarray(canvas)
    return np.asarray(img.convert("RGB"))


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` to HWC uint8 (1 or 3 channels), EXIF orientation applied; raises ImageReadError."""
    from PIL import Image, ImageOps

    p = Path(path)
    if p.is_dir():
        raise ImageReadError(p, "is a directory")
    try:
        if p.stat().st_size == 0:
            raise ImageReadError(p, "empty file")
        with Image.open(p) as img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageReadError(p, f"{w}x{h} exceeds the pixel limit {max_pixels} (decompression bomb guard)")
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return pil_to_array(img)
    except ImageReadError:
        raise
    except Exception as e:  # PIL raises many types for bad data: UnidentifiedImageError, OSError, SyntaxError, ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageReadError(p, f"{type(e).__name__}: {reason}") from None
