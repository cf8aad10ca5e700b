"""Batch inference: the Predictor over checkpoints and ONNX files, robust image IO, writers, explanations; the
Sampler of diffusion models."""

from vitlab.inference.predictor import DetectionPrediction, Prediction, Predictor
from vitlab.inference.sampler import Sampler

__all__ = ["DetectionPrediction", "Prediction", "Predictor", "Sampler"]
