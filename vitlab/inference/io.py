"""Robust image reading for datasets and inference. The implementation lives in the torch-free edge kit
(``vitlab_edge.imaging``) so that vitlab, its Predictor and edge apps decode and resize identically."""

from vitlab_edge.imaging import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    is_image_file,
    is_pil_image,
    pil_to_array,
    read_image,
)

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "ImageReadError", "is_image_file", "is_pil_image", "pil_to_array",
           "read_image"]
