"""Diffusion probes behind DiffusionTask's choices (issue 12): objective and denoiser design at equal training
minutes and equal sampling steps, scored the way ``vitlab test`` scores a diffusion checkpoint.

Variants (``--variants``, any of):
  rf-dit     rectified flow (velocity target, logit-normal t), DiT adaLN-Zero blocks, Euler: vitlab's default
  ddpm-dit   DDPM epsilon-prediction with ``diffusers``' schedulers used standalone (``DDPMScheduler.add_noise`` to
             train, ``DDIMScheduler.set_timesteps/step`` to sample), the same DiT
  rf-uvit    rectified flow on a U-ViT (Bao et al., 2023): time and class as tokens, long skips from the shallow
             to the deep blocks (concat + linear), timm's plain ``Block``; width and heads as the DiT's

Each variant trains for ``--minutes`` of wall time in one bare loop (the same data, batch, optimiser, warm-up, EMA
and seed for all; Fashion-MNIST train set with horizontal flips), then draws ``--samples`` images (as many per
class) with ``--steps`` steps and guidance ``--guidance`` from the EMA weights, and scores them with
``vitlab.metrics.generation_scores`` against as many real test images: FID in the feature space of the evaluation
classifier, class consistency, and the real-vs-real FID floor (as many train images). Run variants one after the
other (the default) so that each gets the whole machine. Needs ``pip install diffusers`` (the ``bench`` extra).

    python benchmarks/probe_diffusion.py --minutes 4 --model dit_fmnist_s \\
        --classifier runs/fmnist_demo/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from machine import machine_info, run_info  # noqa: E402  (benchmarks/machine.py)
from torch import nn  # noqa: E402
from vitlab_edge.sampling import initial_noise, sample, to_uint8  # noqa: E402

from vitlab._fs import atomic_write_json  # noqa: E402
from vitlab.data.datasets import fashion_mnist_arrays  # noqa: E402
from vitlab.metrics import generation_scores, load_classifier  # noqa: E402
from vitlab.models.diffusion import (  # noqa: E402
    Denoiser,
    DenoiserCfg,
    denoiser_cfg,
    flow_pair,
    timestep_embedding,
    to_model_space,
)


class UViT(nn.Module):
    """U-ViT: ``[t token, y token, patches]`` through ``depth // 2`` in-blocks, one mid block and ``depth // 2``
    out-blocks, each out-block fed ``Linear(concat(h, skip))`` from its mirror in-block; the same call as
    ``Denoiser`` (``forward(x, t, y) -> prediction``, ``guided``)."""

    def __init__(self, cfg: DenoiserCfg) -> None:
        super().__init__()
        from timm.layers import PatchEmbed
        from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
        from timm.models.vision_transformer import Block

        self.cfg, d, p = cfg, cfg.dim, cfg.patch_size
        self.grid = cfg.img_size // p
        self.x_embed = PatchEmbed(cfg.img_size, p, cfg.in_chans, d)
        self.register_buffer("pos_embed", build_sincos2d_pos_embed([self.grid, self.grid], d)[None],
                             persistent=False)
        self.t_embed = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.y_embed = nn.Embedding(cfg.num_classes + 1, d)
        half = cfg.depth // 2

        def block() -> nn.Module:
            return Block(d, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True)

        self.in_blocks = nn.ModuleList([block() for _ in range(half)])
        self.mid = block()
        self.out_blocks = nn.ModuleList([block() for _ in range(half)])
        self.skips = nn.ModuleList([nn.Linear(2 * d, d) for _ in range(half)])
        self.norm = nn.LayerNorm(d)
        self.final = nn.Linear(d, p * p * cfg.in_chans)
        nn.init.zeros_(self.final.weight)
        nn.init.zeros_(self.final.bias)

    null_class = property(lambda self: self.cfg.num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        cond = torch.stack([self.t_embed(timestep_embedding(t, 256)), self.y_embed(y)], 1)  # [N, 2, D]
        h = torch.cat([cond, self.x_embed(x) + self.pos_embed], 1)  # [N, 2 + L, D]
        skips = []
        for b in self.in_blocks:
            h = b(h)
            skips.append(h)
        h = self.mid(h)
        for b, lin in zip(self.out_blocks, self.skips):
            h = b(lin(torch.cat([h, skips.pop()], -1)))
        out = self.final(self.norm(h[:, 2:]))  # [N, L, p*p*C]
        p, g = self.cfg.patch_size, self.grid
        return out.reshape(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, g * p, g * p)

    guided = Denoiser.guided


class RectifiedFlow:
    """vitlab's objective (``vitlab.tasks.diffusion``): velocity target, logit-normal t, the edge kit's sampler."""

    def loss(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        t = torch.sigmoid(torch.randn(len(x0), generator=g))
        xt, target = flow_pair(x0, t, torch.randn(x0.shape, generator=g))
        return F.mse_loss(model(xt, t, y), target)

    def sample(self, model: nn.Module, labels: np.ndarray, shape: tuple, steps: int, guidance: float, seed: int):
        @torch.no_grad()
        def step(x, t, y, gd):
            return model.guided(*(torch.from_numpy(a) for a in (x, t, y, gd))).numpy()

        return sample(step, labels, shape, steps, guidance, seed, "euler", batch_size=500)


class DDPMEpsilon:
    """DDPM epsilon-prediction, ``diffusers``' schedulers standalone: 1,000 training steps (``--beta-schedule``),
    ``add_noise`` for training, DDIM (eta 0, trailing timesteps: the first step at pure noise) for sampling, the
    predicted x0 clipped to [-1, 1] (diffusers' default; ``--no-clip``: not); the network sees ``t = timestep /
    1000``."""

    def __init__(self, beta_schedule: str, clip_sample: bool) -> None:
        from diffusers import DDIMScheduler, DDPMScheduler

        kw = dict(num_train_timesteps=1000, beta_schedule=beta_schedule, clip_sample=clip_sample)
        self.train_sched = DDPMScheduler(**kw)
        self.sample_sched = DDIMScheduler(**kw, set_alpha_to_one=True, timestep_spacing="trailing")

    def loss(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        ts = torch.randint(0, 1000, (len(x0),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        xt = self.train_sched.add_noise(x0, noise, ts)
        return F.mse_loss(model(xt, ts.float() / 1000, y), noise)

    @torch.no_grad()
    def sample(self, model: nn.Module, labels: np.ndarray, shape: tuple, steps: int, guidance: float, seed: int):
        sched = self.sample_sched
        sched.set_timesteps(steps)
        out = []
        x_all = torch.from_numpy(initial_noise(len(labels), shape, seed))  # the same noise as rectified flow's
        for s in range(0, len(labels), 500):
            x, y = x_all[s:s + 500], torch.from_numpy(np.asarray(labels[s:s + 500], np.int64))
            gd = torch.full((len(y),), guidance)
            for ts in sched.timesteps:
                eps = model.guided(x, torch.full((len(y),), float(ts) / 1000), y, gd)
                x = sched.step(eps, ts, x).prev_sample
            out.append(to_uint8(x.clamp(-1, 1).numpy()))
        return np.concatenate(out)


def train(model: nn.Module, objective, images: np.ndarray, labels: np.ndarray, minutes: float, batch: int,
          seed: int) -> tuple[nn.Module, int]:
    """A bare loop for ``minutes``: AdamW (lr 1e-3, betas 0.9/0.99), 200 warm-up steps, flips, 10 % label dropout,
    EMA 0.995 (with DiffusionTask's warm-up of the average). Returns the EMA model and the number of steps."""
    g = torch.Generator().manual_seed(seed)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    step, end = 0, time.monotonic() + 60 * minutes
    while time.monotonic() < end:
        idx = torch.randint(0, len(x_all), (batch,), generator=g)
        x0 = to_model_space(x_all[idx][:, None])
        flip = torch.rand(batch, generator=g) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        y = torch.where(torch.rand(batch, generator=g) < 0.1, model.null_class, y_all[idx])
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 200)
        loss = objective.loss(model, x0, y, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        step += 1
    return ema.eval(), step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["rf-dit", "ddpm-dit", "rf-uvit"])
    ap.add_argument("--model", default="dit_fmnist_s", help="a registered denoiser size (vitlab.models.diffusion)")
    ap.add_argument("--minutes", type=float, default=4.0, help="training wall time per variant")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="sampling steps (Euler / DDIM)")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--beta-schedule", default="squaredcos_cap_v2", help="diffusers' beta_schedule for ddpm")
    ap.add_argument("--no-clip", action="store_true", help="ddpm: do not clip the predicted x0 while sampling")
    ap.add_argument("--classifier", default="runs/fmnist_demo/checkpoints/last.ckpt")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/bench/diffusion_probe.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels = fashion_mnist_arrays("train")
    test_images, _ = fashion_mnist_arrays("test")
    rng = np.random.default_rng(0)
    real = test_images[rng.choice(len(test_images), args.samples, replace=False)][:, None]
    other = images[rng.choice(len(images), args.samples, replace=False)][:, None]
    classifier = load_classifier(args.classifier)
    cfg = denoiser_cfg(args.model)
    gen_labels = np.arange(args.samples) % cfg.num_classes
    results = {}
    for name in args.variants:
        objective = DDPMEpsilon(args.beta_schedule, not args.no_clip) if name.startswith("ddpm") else RectifiedFlow()
        torch.manual_seed(0)
        model = UViT(cfg) if name.endswith("uvit") else Denoiser(cfg)
        ema, steps = train(model, objective, images, labels, args.minutes, args.batch, seed=0)
        t = time.perf_counter()
        fake = objective.sample(ema, gen_labels, (cfg.in_chans, cfg.img_size, cfg.img_size), args.steps,
                                args.guidance, seed=1)
        sample_s = time.perf_counter() - t
        scores = generation_scores(classifier, real, fake, gen_labels, other)
        results[name] = {"train_steps": steps, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
                         "sample_s": round(sample_s, 1), **{k: round(v, 3) for k, v in scores.items()}}
        print(json.dumps({"variant": name, **results[name]}), flush=True)
    atomic_write_json(args.out, {"machine": machine_info(), **run_info(), "args": vars(args), "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
