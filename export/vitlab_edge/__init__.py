"""vitlab-edge: serve vitlab's exported ONNX models with ONNX Runtime, numpy and Pillow only (no torch)."""

from vitlab_edge.imaging import ImageReadError, read_image
from vitlab_edge.metadata import METADATA_KEY, ModelFormatError
from vitlab_edge.model import EdgeModel

__version__ = "0.1.0"
__all__ = ["METADATA_KEY", "EdgeModel", "ImageReadError", "ModelFormatError", "__version__", "read_image"]
