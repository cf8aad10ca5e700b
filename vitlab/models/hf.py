"""Hugging Face ``transformers`` ViT folders: ``config.json`` -> timm arguments + PreprocessCfg, and HF tensor names
-> timm names, so a ``save_pretrained`` folder loads as a plain timm VisionTransformer.

Covered: ``model_type`` ``vit`` (ViTForImageClassification, ViTModel), ``vit_msn`` and ``deit`` (DeiT's distillation
token becomes timm's ``dist_token``, or a register token when vitlab builds the model from the folder). HF's
classifier reads the class token after the final LayerNorm, which is timm's ``global_pool='token'``. Weight names of
both transformers 4.x (``encoder.layer.N.attention.attention.query``) and 5.x (``layers.N.attention.q_proj``) map.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitlab.errors import VitlabError
from vitlab.preprocess import PreprocessCfg
from vitlab.registry import ModelSpec

CONFIG, PREPROCESSOR = "config.json", "preprocessor_config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # each may also come sharded, with a ``.index.json``
SUPPORTED_TYPES = ("vit", "vit_msn", "deit")
_BASE_ARCH = "vit_base_patch16_224"  # a plain timm VisionTransformer; every size argument is overridden
# transformers' image-processor defaults when a folder has no preprocessor_config.json
_DEFAULT_NORM = {"vit": (0.5, 0.5), "vit_msn": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                 "deit": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
_ACTS = {"gelu": None, "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu",
         "relu": "relu"}  # HF hidden_act -> timm act_layer (None: timm's default nn.GELU, exact erf)
_PIL_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "area", 5: "bilinear"}

_LAYER = r"(?:encoder\.layer|layers)\.(\d+)\."  # transformers 4.x | 5.x
_RENAMES = tuple((re.compile(p), r) for p, r in (
    (r"embeddings\.cls_token$", "cls_token"),
    (r"embeddings\.distillation_token$", "dist_token"),
    (r"embeddings\.position_embeddings$", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (_LAYER + r"layernorm_before\.", r"blocks.\1.norm1."),
    (_LAYER + r"layernorm_after\.", r"blocks.\1.norm2."),
    (_LAYER + r"attention\.(?:output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
    (_LAYER + r"(?:intermediate\.dense|mlp\.fc1)\.", r"blocks.\1.mlp.fc1."),
    (_LAYER + r"(?:output\.dense|mlp\.fc2)\.", r"blocks.\1.mlp.fc2."),
    (r"layernorm\.", "norm."),
    (r"(?:classifier|cls_classifier)\.", "head."),
))
_QKV = re.compile(_LAYER + r"attention\.(?:attention\.(query|key|value)|([qkv])_proj)\.(weight|bias)$")
_MODEL_PREFIXES = ("vit.", "deit.")


def is_hf_folder(path: Any) -> bool:
    """A directory (or a path-like name) is read as a Hugging Face folder; files are plain weights."""
    return isinstance(path, (str, os.PathLike)) and Path(path).is_dir()


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a supported ViT folder; one-line errors say what the folder lacks."""
    folder = Path(folder)
    if folder.is_file():
        raise VitlabError(f"{folder} is a weights file, not a model: pass it as pretrained= with a model name")
    if not folder.is_dir():
        raise VitlabError(f"folder {folder} does not exist: pass a model name (vitlab.list_models()) or a Hugging Face "
                          "save_pretrained folder")
    cfg = _read_json(folder / CONFIG, f"{folder} is a folder without {CONFIG}: pass a weights file "
                                      "(.safetensors/.pth/.ckpt) or a transformers save_pretrained folder")
    kind = cfg.get("model_type")
    if kind not in SUPPORTED_TYPES:
        raise VitlabError(f"{folder / CONFIG}: model_type {kind!r} is not supported; vitlab loads Hugging Face "
                          f"folders of model_type {', '.join(SUPPORTED_TYPES)} (ViT, ViT-MSN, DeiT)")
    return cfg


def _read_json(path: Path, missing: str) -> dict[str, Any]:
    if not path.is_file():
        raise VitlabError(missing)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VitlabError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise VitlabError(f"{path} does not hold a JSON object")
    return data


