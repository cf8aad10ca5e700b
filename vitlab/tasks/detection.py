"""DetectionTask: training, validation and test of a ViT detector (ViTDet's simple feature pyramid + a dense
anchor-free head; Li et al. 2022, Tian et al. 2019). The LightningModule owns training only: ``forward`` is the
model's raw outputs on 0..255 pixels, ``detect`` adds the one post-processing function that the exported graph
runs too.

Metrics: COCO mAP (torchmetrics ``MeanAveragePrecision`` on the faster_coco_eval backend) over every rank's
images, with boxes mapped back to each image's original pixels (the letterbox undone), so the areas behind
``map_small/medium/large`` are COCO's and ``vitlab test`` scores what ``vitlab predict`` writes. After ``test``:
per-class AP tables, a precision-recall curve and overlays of a few test images (``vitlab.viz``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.detection import MeanAveragePrecision

from vitlab.errors import VitlabError
from vitlab.models.detect import create_detector, postprocess
from vitlab.tasks.base import VitlabTask

# the scalar figures of MeanAveragePrecision.compute(), logged as val/<key> and test/<key>
SUMMARY_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100",
                "mar_small", "mar_medium", "mar_large")
OVERLAY_MIN_SCORE, OVERLAY_MAX_BOXES = 0.3, 30  # the predictions drawn on the test overlays (the best, by score)


def map_metric(per_class: bool = False) -> MeanAveragePrecision:
    """COCO mAP on xyxy boxes; ``per_class`` adds per-class AP/AR and the precision arrays (for the PR curve)."""
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval",
                                class_metrics=per_class, extended_summary=per_class)


class GroundTruthCounts(Metric):
    """Ground-truth boxes per class, summed over batches and ranks (the ``num_gt`` column of the AP table)."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, labels: list[torch.Tensor]) -> None:
        for lab in labels:
            self.counts += torch.bincount(lab.long().flatten(), minlength=self.num_classes)[: self.num_classes]

    def compute(self) -> torch.Tensor:
        return self.counts


def _to_original(boxes: torch.Tensor, orig_hw: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """``[M, 4]`` model-input boxes -> the original image's pixels (the edge kit's rule, shared with the
    Predictor and exported models)."""
    from vitlab_edge.boxes import boxes_to_original

    src = (int(orig_hw[0]), int(orig_hw[1]))
    out = boxes_to_original(boxes.detach().float().cpu().numpy(), src, input_hw)
    return torch.as_tensor(np.asarray(out, dtype=np.float32), device=boxes.device)


def metric_inputs(dets: dict[str, torch.Tensor], batch: dict[str, Any]
                  ) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """torchmetrics' (preds, target) from ``postprocess``'s padded output and a detection batch: the first
    ``num_dets`` rows of each image (the padding dropped), boxes in original-image pixels when the batch says
    ``orig_size`` (else in model-input pixels)."""
    input_hw = (int(batch["image"].shape[-2]), int(batch["image"].shape[-1]))
    orig = batch.get("orig_size")
    preds, target = [], []
    for i, (gt_boxes, gt_labels) in enumerate(zip(batch["boxes"], batch["labels"])):
        k = int(dets["num_dets"][i])
        boxes, gt = dets["boxes"][i, :k].float(), gt_boxes.float().reshape(-1, 4)
        if orig is not None:
            boxes, gt = _to_original(boxes, orig[i], input_hw), _to_original(gt, orig[i], input_hw)
        preds.append({"boxes": boxes, "scores": dets["scores"][i, :k].float(), "labels": dets["labels"][i, :k].long()})
        target.append({"boxes": gt, "labels": gt_labels.long().reshape(-1)})
    return preds, target


class DetectionTask(VitlabTask):
    def __init__(self, model_name: str = "vitdet_scenes", num_classes: int = 10,
                 class_names: list[str] | None = None, model_options: dict[str, Any] | None = None,
                 pretrained: str | bool | None = None, lr: float = 1e-3, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.999), warmup_epochs: float = 1.0, min_lr_ratio: float = 0.01,
                 layer_decay: float | None = None, score_thresh: float = 0.05, nms_thresh: float = 0.6,
                 topk: int = 1000, max_det: int = 100, class_agnostic: bool = False, num_overlays: int = 8) -> None:
        """
        Args:
            model_name: registered detector variant (``vitdet_scenes``, ``vitdet_small_640``, ...).
            model_options: the variant's options (backbone and head; see ``vitlab.models.detect``).
            pretrained: backbone weights to start from (local .safetensors/.pth/.ckpt or Hugging Face ViT folder).
            warmup_epochs: linear warmup length, then cosine decay to ``lr * min_lr_ratio`` at the last step.
            layer_decay: LR multiplier per ViT block going down from the neck (e.g. 0.7 as in ViTDet), None = off.
            score_thresh / nms_thresh / topk / max_det / class_agnostic: post-processing, as in the exported graph
                (the defaults are COCO evaluation's: keep low-scoring boxes, 100 per image).
            num_overlays: test images drawn with their ground truth and predictions after ``test``.
        """
        super().__init__()
        self.save_hyperparameters()
        if class_names is not None and len(class_names) != num_classes:
            raise VitlabError(f"model.class_names has {len(class_names)} names for num_classes={num_classes}")
        self.model = create_detector(model_name, num_classes=num_classes, pretrained=pretrained,
                                     labels=class_names, **(model_options or {}))
        self.val_map = map_metric()
        self.test_map = map_metric(per_class=True)
        self.test_counts = GroundTruthCounts(num_classes)
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

    def _eval_step(self, batch: dict[str, Any], metric: MeanAveragePrecision, stage: str) -> None:
        if not self._count_skipped(batch):
            return
        outputs = self(batch["image"])
        loss = self.model.loss(outputs, batch["boxes"], batch["labels"])["loss"]
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=len(batch["image"]))
        dets = self.postprocess(outputs)
        metric.update(*metric_inputs(dets, batch))
        if stage == "test":
            self.test_counts.update(batch["labels"])
            self._keep_overlays(batch, dets)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_map, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_map, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return {**self.detect(batch["image"]), "image_id": batch["image_id"]}

    def _log_map(self, metric: MeanAveragePrecision, stage: str) -> dict[str, Any]:
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
        counts = self.test_counts.compute().tolist()
        self.test_counts.reset()
        out = self.report_dir()  # on every rank (a broadcast)
        if self.trainer.is_global_zero:
            summary = {k: round(float(result[k]), 4) for k in SUMMARY_KEYS if k in result}
            write_detection_report(result, self._names(), counts, out, list(self.test_map.iou_thresholds), summary)
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
