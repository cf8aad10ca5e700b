"""The Predictor's typed results, one dataclass per task (``TaskSpec.result``), and the ``--overlays`` pictures
(``TaskSpec.overlay``). ``to_dict`` gives the JSONL record: the edge kit's keys (``index``, ``source``, the task's
record fields, ``error``) plus ``decode_ms``, ``infer_ms`` and ``overlay``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Prediction:
    """One input's answer (or its ``error``); ``to_dict`` gives the JSONL record, same keys as the edge kit's."""

    index: int
    source: str
    label: str | None = None
    class_id: int | None = None
    prob: float | None = None
    topk: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    decode_ms: float = 0.0
    infer_ms: float = 0.0
    overlay: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DetectionPrediction:
    """One input's detections (or its ``error``): ``boxes`` (``[x1, y1, x2, y2]`` in the ORIGINAL image's pixels,
    the letterbox undone; EXIF-rotated files: as displayed), ``scores``, ``labels`` (names), ``class_ids``, best
    first; ``to_dict`` gives the JSONL record, same keys as the edge kit's."""

    index: int
    source: str
    boxes: list[list[float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    class_ids: list[int] = field(default_factory=list)
    error: str | None = None
    decode_ms: float = 0.0
    infer_ms: float = 0.0
    overlay: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EmbeddingPrediction:
    """One input's ``embedding`` (its L2-normalised pooled features, a list of floats; dot product = cosine) or its
    ``error``; ``to_dict`` gives the JSONL record, same keys as the edge kit's."""

    index: int
    source: str
    embedding: list[float] = field(default_factory=list)
    error: str | None = None
    decode_ms: float = 0.0
    infer_ms: float = 0.0
    overlay: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classification_overlay(pred: Prediction, image: np.ndarray, orig_hw: tuple[int, int], labels: list[str],
                           path: Path, heatmap: np.ndarray | None = None) -> Path:
    """The model's input (CHW uint8) with the top-1 label, and the attention rollout over it when given."""
    from vitlab.viz import save_overlay

    return save_overlay(image, f"{pred.label} {pred.prob:.2f}", path, heatmap)


def detection_overlay(pred: DetectionPrediction, image: np.ndarray, orig_hw: tuple[int, int], labels: list[str],
                      path: Path, heatmap: np.ndarray | None = None) -> Path:
    """The model's input cut to the image (the letterbox padding removed: the original at the model's scale) with
    the record's boxes of score >= 0.3 (at most 30, the test report's rule), mapped there from original pixels."""
    from vitlab_edge.boxes import boxes_to_input, letterbox_geometry

    from vitlab.tasks.detection import OVERLAY_MAX_BOXES, OVERLAY_MIN_SCORE
    from vitlab.viz import save_detection_overlay

    h, w = image.shape[1:]
    sy, sx, top, left = letterbox_geometry(orig_hw, (h, w))
    rh, rw = round(orig_hw[0] * sy), round(orig_hw[1] * sx)
    keep = [k for k, s in enumerate(pred.scores) if s >= OVERLAY_MIN_SCORE][:OVERLAY_MAX_BOXES]
    boxes = boxes_to_input(np.array([pred.boxes[k] for k in keep], np.float32).reshape(-1, 4), orig_hw, (h, w))
    boxes -= np.array([left, top, left, top], np.float32)
    title = f"{Path(pred.source).name}: {len(keep)} boxes (score >= {OVERLAY_MIN_SCORE})"
    return save_detection_overlay(image.transpose(1, 2, 0)[top:top + rh, left:left + rw], path, boxes,
                                  np.array([pred.class_ids[k] for k in keep], np.int64), labels,
                                  np.array([pred.scores[k] for k in keep], np.float32), title=title)
