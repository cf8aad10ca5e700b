"""DetectionTask: training, validation and test of a ViT detector (ViTDet's simple feature pyramid + a dense
anchor-free head; Li et al. 2022, Tian et al. 2019). The LightningModule owns training only: ``forward`` is the
model's raw outputs on 0..255 pixels, ``detect`` adds the one post-processing function that the exported graph
runs too.

Metrics: COCO's own evaluation (faster_coco_eval's ``COCOeval``, bbox) of the detections as ``vitlab predict
--format coco`` writes them (boxes mapped back to each image's original pixels by the edge kit's record decoding,
COCO results JSON rows), over every rank's images, against the split's ground-truth COCO JSON as the user gave it
(``datamodule.coco_annotations(split)``). So ``vitlab test`` is the figure COCO's evaluation gives on the original
file: ``iscrowd`` boxes are ignore regions, boxes too small to survive the letterbox still count as ground truth,
``area`` (behind ``map_small/medium/large``) is the file's. Training reads the same file but learns neither (see
``vitlab.data.detection``). Without such a file (a datamodule of one's own) the ground truth is the batches' boxes.
After ``test``: per-class AP tables, a precision-recall curve and overlays of a few test images (``vitlab.viz``).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from vitlab_edge.files import coco_bbox
from vitlab_edge.tasks import EDGE_TASKS

from vitlab._dist import rank
from vitlab.errors import VitlabError
from vitlab.models.detect import create_detector, postprocess
from vitlab.tasks.base import VitlabTask
from vitlab.tasks.optim import OptimConfig
from vitlab.tasks.spec import TaskSpec, register_task

DEFAULT_OPTIM = OptimConfig(lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), warmup_epochs=1.0)

# COCOeval's twelve summary figures in its order, logged as val/<key> and test/<key>
SUMMARY_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100",
                "mar_small", "mar_medium", "mar_large")
OVERLAY_MIN_SCORE, OVERLAY_MAX_BOXES = 0.3, 30  # the predictions drawn on the test overlays (the best, by score)


def _quiet(*args: Any, **kwargs: Any) -> None:
    """COCOeval's printer, silenced: the figures are logged, not printed."""


def coco_evaluate(gt, results: list[dict[str, Any]], image_ids: list[int], category_ids: list[int]) -> dict[str, Any]:
    """COCO's bbox evaluation of ``results`` (COCO results rows) against ``gt`` (a faster_coco_eval ``COCO``) over
    ``image_ids``: the twelve ``SUMMARY_KEYS`` (0-d tensors; -1 where COCO has no ground truth to score), and per
    model class (label ``k`` is category ``category_ids[k]``) what the test report draws: ``classes`` [K],
    ``precision`` [T, R, K, A, M] (IoU thresholds, recall points, classes, areas, max detections), ``map_per_class``
    and ``mar_100_per_class`` [K] (-1: no ground truth), ``num_gt`` (non-crowd boxes per class) and
    ``iou_thresholds``."""
    from faster_coco_eval import COCOeval_faster

    ev = COCOeval_faster(gt, gt.loadRes(results), "bbox", print_function=_quiet)
    ev.params.imgIds = sorted(image_ids)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    cats = [int(c) for c in ev.params.catIds]
    idx = [cats.index(int(c)) for c in category_ids]
    precision = np.asarray(ev.eval["precision"], np.float64)[:, :, idx]  # [T, R, K, A, M]
    recall = np.asarray(ev.eval["recall"], np.float64)[:, idx]  # [T, K, A, M]

    def mean_scored(a: np.ndarray) -> float:  # COCO's summary: the mean over the entries that have ground truth
        return float(a[a > -1].mean()) if (a > -1).any() else -1.0

    seen = set(image_ids)
    counts = Counter(int(a["category_id"]) for i in seen for a in gt.imgToAnns.get(i, []) if not a.get("iscrowd", 0))
    out: dict[str, Any] = {k: torch.tensor(float(v)) for k, v in zip(SUMMARY_KEYS, ev.stats)}
    return {**out, "classes": torch.arange(len(category_ids)), "precision": torch.from_numpy(precision),
            "map_per_class": torch.tensor([mean_scored(precision[:, :, k, 0, -1]) for k in range(len(idx))]),
            "mar_100_per_class": torch.tensor([mean_scored(recall[:, k, 0, -1]) for k in range(len(idx))]),
            "num_gt": [counts.get(int(c), 0) for c in category_ids],
            "iou_thresholds": [round(float(t), 2) for t in ev.params.iouThrs]}


