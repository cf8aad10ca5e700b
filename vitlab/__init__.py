"""vitlab: Vision Transformers for classification, detection and generation, trained with Lightning."""

from vitlab.errors import VitlabError
from vitlab.inference import Prediction, Predictor, Sampler
from vitlab.models.classify import create_backbone, create_model
from vitlab.models.detect import create_detector
from vitlab.preprocess import PreprocessCfg
from vitlab.registry import list_models, register_model

__version__ = "0.1.0"


def export_onnx(source, out_dir, precision="fp32", **options):
    """Export a checkpoint / task / classifier or detector to ONNX; see ``vitlab.onnx.export_onnx``."""
    from vitlab.onnx import export_onnx as _export

    return _export(source, out_dir, precision, **options)


def load(path: str, map_location: str = "cpu"):
    """A trained task from a vitlab/Lightning checkpoint, loaded without executing pickled code."""
    from vitlab.tasks import load_task

    return load_task(path, map_location=map_location)


__all__ = ["Prediction", "Predictor", "PreprocessCfg", "Sampler", "VitlabError", "__version__", "create_backbone",
           "create_detector", "create_model", "export_onnx", "list_models", "load", "register_model"]
