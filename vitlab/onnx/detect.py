"""The detection piece of the exporter: the end-to-end graph (uint8 pixels in; ``boxes``, ``scores``, ``labels``,
``num_dets`` out, FCOS decoding and NMS inside), COCO eval images, and the mAP50 gate.

The graph is ``vitlab.models.fcos.postprocess`` itself, traced: its one data-dependent step, ``nms_select``,
becomes an ONNX ``NonMaxSuppression`` node under ``torch.onnx.export`` (see ``fcos._onnx_nms``). The gate is the
task's own COCO mAP (``vitlab.tasks.detection.CocoMAP``: COCO's evaluation against the eval set's annotation file,
boxes mapped back to the original images) on held-out images, as ``vitlab test`` scores them; the report adds the
detection-level parity with torch. Without eval data the exporter reads the scenes' test split where it already is
(``data/scenes``), whatever its sizes, and never writes or rewrites it.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou
from vitlab_edge.progress import Progress
from vitlab_edge.tasks import EDGE_TASKS

from vitlab.errors import VitlabError
from vitlab.models.fcos import points_per_level, postprocess
from vitlab.onnx.report import counted_slices

OUTPUTS = list(EDGE_TASKS["detection"].outputs)
POST_OPTIONS = EDGE_TASKS["detection"].keys
MAX_MAP50_DROP_PP = {"fp32": 0.1, "fp16": 0.5, "int8": 1.0}
MATCH_IOU, MATCH_SCORE = 0.99, 1e-3  # a detection "the same" as torch's: same label, IoU and score this close


class DetectEndToEnd(nn.Module):
    """``images`` uint8 ``[N, 3, H, W]`` -> ``boxes [N, max_det, 4]`` (x1, y1, x2, y2 in input pixels), ``scores
    [N, max_det]``, ``labels`` int64 ``[N, max_det]``, ``num_dets`` int64 ``[N]``: the detector (normalisation
    inside) and ``postprocess`` with ``options`` (``POST_OPTIONS``)."""

    def __init__(self, detector: nn.Module, options: dict[str, Any]) -> None:
        super().__init__()
        self.detector = detector
        self.options = {k: options[k] for k in POST_OPTIONS if k in options}
        self.level_sizes = points_per_level(detector.strides)  # python ints: the traced graph cannot read them

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dets = postprocess(self.detector(images), self.detector.points, self.detector.strides,
                           level_sizes=self.level_sizes, **self.options)
        return tuple(dets[k] for k in OUTPUTS)


def postprocess_nodes(model, module: str = "detector") -> list[str]:
    """Names of the nodes outside the ``detector`` sub-module (decoding, top-k, NMS, padding), by the exporter's
    ``name_scopes`` metadata: the fp16 variant keeps them fp32, since box coordinates and scores need the range."""
    names = []
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        try:
            inside = scopes is not None and ast.literal_eval(scopes)[1:2] == [module]
        except (ValueError, SyntaxError):
            inside = False
        if not inside and scopes is not None:
            names.append(node.name)
    return names


@dataclass
class DetectionEvalSet:
    """Model-ready images and their ground truth, as ``collate_detection`` batches them, with the COCO file they
    come from (what ``coco_map`` scores against) and the model's class names."""

    batch: dict[str, Any]
    source: str
    annotations: Path | None = None
    labels: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.batch["image"])


