"""The ``vitlab`` metadata document of an exported model: one JSON object under that key in the ONNX model's
``metadata_props``. vitlab's exporter writes it; edge apps read it with ``json.loads`` (never ``eval``).

Keys (format 1): ``format``, ``task``, ``labels``, ``input_size`` [C, H, W], ``mean``/``std`` (0..1 scale,
already applied inside the graph), ``interpolation``, ``resize`` (squash | center_crop | letterbox),
``crop_pct``, ``inputs`` / ``outputs`` (tensor names), ``input_dtype`` ("uint8"), ``backbone``, ``depth``,
``attention`` (onnx | ort-mha), ``opset``, ``precision`` (fp32 | fp16 | int8), ``vitlab_version``.

``task`` says what the outputs are (each task's outputs, keys and rules are declared in ``vitlab_edge.tasks``):
``classification`` (``probs``, ``logits`` ``[N, K]``) or ``detection``
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

from vitlab_edge.tasks import edge_task

METADATA_KEY = "vitlab"
FORMAT = 1
REQUIRED = ("format", "task", "labels", "input_size", "mean", "std", "interpolation", "resize", "crop_pct",
            "inputs", "outputs", "precision")


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
    try:
        spec = edge_task(meta["task"])
    except ValueError as e:
        raise ModelFormatError(f"{source}: {e}") from None
    missing = [k for k in spec.keys if k not in meta]
    if missing:
        raise ModelFormatError(f"{source}: '{METADATA_KEY}' metadata of a {spec.name} model lacks "
                               f"{', '.join(missing)}; re-export the model")
    lacking = [o for o in spec.outputs if o not in meta["outputs"]]
    if lacking:
        raise ModelFormatError(f"{source}: a {spec.name} model must have outputs {list(spec.outputs)}, the "
                               f"metadata lists {meta['outputs']}")
    wrong = spec.check(meta) if spec.check else None
    if wrong:
        raise ModelFormatError(f"{source}: {wrong}")
    c, h, w = meta["input_size"]
    if c not in (1, 3) or h < 1 or w < 1:
        raise ModelFormatError(f"{source}: bad input_size {meta['input_size']} in the metadata")
    return meta
