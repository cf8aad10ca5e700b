"""Multi-device prediction on Lightning's own strategies (DDP across GPUs / nodes, or CPU processes on gloo).

Each rank decodes and predicts its share of the inputs; ``ShardedPredictionWriter`` writes per-rank shards keyed
by sample index and merges them on rank 0, so every input is answered exactly once, in input order.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch

from vitlab.inference.backends import torch_probs
from vitlab.inference.predictor import batch_predictions, decode_loader
from vitlab.inference.writers import ShardedPredictionWriter


class PredictModule(L.LightningModule):
    """A trained classifier as a LightningModule whose predict step returns one record per input."""

    def __init__(self, classifier: torch.nn.Module, topk: int = 5) -> None:
        super().__init__()
        self.classifier, self.topk = classifier.eval(), topk

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        preds = batch_predictions(batch, lambda images: torch_probs(self.classifier, images, self.device),
                                  self.classifier.preprocess.labels, self.topk)
        return [p.to_dict() for p in preds]


def predict_distributed(classifier: torch.nn.Module, items: list[Any], out: str | os.PathLike, devices: int | str = 1,
                        num_nodes: int = 1, strategy: str = "ddp", accelerator: str = "auto", batch_size: int = 32,
                        num_workers: int | None = None, topk: int = 5) -> bool:
    """Predict ``items`` with ``trainer.predict`` on ``devices`` x ``num_nodes`` and write ``out`` (JSONL/CSV).
    Returns True on global rank 0 (the process that wrote ``out``)."""
    loader = decode_loader(items, classifier.preprocess, batch_size, num_workers)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[ShardedPredictionWriter(out, len(items))])
    trainer.predict(PredictModule(classifier, topk), dataloaders=loader, return_predictions=False)
    return trainer.is_global_zero