def load_detection_eval_set(spec: Any, preprocess, limit: int = 10000, seed: int = 0) -> DetectionEvalSet:
    """``spec``: ``(images_dir, annotations.json)`` of a COCO split, a COCO JSON whose ``file_name``s are relative
    to its folder, ``scenes`` (the built-in scenes' test split as it is under ``data/scenes``: never generated or
    rewritten here, so scenes made with other sizes or seed survive; missing: one error saying what to pass) or
    None (the scenes, for a model with their labels). At most ``limit`` images, a fixed random subset when more."""
    from vitlab.data.detection import CocoDetectionDataset, DetectionSamples, collate_detection, read_coco
    from vitlab.models.classify import FMNIST_LABELS

    if spec is None:
        if tuple(preprocess.labels) != FMNIST_LABELS:
            raise VitlabError("no held-out images for the export report: pass eval_data (--eval-data IMAGES_DIR "
                              "ANNOTATIONS.json) with COCO data the model did not train on")
        spec = "scenes"
    if isinstance(spec, (list, tuple)) and len(spec) == 1:
        spec = spec[0]
    if str(spec) == "scenes":
        from vitlab.data.scenes import existing_scenes

        images_dir, annotations = existing_scenes("data/scenes", "test")
    elif isinstance(spec, (list, tuple)) and len(spec) == 2:
        images_dir, annotations = Path(spec[0]), Path(spec[1])
    elif isinstance(spec, (str, os.PathLike)) and str(spec).endswith(".json"):
        images_dir, annotations = Path(spec).parent, Path(spec)
    else:
        raise VitlabError(f"detection eval data {spec!r}: give IMAGES_DIR ANNOTATIONS.json (COCO), a COCO JSON "
                          "beside its images, or 'scenes'")
    split = read_coco(annotations, images_dir)
    if preprocess.labels and tuple(split.class_names) != tuple(preprocess.labels):
        raise VitlabError(f"eval data {annotations}: categories {split.class_names} are not the model's labels "
                          f"{list(preprocess.labels)}")
    records = split.images
    if len(records) > limit:
        records = [records[i] for i in np.sort(np.random.default_rng(seed).choice(len(records), limit, False))]
    samples = DetectionSamples(CocoDetectionDataset(records), preprocess)
    items = []
    with Progress(len(samples), "eval images") as bar:
        for i in range(len(samples)):
            items.append(samples[i])
            bar.update()
    batch = collate_detection(items)
    if not len(batch["image"]):
        raise VitlabError(f"eval data {annotations}: no readable images")
    skipped = f" ({batch['skipped']} unreadable images skipped)" if batch["skipped"] else ""
    return DetectionEvalSet(batch, f"{annotations}{skipped}", Path(annotations), tuple(split.class_names))


def _sub_batch(batch: dict[str, Any], s: slice) -> dict[str, Any]:
    return {k: v[s] for k, v in batch.items() if k != "skipped"}


@torch.no_grad()
def torch_detections(module: DetectEndToEnd, eval_set: DetectionEvalSet, batch_size: int = 64) -> dict[str, Any]:
    """The eager module's outputs over the eval set (``OUTPUTS`` -> numpy, concatenated)."""
    module.eval()
    outs = [module(eval_set.batch["image"][s]) for s in counted_slices(len(eval_set), batch_size, "eval torch")]
    return {k: torch.cat([o[i] for o in outs]).numpy() for i, k in enumerate(OUTPUTS)}


def onnx_detections(session, eval_set: DetectionEvalSet, precision: str = "", batch_size: int = 64
                    ) -> dict[str, Any]:
    images = eval_set.batch["image"].numpy()
    outs = [session.run(OUTPUTS, {"images": images[s]})
            for s in counted_slices(len(images), batch_size, f"eval onnx {precision}".strip())]
    return {k: np.concatenate([o[i] for o in outs]) for i, k in enumerate(OUTPUTS)}


def coco_map(dets: dict[str, np.ndarray], eval_set: DetectionEvalSet) -> dict[str, float]:
    """mAP and mAP50 (%) with the task's metric code: COCO's evaluation of the detections (in the original images'
    pixels) against the eval set's annotation file, over its images."""
    from vitlab.tasks.detection import CocoMAP

    metric = CocoMAP(list(eval_set.labels), eval_set.annotations)
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in dets.items()}
    for s in counted_slices(len(eval_set), 256, "mAP"):
        metric.update({k: v[s] for k, v in tensors.items()}, _sub_batch(eval_set.batch, s))
    result = metric.compute()
    return {"map": float(result["map"]) * 100, "map_50": float(result["map_50"]) * 100}


