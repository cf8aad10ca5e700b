"""vitlab-edge: serve vitlab's exported ONNX models with ONNX Runtime, numpy, Pillow and tqdm only (no torch):
``EdgeModel`` for classifiers and detectors, ``Sampler`` for generators."""

from vitlab_edge.imaging import ImageReadError, read_image
from vitlab_edge.metadata import METADATA_KEY, ModelFormatError
from vitlab_edge.model import EdgeModel
from vitlab_edge.sampler import LabelError, Sampler
from vitlab_edge.session import RuntimeMissingError
from vitlab_edge.sources import EmptySourceError

__version__ = "0.1.0"
__all__ = ["METADATA_KEY", "EdgeModel", "EmptySourceError", "ImageReadError", "LabelError", "ModelFormatError",
           "RuntimeMissingError", "Sampler", "__version__", "read_image"]
