"""Multi-device prediction on Lightning's own strategies (DDP across GPUs / nodes, or CPU processes on gloo).

Each rank decodes and predicts its share of the inputs; ``ShardedPredictionWriter`` writes per-rank shards keyed
by sample index and merges them on rank 0, so every input is answered exactly once, in input order.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from vitlab_edge.progress import Progress

from vitlab.errors import VitlabError
from vitlab.inference.backends import torch_outputs
from vitlab.inference.predictor import batch_predictions, decode_loader
from vitlab.inference.writers import ShardedPredictionWriter


class PredictModule(L.LightningModule):
    """A trained model (classifier, detector) as a LightningModule whose predict step returns one record per
    input; ``options``: its post-processing options (``vitlab.inference.backends.task_options``)."""

    def __init__(self, classifier: torch.nn.Module, topk: int = 5, options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.classifier, self.topk, self.options = classifier.eval(), topk, dict(options or {})

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        preds = batch_predictions(batch, lambda images: torch_outputs(self.classifier, images, self.device,
                                                                       self.options),
                                  self.classifier.preprocess, self.topk)
        return [p.to_dict() for p in preds]


class RankZeroProgress(L.Callback):
    """A bar over all inputs on global rank 0 (see ``vitlab_edge.progress``). Ranks get equal shares, rank 0 the
    largest, so its own count times the world size, capped at the total, is the estimate; it ends at the total."""

    def __init__(self, total: int, progress: bool | None = None) -> None:
        self.total, self.progress, self.bar = total, progress, None

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.bar = Progress(self.total, "predict", progress=self.progress)

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.bar is not None:
            self.bar.update(min(len(batch["index"]) * trainer.world_size, self.total - self.bar.n))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def predict_distributed(classifier: torch.nn.Module, items: list[Any], out: str | os.PathLike, devices: int | str = 1,
                        num_nodes: int = 1, strategy: str = "ddp", accelerator: str = "auto", batch_size: int = 32,
                        num_workers: int | None = None, topk: int = 5, progress: bool | None = False,
                        options: dict[str, Any] | None = None) -> bool:
    """Predict ``items`` with ``trainer.predict`` on ``devices`` x ``num_nodes`` and write ``out`` (JSONL/CSV).
    Returns True on global rank 0 (the process that wrote ``out``). ``progress``: as in ``Predictor.stream``,
    shown by rank 0. ``options``: the model's post-processing options (``task_options``). A lost input makes
    every rank raise the same ``VitlabError``."""
    loader = decode_loader(items, classifier.preprocess, batch_size, num_workers)
    callbacks = [ShardedPredictionWriter(out, len(items)), RankZeroProgress(len(items), progress)]
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False, callbacks=callbacks)
    if len(items) < trainer.world_size:  # Lightning's sampler needs one input per process at least
        raise VitlabError(f"{len(items)} inputs for {trainer.world_size} processes: predict them on one device")
    trainer.predict(PredictModule(classifier, topk, options), dataloaders=loader, return_predictions=False)
    return trainer.is_global_zero
