"""Sampler: a vitlab generation model (one guided denoiser step as ONNX) sampled with ONNX Runtime and numpy only.

    sampler = Sampler("model.onnx")
    images = sampler.sample(["Sneaker", "Bag", 3], seed=0)   # uint8 [3, H, W, C]

The loop is ``vitlab_edge.sampling.sample``, the one vitlab's checkpoint runs too: the same seed, steps, guidance
and method give the same images from the checkpoint and from its export (up to float rounding). Defaults come from
the model's metadata (``steps``, ``guidance``, ``sampler``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitlab_edge.files import atomic_write
from vitlab_edge.metadata import ModelFormatError
from vitlab_edge.model import ExportedModel
from vitlab_edge.sampling import Step, sample
from vitlab_edge.tasks import EDGE_TASKS


class LabelError(ValueError):
    """Labels a generation model cannot take: a name not among its labels, or an id out of range (``.label``)."""

    def __init__(self, label: Any, message: str) -> None:
        super().__init__(message)
        self.label = label


def class_ids(labels: Sequence[int | str], names: Sequence[str], num_classes: int,
              unconditional: bool = True) -> np.ndarray:
    """Class ids (ints, or digit strings) or names (``names``) -> int64 ``[N]``; with ``unconditional`` the id
    ``num_classes`` ("no label") is allowed too. A LabelError names the first bad one."""
    index = {name: i for i, name in enumerate(names)}
    top = num_classes if unconditional else num_classes - 1
    ids = []
    for label in labels:
        if isinstance(label, str) and label in index:
            ids.append(index[label])
        elif isinstance(label, (int, np.integer)) or isinstance(label, str) and label.isdigit():
            if not 0 <= int(label) <= top:
                raise LabelError(label, f"class id {label} is out of range: this model has classes 0..."
                                 f"{num_classes - 1}" + (f" ({num_classes}: no label)" if unconditional else ""))
            ids.append(int(label))
        else:
            known = ", ".join(names) or "none: use class ids"
            raise LabelError(label, f"label {label!r} is not one of this model's labels ({known})")
    return np.asarray(ids, dtype=np.int64)


def session_step(session: Any) -> Step:
    """A generation model's ONNX Runtime session as a step function ``(x, t, y, guidance) -> v``."""

    def step(x: np.ndarray, t: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
        return session.run(["v"], dict(zip(EDGE_TASKS["generation"].inputs, (x, t, y, g))))[0]

    return step


class Sampler(ExportedModel):
    """One exported generation model (``ExportedModel``: ``providers``, ``labels``, ``input_size``)."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None,
                 session_options: Any | None = None) -> None:
        super().__init__(path, providers, session_options)
        if self.metadata["task"] != "generation":
            raise ModelFormatError(f"{self.path}: a {self.metadata['task']} model, not a generator; use EdgeModel "
                                   "or `vitlab-edge predict`")

    @property
    def num_classes(self) -> int:
        """Class ids are ``0 .. num_classes - 1``; id ``num_classes`` is "no label" (unconditional samples)."""
        return int(self.metadata["null_class"])

    def class_ids(self, labels: Sequence[int | str]) -> np.ndarray:
        """Class ids (ints, or digit strings) or names -> int64 ``[N]`` (``class_ids``; the "no label" id too)."""
        return class_ids(labels, self.labels, self.num_classes)

    def sample(self, labels: Sequence[int | str], steps: int | None = None, guidance: float | None = None,
               seed: int = 0, method: str | None = None, batch_size: int = 256, progress: bool | None = None
               ) -> np.ndarray:
        """uint8 images ``[N, H, W, C]`` for ``labels`` (class ids or names); ``steps``, ``guidance`` and
        ``method`` (euler | heun) default to the metadata's. ``progress`` as ``EdgeModel.predict``'s."""
        m = self.metadata
        return sample(session_step(self.session), self.class_ids(labels), self.input_size,
                      int(steps or m["steps"]), float(m["guidance"] if guidance is None else guidance), seed,
                      method or m["sampler"], batch_size, progress)


def save_grid(images: np.ndarray, path: str | os.PathLike, min_side: int = 56) -> Path:
    """uint8 images ``[rows, cols, H, W, C]`` as one PNG (upscaled to at least ``min_side``, 2-px white gaps),
    written atomically."""
    from PIL import Image

    rows, cols, h, w, c = images.shape
    scale = max(1, -(-min_side // min(h, w)))
    gap, hs, ws = 2, h * scale, w * scale
    grid = np.full((rows * (hs + gap) + gap, cols * (ws + gap) + gap, 3), 255, np.uint8)
    tiles = images.repeat(scale, 2).repeat(scale, 3)
    tiles = np.repeat(tiles, 3, axis=4) if c == 1 else tiles
    for i in range(rows):
        for j in range(cols):
            y, x = gap + i * (hs + gap), gap + j * (ws + gap)
            grid[y:y + hs, x:x + ws] = tiles[i, j]
    return atomic_write(path, lambda p: Image.fromarray(grid).save(p, format="PNG"))
