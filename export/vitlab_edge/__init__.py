"""vitlab-edge: serve vitlab's exported ONNX models with ONNX Runtime, numpy, Pillow and tqdm only (no torch)."""

from vitlab_edge.imaging import ImageReadError, read_image
from vitlab_edge.metadata import METADATA_KEY, ModelFormatError
from vitlab_edge.model import EdgeModel
from vitlab_edge.session import RuntimeMissingError
from vitlab_edge.sources import EmptySourceError

__version__ = "0.1.0"
__all__ = ["METADATA_KEY", "EdgeModel", "EmptySourceError", "ImageReadError", "ModelFormatError",
           "RuntimeMissingError", "__version__", "read_image"]
