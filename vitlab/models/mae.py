"""Masked autoencoder (MAE, He et al., 2022) on the ViTBackbone contract: per-sample random masking, the encoder on
the visible patches only (``ViTBackbone.forward_masked``: timm's patch embedding, blocks and norm), a light decoder
of timm blocks with fixed 2-D sin-cos position embeddings, and the loss on the masked patches alone.

Shapes: images ``[N, C, H, W]`` (0..255), ``L = (H/p)(W/p)`` patches of ``p*p*C`` values, ``K`` visible.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vitlab.errors import VitlabError
from vitlab.models.backbone import ViTBackbone, patchify, unpatchify
from vitlab.preprocess import PreprocessCfg


def random_masking(n: int, length: int, mask_ratio: float, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """MAE's per-sample masking by sorting uniform noise: ``keep [N, K]`` the visible patches (in noise order),
    ``restore [N, L]`` the permutation that puts ``[visible, masked]`` back in patch order, ``mask [N, L]`` True
    where a patch is hidden. ``K = max(1, int(L * (1 - mask_ratio)))``; the same ``generator`` state gives the same
    masks."""
    if not 0.0 <= mask_ratio < 1.0:
        raise VitlabError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    k = max(1, int(length * (1 - mask_ratio)))
    noise = torch.rand(n, length, generator=generator)  # on the CPU: the same masks on every device
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[:, :k] = False
    mask = mask.gather(1, restore)
    return {"keep": shuffle[:, :k].to(device), "restore": restore.to(device), "mask": mask.to(device)}


class MaskedAutoencoder(nn.Module):
    """``forward(images, mask_ratio, generator)`` -> ``{"pred": [N, L, p*p*C], "mask": [N, L]}``; ``pred`` is in the
    loss's target space (``target``): normalised pixels, per patch normalised again with ``norm_pix_loss``.
    The decoder's modules are named ``decoder_*`` and ``mask_token``, which loading into a classifier or detector
    drops (``vitlab.models.backbone.split_encoder``: only the encoder is kept)."""

    def __init__(self, backbone: ViTBackbone, decoder_dim: int = 128, decoder_depth: int = 2, decoder_heads: int = 4,
                 decoder_mlp_ratio: float = 4.0, norm_pix_loss: bool = True) -> None:
        super().__init__()
        from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
        from timm.models.vision_transformer import Block

        if decoder_dim % decoder_heads or decoder_dim % 4:
            raise VitlabError(f"decoder_dim {decoder_dim} must be divisible by decoder_heads {decoder_heads} and 4")
        self.backbone = backbone
        c, h, w = backbone.preprocess.input_size
        p = backbone.patch_size
        if h % p or w % p:
            raise VitlabError(f"MAE needs an input size divisible by the patch size {p}, got {h}x{w}")
        self.grid, self.norm_pix_loss = (h // p, w // p), norm_pix_loss
        self.decoder_embed = nn.Linear(backbone.out_channels, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = build_sincos2d_pos_embed(list(self.grid), decoder_dim)  # [L, Dd], row-major like the patches
        self.register_buffer("decoder_pos_embed", pos[None], persistent=False)
        self.decoder_blocks = nn.Sequential(*[Block(decoder_dim, decoder_heads, decoder_mlp_ratio, qkv_bias=True)
                                              for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, p * p * c)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def preprocess(self) -> PreprocessCfg:
        return self.backbone.preprocess.replace(task="mae")  # the encoder alone answers embedding

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    # --- patches --------------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, L, p*p*C] (row-major, p, p, C)
        return patchify(x, self.backbone.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:  # [N, L, p*p*C] -> [N, C, H, W]
        return unpatchify(patches, self.grid, self.backbone.patch_size, self.preprocess.channels)

    def target(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"pixels": [N, L, p*p*C]}`` normalised pixels per patch, and the loss's ``target`` (with
        ``norm_pix_loss`` each patch normalised by its own mean and variance, kept as ``mean`` / ``std``)."""
        pixels = self.patchify(self.backbone.normalize(images))
        if not self.norm_pix_loss:
            return {"pixels": pixels, "target": pixels}
        mean, var = pixels.mean(-1, keepdim=True), pixels.var(-1, keepdim=True)
        std = (var + 1e-6).sqrt()
        return {"pixels": pixels, "target": (pixels - mean) / std, "mean": mean, "std": std}

    # --- forward --------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, mask_ratio: float = 0.75, generator: torch.Generator | None = None
                ) -> dict[str, torch.Tensor]:
        masking = random_masking(len(images), self.num_patches, mask_ratio, generator, images.device)
        latent = self.backbone.forward_masked(images, masking["keep"])  # [N, P + K, D]
        return {"pred": self.decode(latent, masking["restore"]), "mask": masking["mask"]}

    def decode(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """Encoder tokens ``[N, P + K, D]`` -> predictions for every patch ``[N, L, p*p*C]``: mask tokens fill the
        hidden places, ``restore`` puts them in patch order, position embeddings are added, prefix tokens ride
        along (no position)."""
        x = self.decoder_embed(latent)  # [N, P + K, Dd]
        num_prefix, n, length = self.backbone.num_prefix_tokens, len(x), self.num_patches
        visible = x[:, num_prefix:]
        full = torch.cat([visible, self.mask_token.expand(n, length - visible.shape[1], -1)], 1)  # [N, L, Dd]
        full = torch.gather(full, 1, restore[..., None].expand(-1, -1, full.shape[-1])) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(torch.cat([x[:, :num_prefix], full], 1)))
        return self.decoder_pred(x[:, num_prefix:])  # [N, L, p*p*C]

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked patches only (visible ones do not count)."""
        per_patch = (pred - target).pow(2).mean(-1)  # [N, L]
        return (per_patch * mask).sum() / mask.sum().clamp(min=1)

    def to_pixels(self, pred: torch.Tensor, targets: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Predictions in normalised pixels ``[N, L, p*p*C]``. With ``norm_pix_loss`` each patch is de-normalised
        with statistics the model can know: a visible patch with its own mean and std, a hidden one (``mask``
        ``[N, L]`` True) with the mean of the visible patches' means and stds. MAE's own pictures use each hidden
        patch's true mean and std, which hands the answer's brightness and contrast to the reconstruction."""
        if not self.norm_pix_loss:
            return pred
        visible = (~mask)[..., None].to(pred.dtype)  # [N, L, 1]
        count = visible.sum(1, keepdim=True).clamp(min=1)
        hidden = mask[..., None]
        mean = torch.where(hidden, (targets["mean"] * visible).sum(1, keepdim=True) / count, targets["mean"])
        std = torch.where(hidden, (targets["std"] * visible).sum(1, keepdim=True) / count, targets["std"])
        return pred * std + mean

    def images_from(self, patches: torch.Tensor) -> torch.Tensor:
        """Normalised-pixel patches -> uint8 images ``[N, C, H, W]``."""
        x = self.unpatchify(patches) * self.backbone.pixel_std + self.backbone.pixel_mean
        return x.round().clamp(0, 255).to(torch.uint8)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask_ratio: float = 0.75, seed: int = 0) -> dict[str, Any]:
        """uint8 ``[N, C, H, W]`` at the model's size -> ``original`` (the input), ``masked`` (hidden patches
        grey), ``reconstruction`` (every patch predicted), ``pasted`` (the visible patches put back), uint8
        ``[N, C, H, W]``, and ``mask`` bool ``[N, H/p, W/p]``. The same ``seed`` gives the same masks."""
        generator = torch.Generator().manual_seed(seed)
        out = self(images, mask_ratio, generator)
        targets = self.target(images)
        pred = self.to_pixels(out["pred"], targets, out["mask"])
        hidden = out["mask"][..., None]  # [N, L, 1]
        grey = torch.zeros_like(targets["pixels"])  # the mean pixel: grey after denormalising
        return {"original": images, "masked": self.images_from(torch.where(hidden, grey, targets["pixels"])),
                "reconstruction": self.images_from(pred),
                "pasted": self.images_from(torch.where(hidden, pred, targets["pixels"])),
                "mask": out["mask"].reshape(len(images), *self.grid)}
