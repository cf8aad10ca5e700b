"""Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers"): how much each patch
feeds the pooled representation, through all blocks.

Normal inference keeps timm's fused ``scaled_dot_product_attention``, which never materialises attention weights.
Here forward hooks capture each block's attention input and recompute the weights from the block's own ``qkv``
projection, so the explained forward pass is the same model, unchanged.
"""

from __future__ import annotations

import numpy as np
import torch


def _attention_weights(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm Attention's softmax(q k^T * scale), head-averaged: ``[N, T, T]``."""
    b, t, _ = x.shape
    qkv = attn.qkv(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # [N, heads, T, d]
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1).mean(1)


@torch.no_grad()
def attention_rollout(classifier: torch.nn.Module, batch: np.ndarray, device: torch.device | str = "cpu",
                      residual: float = 0.5) -> np.ndarray:
    """Per-image relevance of each patch, ``[N, h, w]`` scaled to 0..1 per image.

    Each block's head-averaged attention is mixed with the identity (the residual path), rows renormalised, and the
    blocks multiplied in order. With a class token the class token's row is read; with mean pooling, the mean of
    the patch tokens' rows."""
    backbone = classifier.backbone
    vit = backbone.vit
    captured: list[torch.Tensor] = []
    hooks = [blk.attn.register_forward_hook(lambda m, inp, out: captured.append(_attention_weights(m, inp[0])))
             for blk in vit.blocks]
    try:
        x = torch.from_numpy(batch).to(device)
        backbone(x)
    finally:
        for h in hooks:
            h.remove()
    p = backbone.num_prefix_tokens
    n, t = captured[0].shape[:2]
    eye = torch.eye(t, device=captured[0].device)
    rollout = eye.expand(n, t, t)
    for a in captured:
        a = residual * eye + (1 - residual) * a
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    rows = rollout[:, 0, p:] if vit.cls_token is not None else rollout[:, p:, p:].mean(1)  # [N, L]
    gh, gw = x.shape[2] // backbone.patch_size, x.shape[3] // backbone.patch_size
    maps = rows.reshape(n, gh, gw)
    lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
    return ((maps - lo) / (hi - lo).clamp_min(1e-12)).float().cpu().numpy()
