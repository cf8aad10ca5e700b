"""Batch inference: the Predictor over checkpoints and ONNX files, robust image IO, writers, explanations."""

from vitlab.inference.predictor import DetectionPrediction, Prediction, Predictor

__all__ = ["DetectionPrediction", "Prediction", "Predictor"]
