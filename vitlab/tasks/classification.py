"""ClassificationTask: training, validation and test of a ViT classifier (the LightningModule owns training only;
``forward`` is inference on 0..255 pixels).

Loss: cross-entropy with label smoothing, optional Mixup/CutMix (Zhang et al. 2018; Yun et al. 2019) via timm.
Optimiser: AdamW with linear warmup + cosine decay, optional layer-wise LR decay (BEiT, Bao et al. 2021) and
EMA weights (Lightning's EMAWeightAveraging). Every constructor argument is plain data, so the task rebuilds
from its checkpoint alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from vitlab.errors import VitlabError
from vitlab.models.classify import create_model
from vitlab.preprocess import PreprocessCfg


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
        "precision": MulticlassPrecision(num_classes, average="macro"),
        "recall": MulticlassRecall(num_classes, average="macro"),
    }, prefix=prefix)


class ClassificationTask(L.LightningModule):
    def __init__(self, model_name: str = "vitlab_fmnist", num_classes: int = 10,
                 class_names: list[str] | None = None, model_options: dict[str, Any] | None = None,
                 pretrained: str | bool | None = None, lr: float = 1e-3, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.999), warmup_epochs: float = 1.0, min_lr_ratio: float = 0.01,
                 layer_decay: float | None = None, label_smoothing: float = 0.1, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, mix_prob: float = 1.0, ema_decay: float | None = None) -> None:
        """
        Args:
            model_name: vitlab variant or timm ViT-family architecture (``vitlab.list_models()``).
            model_options: backbone options (img_size, patch_size, in_chans, drop_path_rate, ...).
            pretrained: local weights file (.safetensors/.pth/.ckpt) or Hugging Face ViT folder to start from.
            warmup_epochs: linear warmup length, then cosine decay to ``lr * min_lr_ratio`` at the last step.
            layer_decay: LR multiplier per block going down from the head (e.g. 0.75), None = off.
            mixup_alpha / cutmix_alpha: Beta parameters; 0 disables each.
            ema_decay: keep an exponential moving average of the weights (used for validation and saved).
        """
        super().__init__()
        self.save_hyperparameters()
        if class_names is not None and len(class_names) != num_classes:
            raise VitlabError(f"model.class_names has {len(class_names)} names for num_classes={num_classes}")
        self.model = create_model(model_name, num_classes=num_classes, pretrained=pretrained,
                                  labels=class_names, **(model_options or {}))
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mix_prob,
                               label_smoothing=label_smoothing, num_classes=num_classes)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_metrics = _metrics(num_classes, "val/")
        self.test_metrics = _metrics(num_classes, "test/")
        self.confusion = MulticlassConfusionMatrix(num_classes)
        self.skipped_images = 0

    @property
    def preprocess(self) -> PreprocessCfg:
        return self.model.preprocess

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def configure_callbacks(self):
        if self.hparams.ema_decay:
            from lightning.pytorch.callbacks import EMAWeightAveraging

            return [EMAWeightAveraging(decay=self.hparams.ema_decay)]
        return []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vitlab_task"] = type(self).__name__

    # --- steps -----------------------------------------------------------------------------------------
    def _count_skipped(self, batch: dict[str, Any]) -> bool:
        skipped = int(batch.get("skipped", 0))
        if skipped:
            self.skipped_images += skipped
            self.log("data/skipped_images", float(self.skipped_images), reduce_fx="max")
        return batch["image"].numel() > 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if not self._count_skipped(batch):
            return None
        images, target = batch["image"].float(), batch["target"]
        if self.mixup is not None and len(target) % 2 == 0:
            images, soft = self.mixup(images, target)
            logits = self(images)
            loss = torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            logits = self(images)
            loss = F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing)
        self.train_acc(logits, target)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch: dict[str, Any], metrics: MetricCollection, stage: str) -> None:
        if not self._count_skipped(batch):
            return
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["target"])
        metrics.update(logits, batch["target"])
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=len(logits))
        self.log_dict(metrics, prog_bar=stage == "val", batch_size=len(logits))
        if stage == "test":
            self.confusion.update(logits, batch["target"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        probs = self(batch["image"]).softmax(-1)  # [N, C]
        return {"probs": probs, "target": batch["target"]}

    def on_test_epoch_end(self) -> None:
        from vitlab.viz import write_classification_report

        cm = self.confusion.compute().cpu()
        self.confusion.reset()
        if self.trainer.is_global_zero:
            names = list(self.preprocess.labels) or [str(i) for i in range(self.hparams.num_classes)]
            write_classification_report(cm, names, self.report_dir())

    def report_dir(self) -> Path:
        """Where ``test`` writes its confusion matrix and per-class tables: the logger's version folder, or
        ``default_root_dir/test_report`` without a logger (never loose files in the working directory)."""
        if self.trainer.loggers and self.trainer.log_dir:
            return Path(self.trainer.log_dir)
        return Path(self.trainer.default_root_dir) / "test_report"

    # --- optimisation ----------------------------------------------------------------------------------
    def _param_groups(self) -> list[dict[str, Any]]:
        from timm.optim import param_groups_layer_decay, param_groups_weight_decay

        vit, wd = self.model.backbone.vit, self.hparams.weight_decay
        if self.hparams.layer_decay:
            groups = param_groups_layer_decay(vit, weight_decay=wd, layer_decay=self.hparams.layer_decay)
        else:
            groups = param_groups_weight_decay(vit, weight_decay=wd)
        head = [p for n, p in self.model.named_parameters() if not n.startswith("backbone.")]
        return [*groups, {"params": head, "weight_decay": wd}]

    def build_optimizer(self, total_steps: int, steps_per_epoch: float):
        """AdamW over the (layer-decayed) parameter groups + per-step warmup-cosine LambdaLR."""
        h = self.hparams
        opt = torch.optim.AdamW(self._param_groups(), lr=h.lr, betas=tuple(h.betas))
        for g in opt.param_groups:  # timm's layer-decay groups carry their own multiplier
            g["lr"] = h.lr * g.get("lr_scale", 1.0)
        total = max(1, total_steps)
        warmup = min(int(h.warmup_epochs * steps_per_epoch), total - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            t = min(1.0, (step - warmup) / max(1, total - warmup))
            return h.min_lr_ratio + (1 - h.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def configure_optimizers(self):
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        opt, sched = self.build_optimizer(total, total / epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
