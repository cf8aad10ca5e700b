"""The ``vitlab`` metadata document of an exported model: one JSON object under that key in the ONNX model's
``metadata_props``. vitlab's exporter writes it; edge apps read it with ``json.loads`` (never ``eval``).

Keys (format 1): ``format``, ``task``, ``labels``, ``input_size`` [C, H, W], ``mean``/``std`` (0..1 scale,
already applied inside the graph), ``interpolation``, ``resize`` (squash | center_crop | letterbox),
``crop_pct``, ``inputs`` / ``outputs`` (tensor names), ``input_dtype`` ("uint8"), ``backbone``, ``depth``,
``attention`` (onnx | ort-mha), ``opset``, ``precision`` (fp32 | fp16 | int8), ``vitlab_version``.

``task`` says what the outputs are: ``classification`` (``probs``, ``logits`` ``[N, K]``) or ``detection``
(``boxes`` ``[N, max_det, 4]`` x1, y1, x2, y2 in model-input pixels, ``scores`` ``[N, max_det]``, ``labels`` int64
``[N, max_det]``, ``num_dets`` int64 ``[N]``; rows past ``num_dets`` are padding), with the post-processing the graph
runs: ``score_thresh``, ``nms_thresh``, ``topk``, ``max_det``, ``class_agnostic``; its ``resize`` is ``letterbox``.
``generation``: one guided denoiser step, inputs ``x`` float32 ``[N, C, H, W]``, ``t`` float32 ``[N]``, ``y`` int64
``[N]``, ``guidance`` float32 ``[N]``, output ``v`` (``input_dtype`` "float32"), with ``objective``
(``rectified_flow``), the sampling defaults ``sampler`` (euler | heun), ``steps``, ``guidance``, the "no label"
class ``null_class`` (= the number of classes) and ``pixel_scale`` (``x0 = image / pixel_scale - 1``); see
``vitlab_edge.sampling``. ``embedding``: ``embedding`` float32 ``[N, embedding_dim]``, the backbone's pooled features
with unit L2 norm (from a classifier, detector or MAE checkpoint, or a bare backbone).
"""

from __future__ import annotations

import json
from typing import Any

METADATA_KEY = "vitlab"
FORMAT = 1
REQUIRED = ("format", "task", "labels", "input_size", "mean", "std", "interpolation", "resize", "crop_pct",
            "inputs", "outputs", "precision")
# per task: the keys it adds (a detector's: its post-processing options) and the outputs its graph has; vitlab's
# exporter and torch backend take both from here
TASK_KEYS = {"classification": (), "detection": ("score_thresh", "nms_thresh", "topk", "max_det", "class_agnostic"),
             "generation": ("objective", "sampler", "steps", "guidance", "null_class", "pixel_scale"),
             "embedding": ("embedding_dim",)}
TASK_OUTPUTS = {"classification": ("probs", "logits"), "detection": ("boxes", "scores", "labels", "num_dets"),
                "generation": ("v",), "embedding": ("embedding",)}
GENERATION_INPUTS = ("x", "t", "y", "guidance")


class ModelFormatError(ValueError):
    """A file that is not a usable vitlab ONNX model; the message names the file and what to do."""


def parse_metadata(text: str | None, source: str) -> dict[str, Any]:
    """Validate the JSON text stored under ``vitlab``; errors name ``source`` and the missing key."""
    if text is None:
        raise ModelFormatError(f"{source}: no '{METADATA_KEY}' metadata; export the model with `vitlab export` "
                               "(an ONNX file from elsewhere does not say how to preprocess its input)")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{source}: the '{METADATA_KEY}' metadata is not valid JSON ({e.msg})") from None
    if not isinstance(meta, dict):
        raise ModelFormatError(f"{source}: the '{METADATA_KEY}' metadata must be a JSON object")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ModelFormatError(f"{source}: '{METADATA_KEY}' metadata lacks {', '.join(missing)}; re-export the model")
    if meta["format"] > FORMAT:
        raise ModelFormatError(f"{source}: metadata format {meta['format']} is newer than this kit understands "
                               f"({FORMAT}); upgrade vitlab-edge")
    task = "detection" if meta["task"] == "detect" else meta["task"]  # the short name some metadata may use
    if task not in TASK_KEYS:
        raise ModelFormatError(f"{source}: task {task!r} is not one this kit serves ({', '.join(TASK_KEYS)}); "
                               "upgrade vitlab-edge")
    missing = [k for k in TASK_KEYS[task] if k not in meta]
    if missing:
        raise ModelFormatError(f"{source}: '{METADATA_KEY}' metadata of a {task} model lacks {', '.join(missing)}; "
                               "re-export the model")
    lacking = [o for o in TASK_OUTPUTS[task] if o not in meta["outputs"]]
    if lacking:
        raise ModelFormatError(f"{source}: a {task} model must have outputs {list(TASK_OUTPUTS[task])}, the "
                               f"metadata lists {meta['outputs']}")
    if task == "detection" and (meta["resize"] != "letterbox" or int(meta["max_det"]) < 1):
        raise ModelFormatError(f"{source}: a detection model needs resize 'letterbox' and max_det >= 1, the "
                               f"metadata says {meta['resize']!r}, {meta['max_det']}")
    if task == "generation" and (list(meta["inputs"]) != list(GENERATION_INPUTS)
                                 or meta["objective"] != "rectified_flow" or meta["sampler"] not in ("euler", "heun")
                                 or int(meta["steps"]) < 1 or int(meta["null_class"]) < 1):
        raise ModelFormatError(f"{source}: a generation model needs inputs {list(GENERATION_INPUTS)}, objective "
                               "'rectified_flow', sampler euler or heun, steps >= 1 and null_class >= 1; the metadata "
                               f"says {meta['inputs']}, {meta['objective']!r}, {meta['sampler']!r}, {meta['steps']}, "
                               f"{meta['null_class']}")
    c, h, w = meta["input_size"]
    if c not in (1, 3) or h < 1 or w < 1:
        raise ModelFormatError(f"{source}: bad input_size {meta['input_size']} in the metadata")
    return meta
