"""Sampler: one API for generating images from a diffusion checkpoint (torch, EMA weights) or its exported
denoiser (ONNX Runtime, through the edge kit's ``vitlab_edge.Sampler``). Both run the edge kit's numpy loop
(``vitlab_edge.sampling``), so the same seed gives the same images from either file.

    sampler = vitlab.Sampler.load("runs/fmnist_diffusion/checkpoints/last.ckpt")   # or "model.onnx"
    images = sampler.sample([0, 1, 2], steps=20, guidance=2.0, seed=0)              # uint8 [3, 28, 28, 1]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitlab.errors import VitlabError


class Sampler:
    """A generator of class-conditional images; ``labels`` are the class names (``class_ids`` their order) and id
    ``num_classes`` (default ``len(labels)``) is "no label": unconditional samples, as in ``vitlab_edge.Sampler``."""

    def __init__(self, backend: Any, labels: Sequence[str], input_size: tuple[int, int, int], name: str,
                 num_classes: int | None = None) -> None:
        self.backend, self.labels, self.input_size, self.name = backend, list(labels), tuple(input_size), name
        self.num_classes = len(self.labels) if num_classes is None else int(num_classes)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None,
             providers: list[str] | None = None) -> Sampler:
        """A checkpoint of a ``DiffusionTask`` (torch on ``device``, default CUDA when available) or an exported
        ``.onnx`` denoiser (``providers``, default CUDA then CPU)."""
        path = Path(path)
        if path.suffix == ".onnx":
            from vitlab_edge.metadata import ModelFormatError
            from vitlab_edge.sampler import Sampler as EdgeSampler

            try:
                edge = EdgeSampler(path, providers=providers)
            except ModelFormatError as e:
                raise VitlabError(str(e)) from None
            return cls.from_edge(edge)
        import torch

        from vitlab.tasks import DiffusionTask, load_task

        task = load_task(path)
        if not isinstance(task, DiffusionTask):
            raise VitlabError(f"{path} is a {type(task).__name__} checkpoint; sampling needs a DiffusionTask one")
        task.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        labels = list(task.preprocess.labels) or [str(i) for i in range(task.hparams.num_classes)]
        return cls(task, labels, task.preprocess.input_size, f"torch ({task.device})", task.hparams.num_classes)

    @classmethod
    def from_edge(cls, edge: Any) -> Sampler:
        """A Sampler over a ``vitlab_edge.Sampler`` (an exported denoiser with its own session options)."""
        labels = edge.labels or [str(i) for i in range(edge.num_classes)]
        return cls(edge, labels, edge.input_size, f"onnxruntime ({', '.join(edge.providers)})", edge.num_classes)

    def class_ids(self, labels: Sequence[int | str]) -> list[int]:
        """Class ids from ids or names (``vitlab_edge.sampler.class_ids``): ``0 .. num_classes - 1``, and
        ``num_classes`` for "no label" (unconditional); a name or id the model does not have is one clear error."""
        from vitlab_edge.sampler import LabelError, class_ids

        try:
            return class_ids(labels, self.labels, self.num_classes).tolist()
        except LabelError as e:
            raise VitlabError(f"label {e.label!r} is not a class of this model: {e}") from None

    def sample(self, labels: Sequence[int | str], steps: int | None = None, guidance: float | None = None,
               seed: int = 0, method: str | None = None, batch_size: int = 256,
               progress: bool | None = False) -> np.ndarray:
        """uint8 images ``[N, H, W, C]`` for ``labels`` (ids or names). ``steps`` / ``guidance`` / ``method``
        (``euler`` | ``heun``) default to the model's own; the same ``seed`` gives the same images on both
        backends. ``progress``: as ``Predictor.predict``."""
        return self.backend.sample(self.class_ids(labels), steps=steps, guidance=guidance, seed=seed, method=method,
                                   batch_size=batch_size, progress=progress)
