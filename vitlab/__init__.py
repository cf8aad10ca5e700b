"""vitlab: Vision Transformers for classification, detection, generation and image embeddings, with Lightning."""

from vitlab.errors import VitlabError
from vitlab.inference import Prediction, Predictor, Sampler
from vitlab.models.classify import create_backbone, create_model
from vitlab.models.detect import create_detector
from vitlab.models.embed import create_embedder
from vitlab.preprocess import PreprocessCfg
from vitlab.registry import list_models, register_model

__version__ = "0.1.0"


def export_onnx(source, out_dir, precision="fp32", **options):
    """Export a checkpoint / task / model to ONNX (``task="embedding"``: its embeddings); see
    ``vitlab.onnx.export_onnx``."""
    from vitlab.onnx import export_onnx as _export

    return _export(source, out_dir, precision, **options)


def load(path: str, map_location: str = "cpu"):
    """A trained task from a vitlab/Lightning checkpoint, loaded without executing pickled code."""
    from vitlab.tasks import load_task

    return load_task(path, map_location=map_location)


def list_tasks() -> list[str]:
    """The task names vitlab knows (``classification``, ``detection``, ``mae``, ``generation``, ``embedding``)."""
    from vitlab.tasks.spec import list_tasks as _list

    return _list()


__all__ = ["Prediction", "Predictor", "PreprocessCfg", "Sampler", "VitlabError", "__version__", "create_backbone",
           "create_detector", "create_embedder", "create_model", "export_onnx", "list_models", "list_tasks", "load",
           "register_model"]
