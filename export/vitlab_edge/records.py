"""Records from a model's outputs, numpy only: the one decoding the edge kit, vitlab's Predictor and both CLIs use.

A task's ``RecordDecoder`` says which graph outputs it reads and turns one input's row of them into the task's
record fields; each task's descriptor (``vitlab_edge.tasks``) names its decoder, and ``tasks.decoder_for`` finds it
by the task name (checkpoint ``preprocess.task``, ONNX metadata ``task``).

- ``classification``: ``probs [N, K]`` -> ``label``, ``class_id``, ``prob`` (top-1) and ``topk`` (a list of
  ``{"label", "class_id", "prob"}``).
- ``detection``: ``boxes [N, D, 4]`` (x1, y1, x2, y2 in model-input pixels), ``scores [N, D]``, ``labels [N, D]``
  (int64) and ``num_dets [N]`` (int64; rows past it are padding) -> ``boxes`` (list of ``[x1, y1, x2, y2]`` in the
  ORIGINAL image's pixels: the letterbox undone with ``vitlab_edge.boxes.boxes_to_original``, clipped to the image;
  for EXIF-rotated files the image as displayed, since decoding applies the orientation), ``scores``, ``labels``
  (names) and ``class_ids``, best score first.
- ``embedding``: ``embedding [N, D]`` (float32, unit L2 norm: a dot product is the cosine similarity) ->
  ``embedding`` (a list of D floats).

A record is ``{"index", "source", <the task's fields>, "error"}``; an input that could not be read gets the task's
``empty`` fields and its ``error``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitlab_edge.boxes import boxes_to_original


@dataclass(frozen=True)
class RowContext:
    """What decoding one input needs besides the outputs: class names, the top-k size (classification), the
    original image's ``(h, w)`` as decoded (EXIF applied) and the model input's ``(h, w)``."""

    labels: list[str]
    topk: int = 5
    src_hw: tuple[int, int] | None = None
    input_hw: tuple[int, int] | None = None


@dataclass(frozen=True)
class RecordDecoder:
    """One task's record decoding: ``outputs`` (graph output names read), ``fields`` (record keys it fills, in
    order; also the CSV columns between ``source`` and ``error``), ``empty()`` (those fields when there is no
    answer) and ``decode(outputs, row, ctx)`` (the fields of batch row ``row``)."""

    task: str
    outputs: tuple[str, ...]
    fields: tuple[str, ...]
    empty: Callable[[], dict[str, Any]]
    decode: Callable[[dict[str, np.ndarray], int, RowContext], dict[str, Any]]

    @property
    def csv_fields(self) -> tuple[str, ...]:
        return ("index", "source", *self.fields, "error")


def _name(labels: list[str], k: int) -> str:
    return labels[k] if 0 <= k < len(labels) else str(k)


def topk_record(probs: np.ndarray, labels: list[str], k: int) -> dict[str, Any]:
    """The top-1 fields and the ``topk`` list of a record from one row of probabilities."""
    order = np.argsort(-probs, kind="stable")[:max(1, k)]
    top = [{"label": _name(labels, j), "class_id": int(j), "prob": float(probs[j])} for j in map(int, order)]
    return {"label": top[0]["label"], "class_id": top[0]["class_id"], "prob": top[0]["prob"], "topk": top}


def _classification(outputs: dict[str, np.ndarray], row: int, ctx: RowContext) -> dict[str, Any]:
    return topk_record(outputs["probs"][row], ctx.labels, ctx.topk)


def detection_record(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, num_dets: int, ctx: RowContext
                     ) -> dict[str, Any]:
    """One image's padded detections (``boxes [D, 4]`` in model-input pixels, ``scores [D]``, ``labels [D]``) ->
    its record fields: the first ``num_dets`` rows, boxes in the original image's pixels."""
    k = max(0, min(int(num_dets), len(scores)))
    boxes = np.asarray(boxes[:k], np.float32).reshape(-1, 4)
    if ctx.src_hw is not None and ctx.input_hw is not None:
        boxes = boxes_to_original(boxes, ctx.src_hw, ctx.input_hw)
    ids = [int(c) for c in np.asarray(labels[:k]).reshape(-1)]
    return {"boxes": [[round(float(v), 3) for v in b] for b in boxes],
            "scores": [float(s) for s in np.asarray(scores[:k], np.float32).reshape(-1)],
            "labels": [_name(ctx.labels, c) for c in ids], "class_ids": ids}


def _detection(outputs: dict[str, np.ndarray], row: int, ctx: RowContext) -> dict[str, Any]:
    return detection_record(outputs["boxes"][row], outputs["scores"][row], outputs["labels"][row],
                            int(outputs["num_dets"][row]), ctx)


def _embedding(outputs: dict[str, np.ndarray], row: int, ctx: RowContext) -> dict[str, Any]:
    return {"embedding": [float(v) for v in np.asarray(outputs["embedding"][row], np.float32)]}


CLASSIFICATION = RecordDecoder("classification", ("probs",), ("label", "class_id", "prob", "topk"),
                               lambda: {"label": None, "class_id": None, "prob": None, "topk": []}, _classification)
DETECTION = RecordDecoder("detection", ("boxes", "scores", "labels", "num_dets"), ("boxes", "scores", "labels",
                          "class_ids"), lambda: {"boxes": [], "scores": [], "labels": [], "class_ids": []}, _detection)
EMBEDDING = RecordDecoder("embedding", ("embedding",), ("embedding",), lambda: {"embedding": []}, _embedding)
