"""The ``embedding`` task: inference only (no LightningModule of its own). Any backbone answers it — a classifier's,
a detector's, an MAE encoder's, or a bare timm ViT — with L2-normalised pooled features (``vitlab.models.embed``):
``Predictor.load(CKPT, task="embedding")``, ``vitlab predict CKPT IMAGES --task embedding --out emb.npy``,
``vitlab export CKPT --task embedding``, and the edge kit's ``embedding`` records."""

from __future__ import annotations

import torch

from vitlab.tasks.spec import TaskSpec, register_task


def embedding_outputs(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The exported graph's ``embedding [N, D]`` (unit rows) from an ``Embedder``."""
    return {"embedding": model(images)}


register_task(TaskSpec(
    "embedding", aliases=("embed", "features"), outputs=embedding_outputs,
    exporter="vitlab.onnx.embed:EmbeddingExport", result="vitlab.inference.results:EmbeddingPrediction"))
