"""Batch inference: the Predictor over checkpoints and ONNX files, robust image IO, writers, explanations; the
Sampler of diffusion models."""

from vitlab.inference.predictor import Predictor
from vitlab.inference.results import DetectionPrediction, EmbeddingPrediction, Prediction
from vitlab.inference.sampler import Sampler

__all__ = ["DetectionPrediction", "EmbeddingPrediction", "Prediction", "Predictor", "Sampler"]
