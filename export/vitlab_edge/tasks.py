"""What the edge kit knows of each task, declared once: the graph's outputs (and inputs, where fixed), the metadata
keys the task adds, the task's own metadata checks, and how its outputs become records.

``parse_metadata`` (validation), ``EdgeModel`` / ``decoder_for`` (records), vitlab's exporters (output names, post-
processing keys) and the JavaScript client's tests read these descriptors; a new task is one ``EdgeTask`` here (and
its decoder in ``records``), and its JS twin in ``export/js/src``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vitlab_edge import records
from vitlab_edge.records import RecordDecoder

ALIASES = {"detect": "detection"}  # short names some metadata may use


@dataclass(frozen=True)
class EdgeTask:
    """One task as exported: ``outputs`` (graph output names the metadata must list), ``keys`` (metadata keys the
    task adds), ``inputs`` (graph input names when the task fixes them; None: one uint8 ``image``), ``check``
    (the task's own metadata rules: returns what is wrong, or None) and ``decoder`` (outputs -> records; None for
    a task served by its own loop, as generation is by ``EdgeSampler``)."""

    name: str
    outputs: tuple[str, ...]
    keys: tuple[str, ...] = ()
    inputs: tuple[str, ...] | None = None
    check: Callable[[dict[str, Any]], str | None] | None = None
    decoder: RecordDecoder | None = None


def _check_detection(meta: dict[str, Any]) -> str | None:
    if meta["resize"] != "letterbox" or int(meta["max_det"]) < 1:
        return (f"a detection model needs resize 'letterbox' and max_det >= 1, the metadata says "
                f"{meta['resize']!r}, {meta['max_det']}")
    return None


def _check_generation(meta: dict[str, Any]) -> str | None:
    inputs = EDGE_TASKS["generation"].inputs
    if (list(meta["inputs"]) != list(inputs) or meta["objective"] != "rectified_flow"
            or meta["sampler"] not in ("euler", "heun") or int(meta["steps"]) < 1 or int(meta["null_class"]) < 1):
        return (f"a generation model needs inputs {list(inputs)}, objective 'rectified_flow', sampler euler or heun, "
                f"steps >= 1 and null_class >= 1; the metadata says {meta['inputs']}, {meta['objective']!r}, "
                f"{meta['sampler']!r}, {meta['steps']}, {meta['null_class']}")
    return None


EDGE_TASKS: dict[str, EdgeTask] = {t.name: t for t in (
    EdgeTask("classification", ("probs", "logits"), decoder=records.CLASSIFICATION),
    EdgeTask("detection", ("boxes", "scores", "labels", "num_dets"),
             keys=("score_thresh", "nms_thresh", "topk", "max_det", "class_agnostic"),  # the graph's post-processing
             check=_check_detection, decoder=records.DETECTION),
    EdgeTask("generation", ("v",), keys=("objective", "sampler", "steps", "guidance", "null_class", "pixel_scale"),
             inputs=("x", "t", "y", "guidance"), check=_check_generation),
    EdgeTask("embedding", ("embedding",), keys=("embedding_dim",), decoder=records.EMBEDDING),
)}


def edge_task(task: str | None) -> EdgeTask:
    """The descriptor of ``task`` (None: classification, what models before the ``task`` key were); an unknown
    task raises ValueError naming the known ones."""
    name = ALIASES.get(task or "classification", task or "classification")
    if name not in EDGE_TASKS:
        raise ValueError(f"task {task!r} is not one this kit serves ({', '.join(EDGE_TASKS)}); upgrade vitlab-edge")
    return EDGE_TASKS[name]


def decoder_for(task: str | None) -> RecordDecoder:
    """The record decoder of ``task``; ValueError for a task without records (generation) or an unknown one."""
    spec = edge_task(task)
    if spec.decoder is None:
        raise ValueError(f"task {spec.name!r} has no records (a generator is sampled: vitlab_edge.EdgeSampler); this "
                         f"version decodes {', '.join(k for k, t in EDGE_TASKS.items() if t.decoder)}")
    return spec.decoder
