"""Inference backends behind one small protocol: uint8 batches in, class probabilities out.

``TorchBackend`` runs a ViTClassifier (from a Lightning checkpoint); ``OrtBackend`` runs an exported ONNX model
through the edge kit's session (CUDA when granted, else CPU). Both read the same PreprocessCfg, so the Predictor
prepares pixels identically for either.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from vitlab.errors import VitlabError
from vitlab.preprocess import PreprocessCfg


class Backend(Protocol):
    preprocess: PreprocessCfg
    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``uint8 [N, C, H, W]`` -> probabilities ``float32 [N, K]``."""
        ...


class TorchBackend:
    """A classifier on ``device`` (default: CUDA when available, else CPU), fp32, no autograd."""

    def __init__(self, classifier, device: str | None = None) -> None:
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = classifier.eval().to(self.device)
        self.preprocess = classifier.preprocess
        self.name = f"torch[{self.device}]"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return torch_probs(self.model, batch, self.device)

    def attention_maps(self, batch: np.ndarray) -> np.ndarray:
        """Attention rollout per image, ``[N, h, w]`` in 0..1 (see ``vitlab.inference.explain``)."""
        from vitlab.inference.explain import attention_rollout

        return attention_rollout(self.model, batch, self.device)


def torch_probs(classifier, batch: np.ndarray, device) -> np.ndarray:
    """``uint8 [N, C, H, W]`` numpy -> probabilities ``float32 [N, K]`` from a classifier on ``device``."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(batch).to(device, non_blocking=True)
        return classifier(x).softmax(-1).float().cpu().numpy()


class OrtBackend:
    """An exported vitlab ONNX model; ``providers`` default to CUDA then CPU (what was granted is in ``name``)."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None) -> None:
        from vitlab_edge import EdgeModel, ModelFormatError

        try:
            self.edge = EdgeModel(path, providers=providers)
        except ModelFormatError as e:
            raise VitlabError(str(e)) from None
        meta = self.edge.metadata
        fields = ("input_size", "mean", "std", "interpolation", "resize", "crop_pct", "labels", "task")
        self.preprocess = PreprocessCfg.from_dict({k: meta[k] for k in fields if k in meta})
        self.name = f"onnxruntime[{self.edge.providers[0]}]"
        self._output = meta["outputs"][0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.edge.run(np.ascontiguousarray(batch), [self._output])[self._output]  # probs only: no extra copy


def load_backend(path: str | os.PathLike, device: str | None = None, providers: list[str] | None = None) -> Backend:
    """A backend for a ``.onnx`` file or a vitlab Lightning checkpoint."""
    p = Path(path)
    if not p.is_file():
        raise VitlabError(f"model file {p} does not exist")
    if p.suffix == ".onnx":
        return OrtBackend(p, providers)
    from vitlab.tasks import load_task

    return TorchBackend(load_task(p).model, device)
