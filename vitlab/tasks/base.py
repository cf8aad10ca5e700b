"""What every vitlab task shares: the model's preprocessing, the task name in the checkpoint, skipped-image
counting, where ``test`` writes its report, and the optimiser (AdamW + warmup-cosine, optional layer-wise LR decay).

A task subclass sets ``self.model`` (an ``nn.Module`` with ``backbone: ViTBackbone`` and ``preprocess``) and has
the hyper-parameters ``lr``, ``weight_decay``, ``betas``, ``warmup_epochs``, ``min_lr_ratio`` and ``layer_decay``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

from vitlab.preprocess import PreprocessCfg


class VitlabTask(L.LightningModule):
    """Base LightningModule of the vitlab tasks (``ClassificationTask``, ``DetectionTask``, ...)."""

    model: torch.nn.Module

    @property
    def preprocess(self) -> PreprocessCfg:
        return self.model.preprocess

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vitlab_task"] = type(self).__name__  # vitlab.load finds its TaskSpec by it

    def _count_skipped(self, batch: dict[str, Any]) -> bool:
        """Log the running count of unreadable images the loader dropped; False when nothing is left to train on."""
        skipped = int(batch.get("skipped", 0))
        if skipped:
            self.skipped_images = getattr(self, "skipped_images", 0) + skipped
            self.log("data/skipped_images", float(self.skipped_images), reduce_fx="max")
        return batch["image"].numel() > 0

    def report_dir(self) -> Path:
        """Where ``test`` writes its pictures and tables: the logger's version folder, or
        ``default_root_dir/test_report`` without a logger (never loose files in the working directory).
        Call it on every rank: ``trainer.log_dir`` is a broadcast, so calling it on rank 0 alone hangs DDP."""
        if self.trainer.loggers and self.trainer.log_dir:
            return Path(self.trainer.log_dir)
        return Path(self.trainer.default_root_dir) / "test_report"

    # --- optimisation ----------------------------------------------------------------------------------
    def _param_groups(self) -> list[dict[str, Any]]:
        """timm's groups for the ViT (no weight decay on norms/biases/tokens; per-block LR scale with
        ``layer_decay``, BEiT: Bao et al. 2021), then everything outside the backbone (heads, necks) at full LR."""
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
