"""Class-conditional diffusion transformer: DiT's adaLN-Zero blocks (Peebles & Xie, 2023) built from timm's
attention and MLP modules, and the rectified-flow objective (Liu et al., 2023; Lipman et al., 2023).

Convention: pixels become ``x0 = image / 127.5 - 1`` in [-1, 1]; ``x_t = (1 - t) x0 + t eps`` for ``t`` in [0, 1]
(0: data, 1: noise); the network predicts the velocity ``v = eps - x0``; sampling integrates ``dx/dt = v`` from
``t = 1`` to 0. The sampling loop is numpy and lives in the edge kit (``vitlab_edge.sampling``), so that the
checkpoint, the ONNX file and an app without torch draw the same noise from one seed and step alike.
Classifier-free guidance (Ho & Salimans, 2022): class ``num_classes`` is the "no label" class, dropped in for
``label_dropout`` of the training labels; ``guided`` mixes both predictions inside one call.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from vitlab.errors import VitlabError
from vitlab.models.backbone import unpatchify
from vitlab.preprocess import PreprocessCfg
from vitlab.registry import ModelSpec, register_model, variant_spec


@dataclass(frozen=True)
class DenoiserCfg:
    """A denoiser's size: ``img_size`` x ``img_size`` x ``in_chans`` images cut into ``patch_size`` patches,
    ``depth`` blocks of width ``dim``."""

    img_size: int = 28
    in_chans: int = 1
    patch_size: int = 4
    dim: int = 128
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10


# the denoiser variants, registered like every other model (``vitlab.list_models(task="generation")``): the spec's
# ``kwargs`` are DenoiserCfg fields, its preprocess says the image size and task
def _denoiser(**fields) -> ModelSpec:
    c, size = fields["in_chans"], fields["img_size"]
    return ModelSpec("dit", fields, PreprocessCfg(input_size=(c, size, size), mean=(0.5,) * c, std=(0.5,) * c,
                                                  interpolation="area", task="generation"))


@register_model
def dit_fmnist() -> ModelSpec:
    """28x28 grey, patch 4 (49 tokens), width 128, depth 6: 1.9 M parameters."""
    return _denoiser(img_size=28, in_chans=1, patch_size=4, dim=128, depth=6, num_heads=4)


@register_model
def dit_fmnist_s() -> ModelSpec:
    """28x28 grey, patch 7 (16 tokens), width 96, depth 4: 0.7 M parameters."""
    return _denoiser(img_size=28, in_chans=1, patch_size=7, dim=96, depth=4, num_heads=4)


@register_model
def dit_fmnist_tiny() -> ModelSpec:
    """Tests and smoke runs."""
    return _denoiser(img_size=28, in_chans=1, patch_size=4, dim=64, depth=2, num_heads=2)


def denoiser_cfg(name: str, **options) -> DenoiserCfg:
    """A registered denoiser's configuration with ``options`` (DenoiserCfg fields) applied; errors name the key."""
    spec = variant_spec(name)
    if spec.preprocess.task != "generation":
        raise VitlabError(f"model {name!r} is a {spec.preprocess.task} variant, not a denoiser; see "
                          "vitlab.list_models(task='generation')")
    fields = set(DenoiserCfg.__dataclass_fields__)
    unknown = sorted(set(options) - fields)
    if unknown:
        raise VitlabError(f"denoiser option {unknown[0]!r} is not supported; supported: {', '.join(sorted(fields))}")
    cfg = DenoiserCfg(**{**spec.kwargs, **options})
    if cfg.img_size % cfg.patch_size or cfg.dim % cfg.num_heads:
        raise VitlabError(f"denoiser {name}: img_size {cfg.img_size} must be divisible by patch_size "
                          f"{cfg.patch_size}, dim {cfg.dim} by num_heads {cfg.num_heads}")
    return cfg


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features of ``t [N]`` (in [0, 1], scaled to DiT's 0..1000 range) -> ``[N, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * scale * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """timm's Attention and Mlp, each behind a LayerNorm whose shift/scale and residual gate come from the
    condition (adaLN-Zero: the gates start at zero, so every block starts as the identity)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        from timm.layers import Mlp
        from timm.models.vision_transformer import Attention

        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # x [N, L, D], c [N, D]
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(_modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class Denoiser(nn.Module):
    """``forward(x [N, C, H, W], t [N], y [N] int64) -> v [N, C, H, W]``: patch embedding + fixed 2-D sin-cos
    positions, the condition ``c = MLP(t) + embedding(y)`` (``y = num_classes``: no label), DiT blocks, and an
    adaLN-modulated linear layer back to pixels (zero-initialised, as DiT's)."""

    def __init__(self, cfg: DenoiserCfg) -> None:
        super().__init__()
        from timm.layers import PatchEmbed
        from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

        self.cfg = cfg
        d, p = cfg.dim, cfg.patch_size
        self.grid = cfg.img_size // p
        self.x_embed = PatchEmbed(cfg.img_size, p, cfg.in_chans, d)
        self.register_buffer("pos_embed", build_sincos2d_pos_embed([self.grid, self.grid], d)[None],
                             persistent=False)
        self.t_embed = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.y_embed = nn.Embedding(cfg.num_classes + 1, d)
        self.blocks = nn.ModuleList([DiTBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.final = nn.Linear(d, p * p * cfg.in_chans)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.y_embed.weight, std=0.02)
        for lin in [b.ada[-1] for b in self.blocks] + [self.final_ada[-1], self.final]:
            nn.init.zeros_(lin.weight)  # adaLN-Zero
            nn.init.zeros_(lin.bias)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        h = self.x_embed(x) + self.pos_embed  # [N, L, D]
        cond = self.t_embed(timestep_embedding(t, 256)) + self.y_embed(y)  # [N, D]
        for block in self.blocks:
            h = block(h, cond)
        shift, scale = self.final_ada(cond).chunk(2, dim=-1)
        out = self.final(_modulate(self.final_norm(h), shift, scale))  # [N, L, p*p*C]
        return unpatchify(out, (self.grid, self.grid), self.cfg.patch_size, c)

    def guided(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance in one call: ``v_uncond + guidance * (v_cond - v_uncond)`` (guidance 1: the
        conditional prediction), the two halves run as one batch of ``2N``."""
        both = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.null_class)]))
        n = x.shape[0]  # (len(x) and chunk(2) would fix the batch size under torch.export)
        cond, uncond = both[:n], both[n:]
        return uncond + guidance.to(both.dtype).view(-1, 1, 1, 1) * (cond - uncond)

    def config(self) -> dict:
        return asdict(self.cfg)


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``[N, C, H, W]`` -> ``x0`` in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def flow_pair(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified flow: ``x_t = (1 - t) x0 + t noise`` and the velocity target ``noise - x0`` (``t [N]``)."""
    tt = t.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - tt) * x0 + tt * noise, noise - x0
