"""The optimiser settings every task shares, as one plain-value dataclass: AdamW + linear warmup + cosine decay to
``lr * min_lr_ratio`` at the last step, with optional layer-wise LR decay (BEiT, Bao et al. 2021).

In a config they are one mapping; each task has its own defaults, and keys left out keep them::

    model:
      init_args:
        optim: {lr: 2.0e-3, warmup_epochs: 0.3}      # CLI: --model.init_args.optim.lr 3e-3

The checkpoint stores them as a plain dict (``hyper_parameters["optim"]``), so it loads with ``weights_only=True``;
checkpoints written before this dataclass kept the same keys flat, and ``migrate_hparams`` folds them in.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from vitlab.errors import VitlabError


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its schedule.

    Args:
        lr: peak learning rate (after warmup).
        weight_decay: AdamW's decoupled weight decay (never on norms, biases and tokens).
        betas: AdamW's moment decays.
        warmup_epochs: linear warmup length in epochs of the training data (fractions allowed).
        warmup_steps: warmup length in optimiser steps; when set it replaces ``warmup_epochs`` (use it when
            ``max_steps``, not epochs, sizes the run).
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio`` on the last step.
        layer_decay: LR multiplier per ViT block going down from the head (e.g. 0.75); None = off.
    """

    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 1.0
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.01
    layer_decay: float | None = None

    def __post_init__(self) -> None:
        bad = [f"{k}={getattr(self, k)}" for k in ("lr", "weight_decay", "warmup_epochs", "min_lr_ratio")
               if not getattr(self, k) >= 0] + ([f"warmup_steps={self.warmup_steps}"]
                                                 if self.warmup_steps is not None and self.warmup_steps < 0 else [])
        if bad:
            raise VitlabError(f"model.init_args.optim: {', '.join(bad)} must be >= 0")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @classmethod
    def of(cls, value: OptimConfig | dict[str, Any] | None, default: OptimConfig) -> OptimConfig:
        """``value`` as an OptimConfig: a dataclass as is, a dict (a checkpoint's, or written in Python) over
        ``default``, None = ``default``. Unknown keys are one error that lists the known ones."""
        if value is None:
            return default
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise VitlabError(f"model.init_args.optim must be a mapping of {cls.keys()}, got {value!r}")
        unknown = sorted(set(value) - set(cls.keys()))
        if unknown:
            raise VitlabError(f"model.init_args.optim: unknown key(s) {unknown}; known: {cls.keys()}")
        return dataclasses.replace(default, **value)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def as_dict(self) -> dict[str, Any]:
        """Plain values only (what the checkpoint keeps)."""
        return {**dataclasses.asdict(self), "betas": list(self.betas)}

    def warmup(self, steps_per_epoch: float, total: int) -> int:
        steps = self.warmup_steps if self.warmup_steps is not None else int(self.warmup_epochs * steps_per_epoch)
        return max(0, min(steps, total - 1))

    def build(self, param_groups: list[dict[str, Any]], total_steps: int, steps_per_epoch: float):
        """AdamW over ``param_groups`` (timm's layer-decay groups carry an ``lr_scale``) + a per-step LambdaLR."""
        params = [p for g in param_groups for p in g["params"]]
        # fused: one kernel for all tensors (CPU since torch 2.4, CUDA): the step 5.7 -> 2.1 ms on the demo ViTs
        # (2-core Zen 3), the same update up to float rounding; foreach (bit for bit the for-loop) saves 1 ms of it
        fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        opt = torch.optim.AdamW(param_groups, lr=self.lr, betas=self.betas, fused=fused or None)
        for g in opt.param_groups:
            g["lr"] = self.lr * g.get("lr_scale", 1.0)
        total = max(1, total_steps)
        factor = WarmupCosine(self.warmup(steps_per_epoch, total), total, self.min_lr_ratio)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class WarmupCosine:
    """The LR factor at a step: linear warmup over ``warmup`` steps, then cosine to ``floor`` at ``total``.

    A callable object rather than a closure, so LambdaLR's state_dict keeps its plain fields (a resumed run
    continues the same schedule) and ``vitlab.callbacks.TimeBudget`` can end it earlier (``total``) when the
    trainer's ``max_time`` would cut it; ``planned`` keeps the length it was built with."""

    def __init__(self, warmup: int, total: int, floor: float) -> None:
        self.warmup, self.total, self.planned, self.floor = warmup, total, total, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


def migrate_hparams(hp: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyper-parameters with the flat optimiser keys of older checkpoints (``lr``, ``betas``, ...)
    folded into ``optim``."""
    flat = {k: hp[k] for k in OptimConfig.keys() if k in hp}  # noqa: SIM118 - a classmethod, not dict.keys
    if not flat:
        return hp
    rest = {k: v for k, v in hp.items() if k not in flat}
    return {**rest, "optim": {**flat, **(rest.get("optim") or {})}}
