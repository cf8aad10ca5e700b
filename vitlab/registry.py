"""Model registry in timm's style: a variant is a function returning a few arguments, not a subclass.

Any timm VisionTransformer-family name works too (``vit_*``, ``deit_*``, ...); registered vitlab variants add
small models tuned for this project (``vitlab_tiny`` for tests, ``vitlab_fmnist`` for 28x28 grayscale).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from vitlab.errors import VitlabError
from vitlab.preprocess import PreprocessCfg

# timm modules whose models are plain timm VisionTransformer (or thin subclasses of it)
_TIMM_VIT_MODULES = ("vision_transformer", "deit")
# options a user may set on any backbone; the rest of timm's constructor stays internal
BACKBONE_OPTIONS = ("img_size", "patch_size", "in_chans", "drop_path_rate", "drop_rate", "dynamic_img_size",
                    "global_pool", "class_token", "reg_tokens", "embed_dim", "depth", "num_heads", "mlp_ratio",
                    "qkv_bias", "init_values", "no_embed_class", "fc_norm", "attn_drop_rate", "proj_drop_rate")


@dataclass(frozen=True)
class ModelSpec:
    """What ``create_*`` needs: the timm architecture to build, its arguments, the preprocessing, the weights
    that come with it (a Hugging Face folder's own), loaded unless ``pretrained`` says otherwise, and a task head's
    own arguments (``head``: e.g. a detector's pyramid and FCOS settings; empty for classifiers)."""

    arch: str
    kwargs: dict[str, Any]
    preprocess: PreprocessCfg
    weights: str | None = None
    head: dict[str, Any] = field(default_factory=dict)


_MODELS: dict[str, Callable[[], ModelSpec]] = {}


def register_model(fn: Callable[[], ModelSpec]) -> Callable[[], ModelSpec]:
    """Register a variant under its function name; registering a name twice is an error."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


@functools.cache
def _timm_vit_names() -> list[str]:
    import timm

    return sorted({n for m in _TIMM_VIT_MODULES for n in timm.list_models(module=m)})


def list_models(pattern: str = "*", include_timm: bool = True, task: str | None = None) -> list[str]:
    """Registered vitlab variants first, then timm's ViT-family architectures, filtered by a glob pattern.
    ``task``: only the variants built for that task (``classification``, ``detection``, ...; a name its spec knows,
    aliases included); timm's architectures are backbones, listed for classification, mae and embedding."""
    _ensure_variants()
    names = sorted(_MODELS)
    if task is not None:
        from vitlab.tasks.spec import get_task

        task = get_task(task).name
        backbone = task in ("classification", "mae", "embedding")  # a plain backbone variant serves all three
        names = [n for n in names if _MODELS[n]().preprocess.task == ("classification" if backbone else task)]
        include_timm = include_timm and backbone
    names += _timm_vit_names() if include_timm else []
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def variant_spec(name: str) -> ModelSpec:
    """A registered variant's spec as registered (no options applied), e.g. a denoiser's; an unknown name is one
    line listing the close ones."""
    _ensure_variants()
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3)
        raise VitlabError(f"unknown model {name!r}.{f' Did you mean {chr(44).join(close)}?' if close else ''} "
                          "See `vitlab.list_models(include_timm=False)`.")
    return _MODELS[name]()


def _ensure_variants() -> None:
    import vitlab.models  # noqa: F401  (its modules register the vitlab variants; the registry imports no head)


def _timm_preprocess(arch: str, options: dict[str, Any]) -> PreprocessCfg:
    """timm's pretrained cfg for ``arch`` as a PreprocessCfg, then the user's size/channel overrides."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    d = cfg.to_dict() if cfg is not None else {}
    interp = d.get("interpolation", "bicubic")
    crop = float(d.get("crop_pct", 1.0))
    base = PreprocessCfg(input_size=tuple(d.get("input_size", (3, 224, 224))), mean=tuple(d.get("mean", (0.5,) * 3)),
                         std=tuple(d.get("std", (0.5,) * 3)),
                         interpolation=interp if interp in ("nearest", "bilinear", "bicubic") else "bicubic",
                         resize="center_crop" if crop < 1.0 else "squash", crop_pct=crop)
    return _with_geometry(base, options)


def _with_geometry(pre: PreprocessCfg, kwargs: dict[str, Any]) -> PreprocessCfg:
    """Follow ``img_size`` / ``in_chans`` overrides; a channel change converts mean/std (grey <-> RGB)."""
    chans = int(kwargs.get("in_chans", pre.channels))
    img = kwargs.get("img_size", pre.image_size)
    h, w = (img, img) if isinstance(img, int) else tuple(img)
    mean, std = pre.mean, pre.std
    if chans != pre.channels:
        mean, std = ((sum(mean) / 3,), (sum(std) / 3,)) if chans == 1 else (mean * 3, std * 3)
    return pre.replace(input_size=(chans, h, w), mean=mean, std=std)


def _with_options(spec: ModelSpec, options: dict[str, Any]) -> ModelSpec:
    kwargs = {**spec.kwargs, **options}
    return replace(spec, kwargs=kwargs, preprocess=_with_geometry(spec.preprocess, kwargs))


def resolve(name: str | os.PathLike, options: dict[str, Any] | None = None) -> ModelSpec:
    """Name (or Hugging Face folder) + user options -> the timm arch, merged arguments and preprocessing. Errors
    name the bad key."""
    name, options = os.fspath(name), dict(options or {})
    unknown = sorted(set(options) - set(BACKBONE_OPTIONS))
    if unknown:
        raise VitlabError(f"model option {unknown[0]!r} is not supported; "
                          f"supported options: {', '.join(BACKBONE_OPTIONS)}")
    _ensure_variants()
    if name in _MODELS:
        spec = _MODELS[name]()
        if spec.preprocess.task == "generation":
            raise VitlabError(f"model {name!r} is a denoiser, not a ViT backbone: train it with "
                              f"vitlab.tasks.DiffusionTask(model_name={name!r})")
        return _with_options(spec, options)
    timm_names = _timm_vit_names()
    if name.split(".")[0] in timm_names:  # plain arch or arch.pretrained_tag (timm's naming)
        return ModelSpec(name, options, _timm_preprocess(name, options))
    if os.path.isdir(name) or os.sep in name or "/" in name:
        from vitlab.models.hf import hf_model_spec

        return _with_options(hf_model_spec(name), options)
    import timm

    if timm.is_model(name):
        raise VitlabError(f"model {name!r} is a timm model but not a Vision Transformer; see vitlab.list_models()")
    close = difflib.get_close_matches(name, list(_MODELS) + timm_names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise VitlabError(f"unknown model {name!r}.{hint} See `vitlab.list_models()` for the names.")