def detection_parity(ref: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> dict[str, Any]:
    """How closely ``out``'s detections reproduce ``ref``'s: per image the same ``num_dets``, and each reference
    detection matched by one of the same label with IoU >= 0.99 and |score difference| <= 1e-3."""
    same_count = ref["num_dets"] == out["num_dets"]
    total = matched = 0
    min_iou, max_dscore = 1.0, 0.0
    for i in range(len(ref["num_dets"])):
        k, m = int(ref["num_dets"][i]), int(out["num_dets"][i])
        total += k
        if not k or not m:
            continue
        iou = box_iou(torch.from_numpy(ref["boxes"][i, :k]).float(), torch.from_numpy(out["boxes"][i, :m]).float())
        iou = torch.where(torch.from_numpy(ref["labels"][i, :k, None] == out["labels"][i, None, :m]), iou, -1.0)
        best_iou, j = iou.max(1)  # [k]
        dscore = np.abs(ref["scores"][i, :k] - out["scores"][i, :m][j.numpy()])
        ok = (best_iou.numpy() >= MATCH_IOU) & (dscore <= MATCH_SCORE)
        matched += int(ok.sum())
        if ok.any():
            min_iou = min(min_iou, float(best_iou.numpy()[ok].min()))
            max_dscore = max(max_dscore, float(dscore[ok].max()))
    matched_pct = 100.0 * matched / total if total else 100.0 * (out["num_dets"].sum() == 0)  # none: all match
    return {"num_dets_equal_pct": round(float(same_count.mean() * 100), 3),
            "matched_detections_pct": round(float(matched_pct), 3), "torch_detections": int(total),
            "onnx_detections": int(out["num_dets"].sum()), "min_matched_iou": round(min_iou, 6),
            "max_abs_diff_matched_scores": max_dscore}


class DetectionExport:
    """A detector's graph, eval set, torch reference and mAP50 gate (``TaskSpec.exporter`` of detection);
    ``options``: the task's post-processing hyper-parameters (``POST_OPTIONS``; missing ones: postprocess's
    defaults)."""

    outputs = OUTPUTS

    def __init__(self, model: nn.Module, options: dict[str, Any]) -> None:
        self.model = model.eval()
        self.depth = model.backbone.depth
        self.module = DetectEndToEnd(self.model, options).eval()
        self.eval_set: DetectionEvalSet | None = None
        self.ref: dict[str, np.ndarray] | None = None
        self.ref_map: dict[str, float] = {}

    def graph(self, opset: int):
        from vitlab.onnx.graph import export_module

        return export_module(self.module, self.model.preprocess.input_size, OUTPUTS, opset,
                             type(self.model).__name__)

    def prepare(self, eval_data: Any, num_eval: int) -> str:
        self.eval_set = load_detection_eval_set(eval_data, self.model.preprocess, num_eval)
        self.ref = torch_detections(self.module, self.eval_set)
        self.ref_map = coco_map(self.ref, self.eval_set)
        return f"{len(self.eval_set)} images from {self.eval_set.source}"

    def calibration(self, calib_data: Any, num_calib: int) -> np.ndarray:
        return load_detection_eval_set(calib_data, self.model.preprocess, num_calib).batch["image"].numpy()

    def metadata(self) -> dict[str, Any]:
        import inspect

        defaults = {k: p.default for k, p in inspect.signature(postprocess).parameters.items() if k in POST_OPTIONS}
        return {**defaults, **self.module.options}

    def fp32_nodes(self, model) -> list[str]:
        return postprocess_nodes(model)

    def evaluate(self, session, precision: str) -> dict[str, Any]:
        assert self.eval_set is not None and self.ref is not None
        out = onnx_detections(session, self.eval_set, precision)
        scores = coco_map(out, self.eval_set)
        drop = self.ref_map["map_50"] - scores["map_50"]
        budget = MAX_MAP50_DROP_PP[precision]
        return {"eval_images": len(self.eval_set), "eval_source": self.eval_set.source,
                "map50_torch_pct": round(self.ref_map["map_50"], 3), "map50_onnx_pct": round(scores["map_50"], 3),
                "map_torch_pct": round(self.ref_map["map"], 3), "map_onnx_pct": round(scores["map"], 3),
                "map50_drop_pp": round(drop, 3), "max_map50_drop_pp": budget,
                **detection_parity(self.ref, out), "passed": bool(drop <= budget + 1e-9),
                "gate": "mAP50", "gate_drop_pp": round(drop, 3), "gate_budget_pp": budget}

    @staticmethod
    def summary(rep: dict[str, Any]) -> str:
        return (f"mAP50 {rep['map50_onnx_pct']:.2f}% (torch {rep['map50_torch_pct']:.2f}%)  mAP "
                f"{rep['map_onnx_pct']:.2f}%  matched {rep['matched_detections_pct']:.1f}%")
