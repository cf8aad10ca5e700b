"""ClassificationTask: training, validation and test of a ViT classifier (the LightningModule owns training only;
``forward`` is inference on 0..255 pixels).

Loss: cross-entropy with label smoothing, optional Mixup/CutMix (Zhang et al. 2018; Yun et al. 2019) via timm.
Optimiser: AdamW with linear warmup + cosine decay, optional layer-wise LR decay (BEiT, Bao et al. 2021) and
EMA weights (Lightning's EMAWeightAveraging); the optimiser, the report folder and the checkpoint's task name
come from ``VitlabTask`` (tasks/base.py). Every constructor argument is plain data, so the task rebuilds from its
checkpoint alone.
"""

from __future__ import annotations

from typing import Any

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
from vitlab.tasks.base import VitlabTask
from vitlab.tasks.optim import OptimConfig
from vitlab.tasks.spec import TaskSpec, register_task

DEFAULT_OPTIM = OptimConfig(lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), warmup_epochs=1.0)


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
        "precision": MulticlassPrecision(num_classes, average="macro"),
        "recall": MulticlassRecall(num_classes, average="macro"),
    }, prefix=prefix)


class ClassificationTask(VitlabTask):
    def __init__(self, model_name: str = "vitlab_fmnist", num_classes: int = 10,
                 class_names: list[str] | None = None, model_options: dict[str, Any] | None = None,
                 pretrained: str | bool | None = None, optim: OptimConfig = DEFAULT_OPTIM,
                 label_smoothing: float = 0.1, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, mix_prob: float = 1.0, ema_decay: float | None = None,
                 test_time_flip: bool = False) -> None:
        """
        Args:
            model_name: vitlab variant or timm ViT-family architecture (``vitlab.list_models()``).
            model_options: backbone options (img_size, patch_size, in_chans, drop_path_rate, ...).
            pretrained: local weights file (.safetensors/.pth/.ckpt) or Hugging Face ViT folder to start from.
            optim: AdamW + warmup-cosine settings (``OptimConfig``: lr, weight_decay, betas, warmup_epochs,
                warmup_steps, min_lr_ratio, layer_decay); keys left out keep ``DEFAULT_OPTIM``.
            mixup_alpha / cutmix_alpha: Beta parameters; 0 disables each.
            ema_decay: keep an exponential moving average of the weights (used for validation and saved).
            test_time_flip: validation, test, predict and the exported model average the logits of each image and
                its mirror image (for models trained with horizontal flips; twice the inference cost).
        """
        super().__init__()
        optim = OptimConfig.of(optim, DEFAULT_OPTIM).as_dict()  # plain values in the checkpoint
        self.save_hyperparameters()
        if class_names is not None and len(class_names) != num_classes:
            raise VitlabError(f"model.class_names has {len(class_names)} names for num_classes={num_classes}")
        self.model = create_model(model_name, num_classes=num_classes, pretrained=pretrained,
                                  labels=class_names, **(model_options or {}))
        self.model.test_time_flip = test_time_flip
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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def configure_callbacks(self):
        if self.hparams.ema_decay:
            from lightning.pytorch.callbacks import EMAWeightAveraging

            return [EMAWeightAveraging(decay=self.hparams.ema_decay)]
        return []

    # --- steps -----------------------------------------------------------------------------------------
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
        out = self.report_dir()  # on every rank (a broadcast)
        if self.trainer.is_global_zero:
            names = list(self.preprocess.labels) or [str(i) for i in range(self.hparams.num_classes)]
            write_classification_report(cm, names, out)


def classification_outputs(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The exported graph's ``probs [N, K]`` from a classifier (uint8 images in)."""
    return {"probs": model(images).softmax(-1)}


register_task(TaskSpec(
    "classification", ClassificationTask, aliases=("classify",), outputs=classification_outputs,
    exporter="vitlab.onnx.classify:ClassificationExport", result="vitlab.inference.results:Prediction",
    overlay="vitlab.inference.results:classification_overlay", explain=True,
    demo=("classify/fmnist_demo.yaml", "runs/demo", "vitlab.demo:classify_demo")))
