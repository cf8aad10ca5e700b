"""Object detection on a plain ViT: ViTDet's simple feature pyramid + an FCOS head, and the registered variants.

ViTDet (Li et al., 2022, "Exploring Plain Vision Transformer Backbones for Object Detection") builds the pyramid from
the backbone's last feature map alone: transposed convolutions up, max-pooling down, then a channel LayerNorm and
1x1 + 3x3 convolutions to a common width per level. The head is dense and anchor-free (FCOS, Tian et al., 2019;
see ``vitlab.models.fcos``). ``forward`` returns raw tensors; ``postprocess`` turns them into padded detections.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from timm.layers import LayerNorm2d
from torch import nn

from vitlab.errors import VitlabError
from vitlab.models.backbone import ViTBackbone, load_weights
from vitlab.models.classify import FMNIST_LABELS, _weights
from vitlab.models.fcos import FCOSHead, fcos_loss, make_points, postprocess
from vitlab.models.stem import conv_stem
from vitlab.preprocess import PreprocessCfg
from vitlab.registry import BACKBONE_OPTIONS, ModelSpec, register_model, resolve

__all__ = ["DetectorCfg", "SimpleFeaturePyramid", "ViTDetector", "create_detector", "postprocess"]


@dataclass(frozen=True)
class DetectorCfg:
    """The neck and head of a detector (``ModelSpec.head``; each field is also a ``create_detector`` option).

    ``scale_factors``: pyramid levels relative to the backbone map (stride = patch size / factor), powers of two.
    ``fpn_channels``: the common width of the levels. ``num_convs``: 3x3 convolutions in each head tower.
    ``center_radius``: FCOS center sampling, in strides. ``range_per_stride``: a level of stride s learns boxes whose
    largest point-to-side distance is up to ``range_per_stride * s`` (FCOS: 8). ``prior_prob``: initial foreground
    probability of the classifier (focal loss). ``assigner``: which points learn which box, ``"fcos"`` (center sampling
    and level ranges, the two options above) or ``"atss"`` (adaptive: ``atss_topk`` nearest points per level, IoU
    above the candidates' mean + std, each point standing for a square of ``range_per_stride`` strides;
    ``vitlab.models.fcos.assign_atss``).
    """

    scale_factors: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
    fpn_channels: int = 256
    num_convs: int = 4
    center_radius: float = 1.5
    range_per_stride: float = 8.0
    prior_prob: float = 0.01
    assigner: str = "fcos"
    atss_topk: int = 9

    def __post_init__(self) -> None:
        if self.assigner not in ("fcos", "atss"):
            raise VitlabError(f"head.assigner must be 'fcos' or 'atss', got {self.assigner!r}")
        for f in self.scale_factors:
            if f <= 0 or not math.log2(f).is_integer():
                raise VitlabError(f"head.scale_factors must be powers of two (4, 2, 1, 0.5, ...), got {f}")
        if list(self.scale_factors) != sorted(self.scale_factors, reverse=True) or not self.scale_factors:
            raise VitlabError(f"head.scale_factors must be non-empty, finest first, got {self.scale_factors}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorCfg:
        unknown = sorted(set(d) - set(DETECTOR_OPTIONS))
        if unknown:
            raise VitlabError(f"detector option {unknown[0]!r} is not supported; "
                              f"supported: {', '.join(DETECTOR_OPTIONS)}")
        d = dict(d)
        if "scale_factors" in d:
            d["scale_factors"] = tuple(float(f) for f in d["scale_factors"])
        return cls(**d)


DETECTOR_OPTIONS = tuple(f.name for f in dataclasses.fields(DetectorCfg))


class MaxDownsample(nn.Module):
    """``k x k`` max-pooling with stride ``k`` (floor mode: ``nn.MaxPool2d(k, k)``'s values) as a reshape and a max
    over the window axes. Exported, that is Reshape + ReduceMax, which ONNX Runtime's CUDA provider runs; it has no
    kernel for the opset-22 ``MaxPool`` the exporter writes, so that node (and copies around it) went to the CPU."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, C, H // k, W // k]
        k, (c, h, w) = self.k, x.shape[1:]
        if h % k or w % k:
            x = x[:, :, : h - h % k, : w - w % k]
        return x.reshape(-1, c, h // k, k, w // k, k).amax(dim=(3, 5))  # -1: no shape arithmetic in the graph


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (detectron2's ``SimpleFeaturePyramid`` without the extra top block): per scale
    factor, from the ``[N, D, H/p, W/p]`` map, 2x2 stride-2 transposed convolutions up (channels halving, LayerNorm +
    GELU between them), identity, or max-pooling down; then 1x1 and 3x3 convolutions to ``out_channels``, each
    followed by a channel LayerNorm."""

    def __init__(self, in_channels: int, patch_size: int, scale_factors: tuple[float, ...], out_channels: int) -> None:
        super().__init__()
        self.scale_factors = tuple(scale_factors)
        self.strides = tuple(patch_size / f for f in self.scale_factors)
        self.stages = nn.ModuleList()
        for factor in self.scale_factors:
            layers: list[nn.Module] = []
            dim = in_channels
            for i in range(int(round(math.log2(factor)))):  # up: x2 per transposed convolution
                if i:
                    layers += [LayerNorm2d(dim), nn.GELU()]
                layers.append(nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2))
                dim //= 2
            if factor < 1:
                layers.append(MaxDownsample(round(1 / factor)))
            layers += [nn.Conv2d(dim, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                       nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels)]
            self.stages.append(nn.Sequential(*layers))

    def level_sizes(self, grid: tuple[int, int]) -> list[tuple[int, int]]:
        """(h, w) of every level for a backbone map of ``grid`` (h, w) cells."""
        out = []
        for f in self.scale_factors:
            k = round(f) if f >= 1 else round(1 / f)
            out.append((grid[0] * k, grid[1] * k) if f >= 1 else (grid[0] // k, grid[1] // k))
        return out

    def forward(self, fmap: torch.Tensor) -> list[torch.Tensor]:
        return [stage(fmap) for stage in self.stages]  # per level [N, C, H/stride, W/stride]


class ViTDetector(nn.Module):
    """``forward(images)`` -> raw FCOS outputs ``{"cls_logits": [N, P, K], "box_regression": [N, P, 4] (l, t, r, b in
    strides), "centerness": [N, P]}`` over the ``P`` points of all levels; images are 0..255 pixels ``[N, C, H, W]``
    at the model's input size. ``points [P, 2]`` / ``strides [P]`` describe the points of that size (buffers);
    ``points_for(h, w)`` those of another size (with ``dynamic_img_size``)."""

    def __init__(self, backbone: ViTBackbone, num_classes: int, cfg: DetectorCfg | None = None) -> None:
        super().__init__()
        self.cfg = cfg or DetectorCfg()
        self.backbone = backbone
        self.neck = SimpleFeaturePyramid(backbone.out_channels, backbone.patch_size, self.cfg.scale_factors,
                                         self.cfg.fpn_channels)
        self.head = FCOSHead(self.cfg.fpn_channels, num_classes, self.cfg.num_convs, self.cfg.prior_prob)
        points, strides = self.points_for(*backbone.preprocess.image_size)
        self.register_buffer("points", points, persistent=False)  # [P, 2]
        self.register_buffer("strides", strides, persistent=False)  # [P]

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def preprocess(self) -> PreprocessCfg:
        return self.backbone.preprocess

    def points_for(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``points [P, 2]`` (x, y cell centres in input pixels) and ``strides [P]`` for an ``h x w`` input."""
        p = self.backbone.patch_size
        return make_points(self.neck.level_sizes((h // p, w // p)), list(self.neck.strides))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.backbone(images)["map"]  # [N, D, H/p, W/p]
        return self.head(self.neck(fmap))

    def loss(self, outputs: dict[str, torch.Tensor], boxes: list[torch.Tensor], labels: list[torch.Tensor],
             points: torch.Tensor | None = None, strides: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """FCOS losses ``{"cls", "box", "ctr", "loss"}`` against per-image ``boxes [M, 4]`` (x1, y1, x2, y2 in input
        pixels) and ``labels [M]``; ``points``/``strides`` default to the model's input size."""
        points, strides = self._points(outputs, points, strides)
        c = self.cfg
        return fcos_loss(outputs, points, strides, boxes, labels, c.center_radius, c.range_per_stride, c.assigner,
                         c.atss_topk)

    def postprocess(self, outputs: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        """``vitlab.models.detect.postprocess`` with this model's points (see there for the options)."""
        points, strides = self._points(outputs, kwargs.pop("points", None), kwargs.pop("strides", None))
        return postprocess(outputs, points, strides, **kwargs)

    def _points(self, outputs: dict[str, torch.Tensor], points: torch.Tensor | None,
                strides: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        points = self.points if points is None else points
        strides = self.strides if strides is None else strides
        if outputs["cls_logits"].shape[1] != len(points):
            raise VitlabError(f"the outputs have {outputs['cls_logits'].shape[1]} points but the model's input size "
                              f"{self.preprocess.image_size} has {len(points)}; pass points_for(h, w)")
        return points, strides


def create_detector(name: str | os.PathLike, num_classes: int | None = None,
                    pretrained: bool | str | os.PathLike | None = None,
                    labels: tuple[str, ...] | list[str] | None = None, **options: Any) -> ViTDetector:
    """A ViT detector by name: a registered detection variant, or any ViT-family name (then with DetectorCfg's
    defaults). ``options``: backbone options as for ``create_model`` (img_size, patch_size, depth, ...) and the
    ``DetectorCfg`` fields (scale_factors, fpn_channels, num_convs, ...). ``pretrained``: backbone weights only
    (True: timm hub; a local classification / MAE checkpoint, weights file or Hugging Face folder).
    ``num_classes``: default the number of ``labels`` or of the variant's labels, else 80 (COCO)."""
    unknown = sorted(set(options) - set(BACKBONE_OPTIONS) - set(DETECTOR_OPTIONS))
    if unknown:
        raise VitlabError(f"model option {unknown[0]!r} is not supported; supported options: "
                          f"{', '.join(BACKBONE_OPTIONS + DETECTOR_OPTIONS)}")
    head_opts = {k: v for k, v in options.items() if k in DETECTOR_OPTIONS}
    spec = resolve(name, {k: v for k, v in options.items() if k not in DETECTOR_OPTIONS})
    cfg = DetectorCfg.from_dict({**spec.head, **head_opts})
    pre, pretrained = spec.preprocess, _weights(spec, pretrained)
    if num_classes is None:
        num_classes = len(labels or pre.labels) or 80
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels given for num_classes={num_classes}")
    pre = pre.replace(task="detection", resize="letterbox",
                      labels=tuple(labels) if labels else pre.labels if len(pre.labels) == num_classes else ())
    backbone = ViTBackbone(spec.arch, pre, pretrained=pretrained is True, **spec.kwargs)
    unit = int(backbone.patch_size / min(1.0, min(cfg.scale_factors)))  # the patch, or the coarsest stride
    if any(s % unit for s in pre.image_size):
        raise VitlabError(f"img_size {pre.image_size} must be a multiple of {unit} (patch size "
                          f"{backbone.patch_size}, scale_factors {cfg.scale_factors})")
    model = ViTDetector(backbone, num_classes, cfg)
    if pretrained not in (None, False, True):
        load_weights(model.backbone, None, pretrained)
    return model


_RGB_LETTERBOX = PreprocessCfg(task="detection", resize="letterbox")  # ImageNet mean/std


@register_model
def vitdet_scenes() -> ModelSpec:
    """128x128 RGB "scenes" (objects ~14-84 px): patch 8 (16x16 tokens), width 128, depth 4, MLP ratio 2; pyramid
    factors (1, 0.5) -> strides 8/16, FPN width 64, 2 convs per head tower; ``range_per_stride=4`` so that both levels
    learn (stride 8: largest point-to-side distance <= 32 px, stride 16: beyond). The 2-core CPU detector.

    Training throughput at 128 px (batch 32, fwd + bwd + AdamW, 2 threads): 60 img/s. Measured beside it: patch 16
    with (2, 1) 155 img/s (``patch_size=16, scale_factors=(2, 1)``: the fast option, 16 px tokens for 14 px objects),
    patch 16 with (4, 2, 1) 68, width 96 80, patch 8 with (2, 1, 0.5) (strides 4/8/16) 38.
    """
    return ModelSpec("vit_tiny_patch16_224", dict(img_size=128, patch_size=8, embed_dim=128, depth=4, num_heads=4,
                                                  mlp_ratio=2.0, class_token=False, global_pool="avg", fc_norm=False),
                     _RGB_LETTERBOX.replace(input_size=(3, 128, 128), labels=FMNIST_LABELS),
                     head=dict(scale_factors=(1.0, 0.5), fpn_channels=64, num_convs=2, range_per_stride=4.0))


@register_model
def vitdet_scenes_cs() -> ModelSpec:
    """``vitdet_scenes`` with a convolutional stem (``vitlab.models.stem``: 3x3 convolutions 32-64-128, stride 2
    each, 128 px -> the same 16x16 tokens) in place of the 8x8 patchify: the scenes demo's detector, which learns
    faster per step and per minute on 2 cores than the plain patchify (README, "Object detection")."""
    spec = vitdet_scenes()
    return dataclasses.replace(spec, kwargs={**spec.kwargs, "embed_layer": conv_stem((32, 64, 128))})


@register_model
def vitdet_scenes_fm() -> ModelSpec:
    """``vitdet_scenes`` with ``vitlab_fmnist_cs``'s conv stem (16/s1-32-64-128: a full-resolution layer, then three
    stride-2 ones, 128 px -> 16x16 tokens) and transformer, so that a garment classifier trained by
    ``configs/classify/fmnist_best.yaml`` loads as its backbone (``pretrained=``; grey -> RGB adapted)."""
    spec = vitdet_scenes()
    return dataclasses.replace(spec, kwargs={**spec.kwargs, "embed_layer": conv_stem((16, 32, 64, 128),
                                                                                     strides=(1, 2, 2, 2))})


@register_model
def vitdet_small_640() -> ModelSpec:
    """ViT-S/16 at 640x640 (40x40 tokens), ViTDet's pyramid (4, 2, 1, 0.5) -> strides 4/8/16/32, FPN width 256,
    4 convs per head tower: GPU-sized (pair it with ``pretrained=`` backbone weights; timm's augreg normalisation).
    ~450 GFLOP/img: backbone 69, pyramid 45, head 334, of which 252 on the stride-4 level (``num_convs=2`` or
    ``scale_factors=(2, 1, 0.5)`` make it much cheaper)."""
    return ModelSpec("vit_small_patch16_224", dict(img_size=640, drop_path_rate=0.1),
                     _RGB_LETTERBOX.replace(input_size=(3, 640, 640), mean=(0.5,) * 3, std=(0.5,) * 3),
                     head=dict(scale_factors=(4.0, 2.0, 1.0, 0.5), fpn_channels=256, num_convs=4))
