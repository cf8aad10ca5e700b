"""ViTBackbone: the one contract every vitlab head builds on.

``ViTBackbone(images) -> {"tokens": [N, P+L, D], "pooled": [N, D], "map": [N, D, H/p, W/p]}`` where
``images`` are pixels on the 0..255 scale (uint8 or float). Normalisation runs inside, from the
PreprocessCfg, so exported graphs and edge apps feed raw pixels. Heads use ``out_channels``, ``strides``,
``patch_size`` and ``num_prefix_tokens``; they never reach into timm's internals.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitlab.errors import VitlabError
from vitlab.preprocess import PreprocessCfg

log = logging.getLogger(__name__)

# prefixes that wrap timm's VisionTransformer keys in Lightning / DDP / torch.compile / vitlab checkpoints
_WRAPPER_PREFIXES = ("model.", "module.", "_orig_mod.", "backbone.", "vit.")


class ViTBackbone(nn.Module):
    """A timm VisionTransformer without its classifier, plus in-graph normalisation."""

    def __init__(self, arch: str, preprocess: PreprocessCfg, pretrained: bool = False, **timm_kwargs: Any) -> None:
        super().__init__()
        import timm
        from timm.models.vision_transformer import VisionTransformer

        self.arch = arch
        self.preprocess = preprocess
        try:
            self.vit = timm.create_model(arch, pretrained=pretrained, num_classes=0, **timm_kwargs)
        except (OSError, RuntimeError) as e:
            if not pretrained:
                raise
            raise VitlabError(f"could not fetch pretrained weights for {arch!r} ({type(e).__name__}); without internet "
                              "pass a local file instead: pretrained=/path/to/weights.safetensors") from None
        if not isinstance(self.vit, VisionTransformer):
            raise VitlabError(f"{arch!r} did not build a timm VisionTransformer")
        c = preprocess.channels
        self.register_buffer("pixel_mean", torch.tensor(preprocess.mean).view(1, c, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(preprocess.std).view(1, c, 1, 1) * 255.0, persistent=False)

    @property
    def out_channels(self) -> int:
        return self.vit.embed_dim

    @property
    def patch_size(self) -> int:
        return self.vit.patch_embed.patch_size[0]

    @property
    def strides(self) -> tuple[int, ...]:
        return (self.patch_size,)

    @property
    def num_prefix_tokens(self) -> int:
        return self.vit.num_prefix_tokens

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = images.shape
        tokens = self.vit.forward_features(self.normalize(images))  # [N, P+L, D]
        pooled = self.vit.forward_head(tokens, pre_logits=True)  # [N, D]
        p = self.patch_size
        patches = tokens[:, self.num_prefix_tokens:]  # [N, L, D]
        fmap = patches.transpose(1, 2).reshape(n, -1, h // p, w // p)  # [N, D, H/p, W/p]
        return {"tokens": tokens, "pooled": pooled, "map": fmap}

    def forward_masked(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """MAE's encoder pass (He et al., 2022): position embeddings are added to all ``L`` patches, then only the
        patches ``keep`` (``[N, K]`` row-major indices) go through the blocks, behind the prefix tokens. Returns
        ``[N, num_prefix_tokens + K, D]`` after the final norm. Needs the model's own input size.

        The hidden patches' pixels are set to the mean (0 once normalised) before the patch embedding: a conv stem
        (``vitlab.models.stem``) convolves across patch borders and would otherwise show the visible tokens hidden
        pixels; a plain patchify embedding gives the same visible tokens either way."""
        vit = self.vit
        x = self.normalize(images)
        n, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise VitlabError(f"masked encoding needs the model's input size {self.preprocess.input_size[1:]}")
        visible = torch.zeros(n, (h // p) * (w // p), dtype=x.dtype, device=x.device).scatter_(1, keep, 1.0)
        visible = visible.view(n, 1, h // p, w // p).repeat_interleave(p, 2).repeat_interleave(p, 3)  # [N, 1, H, W]
        x = vit.patch_embed(x * visible)  # [N, L, D]
        x = x.flatten(1, 2) if x.ndim == 4 else x  # dynamic_img_size gives [N, h, w, D]
        n, num_prefix = len(x), self.num_prefix_tokens
        prefix = [t.expand(n, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        if vit.pos_embed is not None:
            if vit.pos_embed.shape[1] not in (x.shape[1], x.shape[1] + num_prefix):
                raise VitlabError(f"masked encoding needs the model's input size {self.preprocess.input_size[1:]}")
            if vit.no_embed_class:
                x = x + vit.pos_embed
            else:
                x = x + vit.pos_embed[:, num_prefix:]
                prefix = [torch.cat(prefix, 1) + vit.pos_embed[:, :num_prefix]] if prefix else []
        x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))  # [N, K, D]
        x = torch.cat([*prefix, x], 1)  # [N, P + K, D]
        return vit.norm(vit.blocks(vit.norm_pre(x)))


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, L, p*p*C]``: patches in row-major order, each flattened as ``(p, p, C)``."""
    n, c, h, w = x.shape
    gh, gw = h // p, w // p
    return x.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(n, gh * gw, p * p * c)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int], p: int, c: int) -> torch.Tensor:
    """``[N, L, p*p*C]`` (as ``patchify`` lays them out, ``L = gh * gw``) -> ``[N, C, gh*p, gw*p]``; used by MAE's
    reconstruction and the denoiser's output alike."""
    n, (gh, gw) = patches.shape[0], grid  # not len(): torch.export would fix the batch size
    return patches.reshape(n, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, gh * p, gw * p)


