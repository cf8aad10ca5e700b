"""PreprocessCfg: the one description of how pixels reach a model.

It travels with the weights (checkpoint hyper-parameters, ONNX metadata) the way timm's pretrained cfg and
torchvision's ``Weights.transforms`` do. Augment pipelines, the Predictor and exported models all read it.
Normalisation itself runs inside the model, so callers only feed resized uint8 pixels.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from vitlab_edge.imaging import INTERPOLATIONS, RESIZE_POLICIES, resize, to_layout

from vitlab.errors import VitlabError


@dataclass(frozen=True)
class PreprocessCfg:
    """Input size ``(C, H, W)``, mean/std on the 0..1 scale, and how an arbitrary image becomes ``H x W``.

    ``resize``: ``squash`` (ignore aspect ratio), ``center_crop`` (shorter side to size/crop_pct, then crop),
    ``letterbox`` (fit inside, pad with zeros).
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    resize: str = "squash"
    crop_pct: float = 1.0
    labels: tuple[str, ...] = field(default_factory=tuple)
    task: str = "classification"

    def __post_init__(self) -> None:
        c = self.input_size[0]
        if len(self.input_size) != 3 or c not in (1, 3):
            raise VitlabError(f"preprocess.input_size must be (C, H, W) with C in (1, 3), got {self.input_size}")
        if len(self.mean) != c or len(self.std) != c:
            raise VitlabError(f"preprocess.mean/std need {c} values for {c}-channel input")
        if self.resize not in RESIZE_POLICIES:
            raise VitlabError(f"preprocess.resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise VitlabError(f"preprocess.interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if not isinstance(self.task, str) or not self.task.isidentifier():  # the name is checked where it is
            raise VitlabError(f"preprocess.task must be a task name, got {self.task!r}")  # dispatched (tasks.spec)
        if not 0.0 < self.crop_pct <= 1.0:
            raise VitlabError(f"preprocess.crop_pct must be in (0, 1], got {self.crop_pct}")

    @property
    def channels(self) -> int:
        return self.input_size[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.input_size[1], self.input_size[2]

    def replace(self, **changes: Any) -> PreprocessCfg:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessCfg:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise VitlabError(f"unknown preprocess keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def resize_image(self, image: np.ndarray) -> np.ndarray:
        """HWC uint8 of any size -> ``H x W`` by the resize policy (same channel count)."""
        return resize(image, self.image_size, self.resize, self.interpolation, self.crop_pct)

    def to_model_layout(self, image: np.ndarray) -> np.ndarray:
        """HWC uint8 (any channel count the decoder produced) -> CHW uint8 with ``channels`` planes."""
        return to_layout(image, self.channels)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """A decoded image (HWC uint8, any size and channel count) -> the model's CHW uint8 input."""
        return self.to_model_layout(self.resize_image(image))
