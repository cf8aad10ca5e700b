"""vitlab's own Albumentations transforms, declared in YAML by their full name like any other
(``__class_fullname__: vitlab.data.augment.DarkTexturedBackground``). ``load_pipeline`` imports this module
before ``A.from_dict``, so the names resolve; importing it imports Albumentations."""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np


class DarkTexturedBackground(A.ImageOnlyTransform):
    """Put a bright object on a black background onto a dark random texture instead (Fashion-MNIST-style items,
    whose backgrounds are exactly black, made to survive real backgrounds).

    The image's own brightness is its alpha, as when such an item is pasted onto a photo: ``out = a * image +
    (1 - a) * texture`` with ``a = image / 255`` (the mean over channels). The texture is value noise summed over
    ``cells`` grid sizes with random weights, sometimes thresholded into hard-edged blobs, scaled to a random
    brightness up to ``max_brightness`` (a fraction of 255). Procedural, so no photo is needed and none leaks
    from an evaluation set.

    Args:
        max_brightness: brightest a texture gets, as a fraction of 255.
        cells: the noise's grid sizes (cells across the image), coarse to fine.
        p: probability of applying the transform.
    """

    class InitSchema(A.core.transforms_interface.BaseTransformInitSchema):
        max_brightness: float
        cells: tuple[int, ...]

    def __init__(self, max_brightness: float = 0.3, cells: tuple[int, ...] = (2, 4, 8, 16), p: float = 0.5):
        super().__init__(p=p)
        if not 0.0 < max_brightness <= 1.0:
            raise ValueError(f"max_brightness must be in (0, 1], got {max_brightness}")
        if not cells or min(cells) < 1:
            raise ValueError(f"cells must be positive grid sizes, got {cells}")
        self.max_brightness = float(max_brightness)
        self.cells = tuple(int(c) for c in cells)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        rng = self.random_generator
        texture = np.zeros((h, w), np.float32)
        for c in self.cells:
            grid = rng.random((c + 1, c + 1), dtype=np.float32)
            texture += rng.random() * cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)
        lo, hi = float(texture.min()), float(texture.max())
        texture = (texture - lo) / (hi - lo) if hi > lo else np.zeros_like(texture)
        if rng.random() < 0.3:  # hard edges, as a photo has
            texture = (texture > rng.uniform(0.3, 0.7)).astype(np.float32) * rng.uniform(0.3, 1.0) + 0.2 * texture
        return {"texture": texture * (rng.uniform(0.2, 1.0) * self.max_brightness * 255.0)}

    def apply(self, img: np.ndarray, texture: np.ndarray, **params: Any) -> np.ndarray:
        if img.dtype != np.uint8:
            raise TypeError(f"DarkTexturedBackground works on uint8 images, got {img.dtype}")
        x = img.astype(np.float32)
        alpha = (x.mean(axis=2, keepdims=True) if x.ndim == 3 else x) / 255.0
        bg = texture[:, :, None] if x.ndim == 3 else texture
        return np.clip(alpha * x + (1.0 - alpha) * bg + 0.5, 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_brightness", "cells")