class WeightsWarning(UserWarning):
    """``pretrained=`` weights that did not fill the whole model, or held tensors it does not use."""


@dataclass
class LoadReport:
    """What ``load_weights`` did: keys it could not fill, keys it ignored, tensors it adapted."""

    path: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def few(keys: list[str]) -> str:
            return f" ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})" if keys else ""

        return (f"loaded {self.path}: {len(self.missing)} missing{few(self.missing)}, "
                f"{len(self.unexpected)} unexpected{few(self.unexpected)}, adapted: {', '.join(self.adapted) or '-'}")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors, .pth/.pt/.bin or Lightning .ckpt file, never executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise VitlabError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for payloads, RuntimeError for non-torch files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VitlabError(f"refusing to load {path}: not a plain tensor checkpoint ({first[:200]})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VitlabError(f"{path} holds no state dict of tensors")
    return obj


def canonical_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip Lightning/DDP/vitlab wrappers so keys read like timm's (``blocks.0...``, ``head.weight``)."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def split_encoder(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A vitlab task checkpoint (its model's tensors under ``model.``) keeps its encoder under
    ``model.backbone.vit.``: (the state without the model's other modules, the keys left out — an MAE decoder and
    mask token, a detector's pyramid). A classifier's ``model.head.`` stays (a same-sized head is reused); keys
    outside ``model.`` stay too (reported as unexpected). Other files are returned whole."""
    if not any(k.startswith("model.backbone.vit.") for k in state):
        return state, []
    other = [k for k in state if k.startswith("model.") and not k.startswith(("model.backbone.", "model.head."))]
    drop = set(other)
    return {k: v for k, v in state.items() if k not in drop}, other


def load_weights(backbone: ViTBackbone, head: nn.Module | None, path: str | os.PathLike) -> LoadReport:
    """Load a local file or Hugging Face folder into backbone (+ head): keys remapped, position embeddings
    resampled to the grid, patch embedding adapted to the channel count, the head dropped when its shape differs.
    Missing or unexpected tensors give one ``WeightsWarning`` (a clean load stays silent)."""
    from timm.models import adapt_input_conv
    from timm.models.vision_transformer import checkpoint_filter_fn

    from vitlab.models.hf import is_hf_folder, read_hf_state_dict

    report = LoadReport(str(path))
    if is_hf_folder(path):
        state = read_hf_state_dict(path, backbone.vit)
    else:  # a vitlab checkpoint of another task (MAE, detection): its encoder only
        state, other = split_encoder(read_state_dict(path))
        state = canonical_keys(state)
        if other:
            names = sorted({k.removeprefix("model.").split(".")[0] for k in other})
            report.adapted.append(f"{len(other)} tensors of the checkpoint's own head dropped ({', '.join(names)})")
    head_state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    body = {k: v for k, v in state.items() if not k.startswith("head.")}
    first = next((k for k in ("patch_embed.proj.weight", "patch_embed.proj.0.weight") if k in body), None)
    w = body[first] if first else None  # the patchify convolution, or a conv stem's first convolution
    if w is not None and w.shape[1] != backbone.preprocess.channels:
        c = backbone.preprocess.channels  # timm's adapt_input_conv starts from RGB only: grey is spread over c
        body[first] = w.repeat(1, c, 1, 1) / c if w.shape[1] == 1 else adapt_input_conv(c, w)
        report.adapted.append(f"patch_embed in_chans {w.shape[1]}->{backbone.preprocess.channels}")
    pos = body.get("pos_embed")
    body = checkpoint_filter_fn(body, backbone.vit)
    if pos is not None and backbone.vit.pos_embed is not None and pos.shape != backbone.vit.pos_embed.shape:
        report.adapted.append(f"pos_embed {tuple(pos.shape)}->{tuple(backbone.vit.pos_embed.shape)}")
    _check_shapes(body, backbone.vit, path)
    result = backbone.vit.load_state_dict(body, strict=False)
    report.missing += list(result.missing_keys)
    report.unexpected += list(result.unexpected_keys)
    if head is not None:
        own = head.state_dict()
        if head_state and all(k in own and own[k].shape == v.shape for k, v in head_state.items()):
            head.load_state_dict(head_state)
        else:
            report.missing += [f"head.{k}" for k in own]
            if head_state:
                report.adapted.append("head dropped (class count differs)")
    if report.missing or report.unexpected:
        tail = "; the missing tensors keep their random initialisation" if report.missing else ""
        warnings.warn(f"{report}{tail}", WeightsWarning, stacklevel=2)
    else:
        log.info("%s", report)
    return report


def _check_shapes(state: dict[str, torch.Tensor], model: nn.Module, path: str | os.PathLike) -> None:
    """One line naming the first tensor whose shape the model cannot take (instead of torch's long list)."""
    own = model.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise VitlabError(f"{path}: {k} is {tuple(v.shape)} in the weights but {tuple(own[k].shape)} in the "
                              "model; build the architecture the weights were trained with (name and options)")
