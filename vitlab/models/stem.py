"""A convolutional stem in place of the patchify convolution (Xiao et al., 2021, "Early Convolutions Help
Transformers See Better"): a few 3x3 convolutions (stride 2, or 1 to keep full resolution for fine detail) with
BatchNorm + GELU, then a 1x1 convolution to the transformer width. The tokens and everything after them are the
plain timm ViT; small-data training converges much faster with this inductive bias."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from timm.layers import PatchEmbed
from torch import nn

from vitlab.errors import VitlabError


class ConvStemPatchEmbed(PatchEmbed):
    """timm's PatchEmbed whose ``proj`` is the conv stem; its grid must match ``img_size // patch_size``."""

    def __init__(self, *args, stem_channels: Sequence[int] = (32, 64, 128), stem_strides: Sequence[int] | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        strides = tuple(stem_strides) if stem_strides is not None else (2,) * len(stem_channels)
        if len(strides) != len(stem_channels) or not set(strides) <= {1, 2}:
            raise VitlabError(f"conv stem strides {strides} must be 1 or 2, one per channel count "
                              f"{tuple(stem_channels)}")
        layers: list[nn.Module] = []
        c = self.proj.in_channels
        for out, stride in zip(stem_channels, strides):
            layers += [nn.Conv2d(c, out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out), nn.GELU()]
            c = out
        layers.append(nn.Conv2d(c, self.proj.out_channels, 1))
        self.proj = nn.Sequential(*layers)
        grid = tuple(self.img_size)
        for _ in range(strides.count(2)):
            grid = tuple((g + 1) // 2 for g in grid)
        if grid != tuple(self.grid_size):
            raise VitlabError(f"conv stem with {strides.count(2)} stride-2 layers turns {tuple(self.img_size)} into "
                              f"a {grid} grid, but patch_size {tuple(self.patch_size)} implies {tuple(self.grid_size)}")


def conv_stem(channels: Sequence[int] = (32, 64, 128), strides: Sequence[int] | None = None):
    """The ``embed_layer`` argument of timm's VisionTransformer for a conv stem with these channel counts and
    strides (default: all 2)."""
    return functools.partial(ConvStemPatchEmbed, stem_channels=tuple(channels),
                             stem_strides=None if strides is None else tuple(strides))
