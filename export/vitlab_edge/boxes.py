"""Box geometry of the ``letterbox`` resize policy, numpy only: the one rule training, the Predictor and the edge
kit use to map boxes between an original image and the model's input.

Boxes are ``x1, y1, x2, y2`` in continuous pixel coordinates: pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``,
so a box around a whole ``H x W`` image is ``[0, 0, W, H]``. Under this convention a resize by ``s`` maps an edge
at ``x`` to ``x * s`` exactly (Pillow's resampling maps pixel centres the same way), and the letterbox offset is
added on top.
"""

from __future__ import annotations

import numpy as np


def letterbox_geometry(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[float, float, int, int]:
    """``(scale_y, scale_x, top, left)`` of fitting a ``src_hw`` image inside ``dst_hw``, content centred.

    The content is resized to ``round(src * min(dst_h / src_h, dst_w / src_w))`` pixels per side (at least 1, at
    most the destination), so the two scales can differ by the rounding; ``top`` / ``left`` are the zero padding
    before the content. ``vitlab_edge.imaging.resize(..., policy="letterbox")`` calls this, so images and boxes
    follow the same rule."""
    (ih, iw), (h, w) = (int(src_hw[0]), int(src_hw[1])), (int(dst_hw[0]), int(dst_hw[1]))
    if min(ih, iw, h, w) < 1:
        raise ValueError(f"letterbox sizes must be positive, got {src_hw} -> {dst_hw}")
    scale = min(h / ih, w / iw)
    rh, rw = min(h, max(1, round(ih * scale))), min(w, max(1, round(iw * scale)))
    return rh / ih, rw / iw, (h - rh) // 2, (w - rw) // 2


def boxes_to_input(boxes: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Boxes ``[..., 4]`` (x1, y1, x2, y2) in source-image pixels -> the same boxes in the letterboxed model input
    of size ``dst_hw``; float32."""
    scale, offset = _affine(src_hw, dst_hw)
    return (np.asarray(boxes, np.float64) * scale + offset).astype(np.float32)


def boxes_to_original(boxes: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Boxes ``[..., 4]`` in model-input pixels (a ``dst_hw`` letterbox of a ``src_hw`` image) -> source-image
    pixels, clipped to the source image; float32. The padding band maps outside the image and is clipped away."""
    scale, offset = _affine(src_hw, dst_hw)
    out = (np.asarray(boxes, np.float64) - offset) / scale
    hi = np.array([src_hw[1], src_hw[0], src_hw[1], src_hw[0]], np.float64)
    return np.clip(out, 0.0, hi).astype(np.float32)


def _affine(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate scale and offset (x1, y1, x2, y2) of the letterbox, float64 so that round trips are exact
    to float32."""
    sy, sx, top, left = letterbox_geometry(src_hw, dst_hw)
    return np.array([sx, sy, sx, sy]), np.array([left, top, left, top], np.float64)
