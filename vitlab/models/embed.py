"""Image embeddings: the L2-normalised pooled features of any ``ViTBackbone`` — what search, clustering and
near-duplicate detection use. A classifier's, detector's or MAE encoder's backbone, or a bare timm ViT, gives one.

The pooled vector is the backbone's own pooling (timm's ``global_pool``: the class token, or the patch-token mean),
taken before any head; unit length, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.errors import VitlabError
from vitlab.models.backbone import ViTBackbone
from vitlab.preprocess import PreprocessCfg


class Embedder(nn.Module):
    """``images`` uint8 ``[N, C, H, W]`` -> ``[N, D]`` float32, each row of unit L2 norm."""

    def __init__(self, backbone: ViTBackbone) -> None:
        super().__init__()
        self.backbone = backbone

    @property
    def preprocess(self) -> PreprocessCfg:
        return self.backbone.preprocess.replace(task="embedding")

    @property
    def dim(self) -> int:
        return self.backbone.out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.backbone(images)["pooled"]  # [N, D]
        return F.normalize(pooled.float(), dim=-1)


def create_embedder(source: nn.Module | str | os.PathLike, pretrained: bool | str | os.PathLike | None = None
                    ) -> Embedder:
    """An ``Embedder`` over ``source``: a model with a ``backbone`` (classifier, detector, MAE), a ``ViTBackbone``,
    or a model name (a vitlab variant or any timm ViT, ``pretrained`` as for ``create_backbone``)."""
    if isinstance(source, (str, os.PathLike)):
        from vitlab.models.classify import create_backbone

        return Embedder(create_backbone(source, pretrained=pretrained))
    if isinstance(source, Embedder):
        return source
    backbone = source if isinstance(source, ViTBackbone) else getattr(source, "backbone", None)
    if not isinstance(backbone, ViTBackbone):
        raise VitlabError(f"a {type(source).__name__} has no ViT backbone to take embeddings from")
    return Embedder(backbone)
