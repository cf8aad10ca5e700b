"""What every vitlab task shares: the model's preprocessing, the task name in the checkpoint, skipped-image
counting, where ``test`` writes its report, and the optimiser (AdamW + warmup-cosine, optional layer-wise LR decay).

A task subclass sets ``self.model`` (an ``nn.Module`` with ``backbone: ViTBackbone`` and ``preprocess``), takes
``optim: OptimConfig`` (``vitlab.tasks.optim``) with its own defaults, and before ``save_hyperparameters()``
rebinds it to ``OptimConfig.of(optim, ITS_DEFAULTS).as_dict()`` so that the checkpoint holds plain values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

from vitlab.preprocess import PreprocessCfg
from vitlab.tasks.optim import OptimConfig


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

        vit, wd = self.model.backbone.vit, self.optim.weight_decay
        if self.optim.layer_decay:
            groups = param_groups_layer_decay(vit, weight_decay=wd, layer_decay=self.optim.layer_decay)
        else:
            groups = param_groups_weight_decay(vit, weight_decay=wd)
        head = [p for n, p in self.model.named_parameters() if not n.startswith("backbone.")]
        return [*groups, {"params": head, "weight_decay": wd}]

    @property
    def optim(self) -> OptimConfig:
        """The optimiser settings; the hyper-parameters hold them as a plain dict (see ``vitlab.tasks.optim``)."""
        return OptimConfig.of(self.hparams["optim"], OptimConfig())

    def configure_optimizers(self):
        """AdamW over the parameter groups + per-step warmup-cosine; the warmup's epochs are epochs of the training
        data (``num_training_batches``), also when ``max_steps`` ends the run first."""
        total = int(self.trainer.estimated_stepping_batches)  # also sets up the train dataloader
        batches = self.trainer.num_training_batches
        per_epoch = (math.ceil(batches / max(1, self.trainer.accumulate_grad_batches))
                     if batches and math.isfinite(batches) else total)
        opt, sched = self.build_optimizer(total, per_epoch)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def build_optimizer(self, total_steps: int, steps_per_epoch: float):
        """``(AdamW, LambdaLR)`` over this task's parameter groups with its ``optim`` settings (also for a bare
        training loop: ``benchmarks/``)."""
        return self.optim.build(self._param_groups(), total_steps, steps_per_epoch)