def hf_model_spec(folder: str | os.PathLike) -> ModelSpec:
    """The timm arch + arguments matching ``config.json``, and preprocessing/labels from the folder."""
    cfg = read_config(folder)
    return ModelSpec(_BASE_ARCH, timm_kwargs(cfg), hf_preprocess(folder, cfg), weights=os.fspath(folder))


def timm_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` -> timm VisionTransformer arguments that compute the same function as the HF model."""
    from timm.layers import LayerNorm

    dim, hidden = int(cfg.get("hidden_size", 768)), int(cfg.get("intermediate_size", 3072))
    act = cfg.get("hidden_act", "gelu")
    if act not in _ACTS:
        raise VitlabError(f"config.json: hidden_act {act!r} is not supported (supported: {', '.join(_ACTS)})")
    if int(dim * (hidden / dim)) != hidden:
        raise VitlabError(f"config.json: intermediate_size {hidden} is not expressible as mlp_ratio x {dim}")
    drop = float(cfg.get("hidden_dropout_prob", 0.0))
    kwargs = dict(img_size=_pair(cfg.get("image_size", 224)), patch_size=_pair(cfg.get("patch_size", 16)),
                  in_chans=int(cfg.get("num_channels", 3)), embed_dim=dim, depth=int(cfg.get("num_hidden_layers", 12)),
                  num_heads=int(cfg.get("num_attention_heads", 12)), mlp_ratio=hidden / dim,
                  qkv_bias=bool(cfg.get("qkv_bias", True)), class_token=True, global_pool="token",
                  norm_layer=functools.partial(LayerNorm, eps=float(cfg.get("layer_norm_eps", 1e-12))),
                  pos_drop_rate=drop, proj_drop_rate=drop,
                  attn_drop_rate=float(cfg.get("attention_probs_dropout_prob", 0.0)))
    if _ACTS[act]:
        kwargs["act_layer"] = _ACTS[act]
    if cfg["model_type"] == "deit":
        kwargs["reg_tokens"] = 1  # the distillation token: [cls, dist, patches], position-embedded like timm's
    return kwargs


def _pair(v: Any) -> int | tuple[int, int]:
    return int(v) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def hf_preprocess(folder: str | os.PathLike, cfg: dict[str, Any]) -> PreprocessCfg:
    """Input size from ``config.json``; mean/std, interpolation and crop from ``preprocessor_config.json``
    (transformers' defaults when absent); labels from ``id2label`` when the folder holds a classifier."""
    size = _pair(cfg.get("image_size", 224))
    h, w = (size, size) if isinstance(size, int) else size
    chans = int(cfg.get("num_channels", 3))
    path = Path(folder) / PREPROCESSOR
    proc = _read_json(path, "") if path.is_file() else {}
    mean, std = _DEFAULT_NORM[cfg["model_type"]]
    mean, std = proc.get("image_mean", mean), proc.get("image_std", std)
    if not proc.get("do_normalize", True):
        mean, std = 0.0, 1.0
    # HF feeds (x * rescale - mean) / std; vitlab normalises 0..255 pixels with 255 * mean, 255 * std
    scale = float(proc.get("rescale_factor", 1 / 255)) * 255 if proc.get("do_rescale", True) else 255.0
    mean, std = (_channels(v, chans, 1 / scale) for v in (mean, std))
    resize, crop_pct = _crop(proc)
    return PreprocessCfg(input_size=(chans, h, w), mean=mean, std=std, interpolation=_interpolation(proc),
                         resize=resize, crop_pct=crop_pct, labels=_labels(cfg))


def _channels(v: Any, chans: int, factor: float) -> tuple[float, ...]:
    vals = [float(x) * factor for x in (v if isinstance(v, (list, tuple)) else [v])]
    if len(vals) == chans:
        return tuple(vals)
    return (sum(vals) / len(vals),) * chans


def _interpolation(proc: dict[str, Any]) -> str:
    r = proc.get("resample", 2)
    if isinstance(r, str):
        return r.lower() if r.lower() in ("nearest", "bilinear", "bicubic") else "bilinear"
    return _PIL_RESAMPLE.get(int(r), "bilinear")


def _side(size: Any) -> int | None:
    """Smaller side of an HF ``size``/``crop_size`` (an int or {height, width} / {shortest_edge})."""
    if isinstance(size, (int, float)):
        return int(size)
    if isinstance(size, dict):
        sides = [size[k] for k in ("height", "width", "shortest_edge") if k in size]
        return int(min(sides)) if sides else None
    return None


def _crop(proc: dict[str, Any]) -> tuple[str, float]:
    """``center_crop`` with crop_pct = crop / resize side when the processor crops; else ``squash``."""
    crop, side = _side(proc.get("crop_size")), _side(proc.get("size"))
    if proc.get("do_center_crop") and crop and side and crop < side:
        return "center_crop", crop / side
    return "squash", 1.0


def _labels(cfg: dict[str, Any]) -> tuple[str, ...]:
    """``id2label`` names in index order, only when the saved model has a classifier."""
    if not any("ForImageClassification" in a for a in cfg.get("architectures") or []):
        return ()
    id2label = cfg.get("id2label") or {}
    try:
        names = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise VitlabError(f"config.json: id2label keys must be class indices, got {list(id2label)[:3]}") from None
    if sorted(names) != list(range(len(names))):
        raise VitlabError(f"config.json: id2label must number the classes 0..{len(names) - 1}")
    return tuple(names[i] for i in range(len(names)))


def weights_files(folder: Path) -> list[Path]:
    """The folder's weight files: safetensors first, then pytorch_model.bin; sharded checkpoints by their index."""
    for name in WEIGHTS:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(_read_json(index, "").get("weight_map", {}).values()))
            return [folder / s for s in shards]
    raise VitlabError(f"{folder} holds no {' or '.join(WEIGHTS)}: save the PyTorch weights there with "
                      "model.save_pretrained(folder) (TensorFlow/Flax weights are not read)")


def read_hf_state_dict(folder: str | os.PathLike, vit: nn.Module) -> dict[str, torch.Tensor]:
    """The folder's tensors under timm names for ``vit`` (safetensors, or ``torch.load(weights_only=True)``)."""
    from vitlab.models.backbone import read_state_dict

    read_config(folder)
    state: dict[str, torch.Tensor] = {}
    for path in weights_files(Path(folder)):
        state.update(read_state_dict(path))
    return place_distillation_token(to_timm_keys(state), vit)


def to_timm_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ViT/DeiT names -> timm names, with query/key/value concatenated into the fused ``qkv``. Tensors without
    a timm counterpart (pooler, mask token, DeiT's distillation head, ...) keep their HF name, so the load
    report lists them as unexpected."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        k = next((key[len(p):] for p in _MODEL_PREFIXES if key.startswith(p)), key)
        m = _QKV.match(k)
        if m:
            qkv.setdefault((m[1], m[4]), {})[(m[2] or m[3])[0]] = (key, value)
            continue
        new = next((rx.sub(r, k, count=1) for rx, r in _RENAMES if rx.match(k)), None)
        out[new or key] = value
    for (layer, kind), parts in qkv.items():
        if sorted(parts) == ["k", "q", "v"]:
            out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[p][1] for p in "qkv"])  # [3D, D] / [3D]
        else:
            out.update(dict(parts.values()))
    return out


def place_distillation_token(state: dict[str, torch.Tensor], vit: nn.Module) -> dict[str, torch.Tensor]:
    """DeiT's distillation token goes where ``vit`` keeps its second prefix token: timm's ``dist_token``
    (``deit_*_distilled``) or a single register token. A model with the class token only gets neither, and the
    token's position embedding is dropped with it."""
    token = state.pop("dist_token", None)
    if token is None:
        return state
    if getattr(vit, "dist_token", None) is not None:
        state["dist_token"] = token
    elif getattr(vit, "reg_token", None) is not None and vit.reg_token.shape[1] == 1:
        state["reg_token"] = token
    else:
        state["embeddings.distillation_token"] = token
        pos = state.get("pos_embed")
        if pos is not None and vit.num_prefix_tokens == 1 and not vit.no_embed_class:
            state["pos_embed"] = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
    return state
