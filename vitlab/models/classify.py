"""Image classification: ViTBackbone + a linear head, and the registered vitlab variants."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn

from vitlab.errors import VitlabError
from vitlab.models.backbone import ViTBackbone, load_weights
from vitlab.models.stem import conv_stem
from vitlab.preprocess import PreprocessCfg
from vitlab.registry import ModelSpec, register_model, resolve

FMNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")
_GREY = PreprocessCfg(input_size=(1, 28, 28), mean=(0.286,), std=(0.353,), interpolation="area")


class ViTClassifier(nn.Module):
    """``forward(images)`` -> logits ``[N, num_classes]``; images are 0..255 pixels ``[N, C, H, W]``.

    ``test_time_flip`` (set by ``ClassificationTask(test_time_flip=True)``, which keeps it in the checkpoint): in eval
    mode the logits are the mean of the image's and its mirror image's (for models trained with horizontal flips; twice
    the inference cost). It is part of ``forward``, so the exported graph does it too.
    """

    def __init__(self, backbone: ViTBackbone, num_classes: int, head_drop: float = 0.0) -> None:
        super().__init__()
        self.test_time_flip = False
        self.backbone = backbone
        self.head_drop = nn.Dropout(head_drop)
        self.head = nn.Linear(backbone.out_channels, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def preprocess(self) -> PreprocessCfg:
        return self.backbone.preprocess

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        flip = self.test_time_flip and not self.training
        x = torch.cat([images, images.flip(-1)]) if flip else images  # one pass over [2N, ...]: one graph per block
        logits = self.head(self.head_drop(self.backbone(x)["pooled"]))  # [N, C] ([2N, C] with the mirror images)
        return logits.reshape(2, -1, logits.shape[-1]).mean(0) if flip else logits


def create_backbone(name: str | os.PathLike, pretrained: bool | str | os.PathLike | None = None,
                    **options: Any) -> ViTBackbone:
    """A ViTBackbone by name or Hugging Face folder. ``pretrained``: True (timm hub), a local .safetensors/.pth/.ckpt
    file or a Hugging Face folder; None loads a folder's own weights, False none."""
    spec = resolve(name, options)
    pretrained = _weights(spec, pretrained)
    backbone = ViTBackbone(spec.arch, spec.preprocess, pretrained=pretrained is True, **spec.kwargs)
    if pretrained not in (None, False, True):
        load_weights(backbone, None, pretrained)
    return backbone


def create_model(name: str | os.PathLike, num_classes: int | None = None,
                 pretrained: bool | str | os.PathLike | None = None, labels: tuple[str, ...] | list[str] | None = None,
                 **options: Any) -> ViTClassifier:
    """A ViT classifier by name (vitlab variant, timm ViT-family arch or Hugging Face folder).

    ``num_classes``: default the number of ``labels`` or of the variant's labels (a folder's ``id2label``), else
    1000. ``options``: img_size, patch_size, in_chans, drop_path_rate, dynamic_img_size, ... (see registry).
    """
    spec = resolve(name, options)
    if spec.preprocess.task != "classification":
        raise VitlabError(f"model {os.fspath(name)!r} is a {spec.preprocess.task} variant, not a classifier; "
                          "build it with its task's create function (vitlab.create_detector for detection)")
    pre, pretrained = spec.preprocess, _weights(spec, pretrained)
    if num_classes is None:
        num_classes = len(labels or pre.labels) or 1000
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels:
        if len(labels) != num_classes:
            raise ValueError(f"{len(labels)} labels given for num_classes={num_classes}")
        pre = pre.replace(labels=tuple(labels))
    elif len(pre.labels) != num_classes:
        pre = pre.replace(labels=())  # the variant's names do not describe this head
    backbone = ViTBackbone(spec.arch, pre, pretrained=pretrained is True, **spec.kwargs)
    model = ViTClassifier(backbone, num_classes)
    if pretrained not in (None, False, True):
        load_weights(model.backbone, model.head, pretrained)
    return model


def _weights(spec: ModelSpec, pretrained: bool | str | os.PathLike | None) -> bool | str | os.PathLike | None:
    """A Hugging Face folder's own weights unless ``pretrained`` names others (False: none)."""
    return spec.weights if spec.weights and pretrained in (None, True) else pretrained


@register_model
def vitlab_tiny() -> ModelSpec:
    """Two blocks, width 32: for tests and smoke runs only."""
    return ModelSpec("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                                  global_pool="avg", class_token=False),
                     PreprocessCfg(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3))


@register_model
def vitlab_fmnist() -> ModelSpec:
    """28x28 grayscale, patch 7 (16 tokens), width 96, depth 4, MLP ratio 2, mean-pooled: the demo model before
    ``vitlab_fmnist_cs_tiny``, and the MAE and label-scarce configs' ViT."""
    return ModelSpec("vit_tiny_patch16_224", dict(img_size=28, patch_size=7, in_chans=1, embed_dim=96, depth=4,
                                                  num_heads=4, mlp_ratio=2.0, global_pool="avg", class_token=False),
                     _GREY.replace(labels=FMNIST_LABELS))


@register_model
def vitlab_fmnist_cs_tiny() -> ModelSpec:
    """``vitlab_fmnist`` with a conv stem 24-48-96 (all stride 2: 28 -> 14 -> 7 -> 4x4 tokens) in place of the
    patch-7 convolution: the demo model (0.36 M params; ~1.2x the time per step; 90.6 % test accuracy in the
    demo's 5 epochs against 88.3 % for vitlab_fmnist in 6)."""
    spec = vitlab_fmnist()
    return dataclasses.replace(spec, kwargs={**spec.kwargs, "embed_layer": conv_stem((24, 48, 96))})


@register_model
def vitlab_fmnist_s() -> ModelSpec:
    """28x28 grayscale, patch 7 (16 tokens), width 128, depth 6, MLP ratio 2: the 30-minute CPU model."""
    return ModelSpec("vit_tiny_patch16_224", dict(img_size=28, patch_size=7, in_chans=1, embed_dim=128, depth=6,
                                                  num_heads=4, mlp_ratio=2.0, global_pool="avg", class_token=False),
                     _GREY.replace(labels=FMNIST_LABELS))


@register_model
def vitlab_fmnist_cs() -> ModelSpec:
    """28x28 grayscale, conv stem 16/s1-32-64-128 (28 -> 28 -> 14 -> 7 -> 4x4 tokens), width 128, depth 4, MLP
    ratio 2: the 30-minute CPU model (see vitlab.models.stem)."""
    return ModelSpec("vit_tiny_patch16_224", dict(img_size=28, patch_size=7, in_chans=1, embed_dim=128, depth=4,
                                                  num_heads=4, mlp_ratio=2.0, global_pool="avg", class_token=False,
                                                  embed_layer=conv_stem((16, 32, 64, 128), strides=(1, 2, 2, 2))),
                     _GREY.replace(labels=FMNIST_LABELS))