def _rows(state: list[torch.Tensor] | torch.Tensor, width: int) -> np.ndarray:
    """A flat float64 state (a list of tensors, or one after syncing ranks) as ``[rows, width]``."""
    if isinstance(state, list):
        state = dim_zero_cat(state) if state else torch.zeros(0, dtype=torch.float64)
    return state.detach().cpu().numpy().astype(np.float64).reshape(-1, width)


class CocoMAP(Metric):
    """COCO mAP of detections by COCO's own evaluation (``coco_evaluate``).

    ``update(dets, batch)``: ``postprocess``'s padded output for a detection batch (``collate_detection``); each
    image's first ``num_dets`` rows become COCO results rows exactly as ``vitlab predict --format coco`` writes them
    (``vitlab_edge.records.detection_record`` maps them to the original pixels of ``orig_size``). ``compute()``
    scores them against ``annotations``, a COCO JSON holding the batches' ``image_id``s (the split's file as given),
    or, when it is None, against the batches' own boxes; over the images seen only (a ``limit_*_batches`` run).

    States are flat float64 rows, concatenated over ranks: per visit of an image ``(token, image_id)``, per
    detection ``(token, image_id, x, y, w, h, score, label)``, per batch box ``(token, image_id, x, y, w, h,
    label)``. The token tells two visits of one image apart: only the first counts (DDP samplers pad with repeats).
    """

    full_state_update = False
    IMAGE, DET, GT = 2, 8, 7

    def __init__(self, labels: list[str], annotations: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.labels, self.annotations = list(labels), annotations
        for name in ("images", "dets", "gts"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.set_dtype(torch.float64)
        self._visits = 0

    def update(self, dets: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        from vitlab_edge.boxes import boxes_to_original
        from vitlab_edge.records import RowContext, detection_record

        input_hw = (int(batch["image"].shape[-2]), int(batch["image"].shape[-1]))
        orig, ids = batch.get("orig_size"), batch.get("image_id")
        out = {k: dets[k].detach().cpu().numpy() for k in ("boxes", "scores", "labels", "num_dets")}
        images, rows, gts = [], [], []
        for i, (gt_boxes, gt_labels) in enumerate(zip(batch["boxes"], batch["labels"])):
            self._visits += 1
            token = self._visits * 65536 + rank()
            image_id = int(ids[i]) if ids is not None else token
            src = (int(orig[i][0]), int(orig[i][1])) if orig is not None else None
            ctx = RowContext(self.labels, src_hw=src, input_hw=input_hw if src else None)
            rec = detection_record(out["boxes"][i], out["scores"][i], out["labels"][i], int(out["num_dets"][i]), ctx)
            images.append((token, image_id))
            rows += [(token, image_id, *coco_bbox(b), s, k) for b, s, k in zip(rec["boxes"], rec["scores"],
                                                                                rec["class_ids"])]
            gt = gt_boxes.detach().float().cpu().numpy().reshape(-1, 4)
            gt = boxes_to_original(gt, src, input_hw) if src else gt
            gts += [(token, image_id, b[0], b[1], b[2] - b[0], b[3] - b[1], int(k))
                    for b, k in zip(gt.astype(np.float64).tolist(), gt_labels.reshape(-1).tolist())]
        for name, data in (("images", images), ("dets", rows), ("gts", gts)):
            getattr(self, name).append(torch.tensor(data, dtype=torch.float64, device=self.device).reshape(-1))

    def compute(self) -> dict[str, Any]:
        from vitlab_edge.files import coco_category_ids

        first: dict[int, float] = {}
        for token, image_id in sorted(_rows(self.images, self.IMAGE).tolist()):
            first.setdefault(int(image_id), token)
        tokens = np.array(sorted(first.values()), np.float64)
        dets, gts = (r[np.isin(r[:, 0], tokens)] for r in (_rows(self.dets, self.DET), _rows(self.gts, self.GT)))
        image_ids = sorted(first)
        gt = self._ground_truth(gts, image_ids)
        try:
            category = coco_category_ids(gt.dataset, self.labels)
        except ValueError as e:
            raise VitlabError(f"COCO annotations {self.annotations}: {e}") from None
        results = [{"image_id": int(r[1]), "category_id": category[int(r[7])], "bbox": r[2:6].tolist(),
                    "score": float(r[6])} for r in dets]
        return coco_evaluate(gt, results, image_ids, category)

    def _ground_truth(self, gts: np.ndarray, image_ids: list[int]):
        """The file's ``COCO`` (every seen image must be in it), or one made of the batches' boxes."""
        from faster_coco_eval import COCO

        if self.annotations is not None:
            gt = COCO(str(self.annotations), print_function=_quiet)
            missing = sorted(set(image_ids) - set(gt.getImgIds()))
            if missing:
                raise VitlabError(f"COCO annotations {self.annotations}: no image with id {missing[0]} ({len(missing)} "
                                  f"evaluated images are not in it): evaluate a split against its own JSON")
            return gt
        doc = {"images": [{"id": i} for i in image_ids],
               "annotations": [{"id": j + 1, "image_id": int(r[1]), "category_id": int(r[6]) + 1,
                                "bbox": r[2:6].tolist(), "area": float(r[4] * r[5]), "iscrowd": 0}
                               for j, r in enumerate(gts)],
               "categories": [{"id": k + 1, "name": name} for k, name in enumerate(self.labels)]}
        return COCO(doc, print_function=_quiet)


class DetectionTask(VitlabTask):
    def __init__(self, model_name: str = "vitdet_scenes", num_classes: int = 10,
                 class_names: list[str] | None = None, model_options: dict[str, Any] | None = None,
                 pretrained: str | bool | None = None, optim: OptimConfig = DEFAULT_OPTIM,
                 score_thresh: float = 0.05, nms_thresh: float = 0.6,
                 topk: int = 1000, max_det: int = 100, class_agnostic: bool = False, num_overlays: int = 8) -> None:
        """
        Args:
            model_name: registered detector variant (``vitdet_scenes``, ``vitdet_small_640``, ...).
            model_options: the variant's options (backbone and head; see ``vitlab.models.detect``).
            pretrained: backbone weights to start from (local .safetensors/.pth/.ckpt or Hugging Face ViT folder).
            optim: AdamW + warmup-cosine settings (``OptimConfig``); keys left out keep ``DEFAULT_OPTIM``;
                ``layer_decay`` scales the LR per ViT block going down from the neck (e.g. 0.7 as in ViTDet).
            score_thresh / nms_thresh / topk / max_det / class_agnostic: post-processing, as in the exported graph
                (the defaults are COCO evaluation's: keep low-scoring boxes, 100 per image).
            num_overlays: test images drawn with their ground truth and predictions after ``test``.
        """
        super().__init__()
        optim = OptimConfig.of(optim, DEFAULT_OPTIM).as_dict()  # plain values in the checkpoint
        self.save_hyperparameters()
        if class_names is not None and len(class_names) != num_classes:
            raise VitlabError(f"model.class_names has {len(class_names)} names for num_classes={num_classes}")
        self.model = create_detector(model_name, num_classes=num_classes, pretrained=pretrained,
                                     labels=class_names, **(model_options or {}))
        self.val_map = CocoMAP(self._names())
        self.test_map = CocoMAP(self._names())
        self._overlays: list[dict[str, np.ndarray]] = []

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(images)  # raw head outputs: cls_logits [N, P, K], box_regression [N, P, 4], centerness

    def postprocess(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = self.hparams
        return postprocess(outputs, self.model.points, self.model.strides, score_thresh=h.score_thresh,
                           nms_thresh=h.nms_thresh, topk=h.topk, max_det=h.max_det, class_agnostic=h.class_agnostic)

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 ``[N, 3, H, W]`` -> boxes ``[N, max_det, 4]`` (input pixels), scores, labels, num_dets."""
        return self.postprocess(self(images))

    # --- steps -----------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if not self._count_skipped(batch):
            return None
        losses = self.model.loss(self(batch["image"]), batch["boxes"], batch["labels"])
        n = len(batch["image"])
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items() if k != "loss"}, batch_size=n)
        return losses["loss"]

    def _eval_step(self, batch: dict[str, Any], metric: CocoMAP, stage: str) -> None:
        if not self._count_skipped(batch):
            return
        outputs = self(batch["image"])
        loss = self.model.loss(outputs, batch["boxes"], batch["labels"])["loss"]
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=len(batch["image"]))
        dets = self.postprocess(outputs)
        metric.update(dets, batch)
        if stage == "test":
            self._keep_overlays(batch, dets)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_map, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_map, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return {**self.detect(batch["image"]), "image_id": batch["image_id"]}

    def _ground_truth_file(self, split: str) -> Path | None:
        """The split's ground-truth COCO JSON as the datamodule was given it (``coco_annotations``), if it has one."""
        find = getattr(getattr(self.trainer, "datamodule", None), "coco_annotations", None)
        return Path(find(split)) if callable(find) else None

    def on_validation_epoch_start(self) -> None:
        self.val_map.annotations = self._ground_truth_file("val")

    def on_test_epoch_start(self) -> None:
        self.test_map.annotations = self._ground_truth_file("test")

    def _log_map(self, metric: CocoMAP, stage: str) -> dict[str, Any]:
        result = metric.compute()  # every rank's images (torchmetrics gathers them); the same figures on each rank
        metric.reset()
        shown = ("map", "map_50") if stage == "val" else ()  # in the progress bar
        for k in SUMMARY_KEYS:
            self.log(f"{stage}/{k}", result[k].float(), prog_bar=k in shown, sync_dist=True)
        return result

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")

    def on_test_epoch_end(self) -> None:
        from vitlab.viz import write_detection_report

        result = self._log_map(self.test_map, "test")
        out = self.report_dir()  # on every rank (a broadcast)
        if self.trainer.is_global_zero:
            summary = {k: round(float(result[k]), 4) for k in SUMMARY_KEYS if k in result}
            write_detection_report(result, self._names(), result["num_gt"], out, result["iou_thresholds"], summary)
            self._write_overlays(out / "overlays")
        self._overlays = []

    # --- pictures --------------------------------------------------------------------------------------
    def _names(self) -> list[str]:
        return list(self.preprocess.labels) or [str(i) for i in range(self.hparams.num_classes)]

    def _keep_overlays(self, batch: dict[str, Any], dets: dict[str, torch.Tensor]) -> None:
        """The first ``num_overlays`` test images of rank 0 with their boxes (model-input pixels)."""
        if not self.trainer.is_global_zero:
            return
        image_ids = batch.get("image_id")
        for i in range(len(batch["image"])):
            if len(self._overlays) >= self.hparams.num_overlays:
                return
            k = min(int(dets["num_dets"][i]), OVERLAY_MAX_BOXES)  # rows are sorted by score
            keep = dets["scores"][i, :k] >= OVERLAY_MIN_SCORE
            self._overlays.append({
                "image": batch["image"][i].cpu().numpy().transpose(1, 2, 0),
                "boxes": dets["boxes"][i, :k][keep].cpu().numpy(), "scores": dets["scores"][i, :k][keep].cpu().numpy(),
                "labels": dets["labels"][i, :k][keep].cpu().numpy(),
                "gt_boxes": batch["boxes"][i].cpu().numpy(), "gt_labels": batch["labels"][i].cpu().numpy(),
                "image_id": int(image_ids[i]) if image_ids is not None else len(self._overlays)})

    def _write_overlays(self, folder) -> None:
        from vitlab.viz import save_detection_overlay

        for j, o in enumerate(self._overlays):
            title = (f"image {o['image_id']}: {len(o['gt_boxes'])} true (white), {len(o['boxes'])} predicted "
                     f"(score >= {OVERLAY_MIN_SCORE})")
            save_detection_overlay(o["image"], folder / f"test_{j:03d}.png", o["boxes"], o["labels"], self._names(),
                                   o["scores"], o["gt_boxes"], o["gt_labels"], title)


def detection_outputs(model, images: torch.Tensor, **options: Any) -> dict[str, torch.Tensor]:
    """The exported graph's ``boxes``, ``scores``, ``labels``, ``num_dets``: the one postprocess the graph runs too,
    with the checkpoint's thresholds (``options``)."""
    return model.postprocess(model(images), **options)


register_task(TaskSpec(
    "detection", DetectionTask, aliases=("detect",), outputs=detection_outputs,
    options=EDGE_TASKS["detection"].keys,  # the post-processing options the metadata carries too
    exporter="vitlab.onnx.detect:DetectionExport", result="vitlab.inference.results:DetectionPrediction",
    overlay="vitlab.inference.results:detection_overlay",
    demo=("detect/scenes_demo.yaml", "runs/demo_detect", "vitlab.demo_detect:detect_demo")))
