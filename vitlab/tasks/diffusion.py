"""DiffusionTask: a class-conditional diffusion transformer (``vitlab.models.diffusion``) trained with rectified
flow, classifier-free guidance (label dropout) and EMA weights, sampled by the edge kit's numpy loop.

Training: ``t`` from a logit-normal distribution (Esser et al., 2024), ``x_t = (1 - t) x0 + t eps``, MSE on the
velocity ``eps - x0``. Validation logs ``val/loss`` (fixed noise per batch, EMA weights) and writes a grid of
samples, one row per class. ``test`` adds ``test/fid``, ``test/fid_floor`` (real training vs real test images, the
same count) and ``test/class_acc`` when ``eval_classifier`` names a vitlab classification checkpoint.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.errors import VitlabError
from vitlab.models.diffusion import Denoiser, denoiser_cfg, flow_pair, to_model_space
from vitlab.preprocess import PreprocessCfg
from vitlab.tasks.base import VitlabTask
from vitlab.tasks.optim import OptimConfig
from vitlab.tasks.spec import TaskSpec, register_task

DEFAULT_OPTIM = OptimConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.99), warmup_epochs=0.5, min_lr_ratio=0.1)

log = logging.getLogger(__name__)


class DiffusionTask(VitlabTask):
    def __init__(self, model_name: str = "dit_fmnist", model_options: dict[str, Any] | None = None,
                 num_classes: int = 10, class_names: list[str] | None = None, label_dropout: float = 0.1,
                 ema_decay: float = 0.999, optim: OptimConfig = DEFAULT_OPTIM,
                 sample_steps: int = 20, guidance: float = 2.0, sampler: str = "euler", num_preview: int = 8,
                 eval_classifier: str | None = None, eval_samples: int = 1000) -> None:
        """
        Args:
            model_name: a registered denoiser (``vitlab.list_models(task="generation")``).
            model_options: DenoiserCfg fields (img_size, in_chans, patch_size, dim, depth, num_heads, mlp_ratio).
            label_dropout: share of training labels replaced by "no label" (classifier-free guidance).
            ema_decay: EMA of the weights, used for validation, test, sampling and export (the checkpoint holds it).
            optim: AdamW + warmup-cosine settings (``OptimConfig``); keys left out keep ``DEFAULT_OPTIM``.
            sample_steps / guidance / sampler: sampling defaults (``euler`` or ``heun``), kept in the export.
            eval_classifier: a vitlab Fashion-MNIST (or your data's) classification checkpoint for FID and class
                consistency in ``test``; eval_samples: how many images ``test`` generates for them.
        """
        super().__init__()
        optim = OptimConfig.of(optim, DEFAULT_OPTIM).as_dict()  # plain values in the checkpoint
        self.save_hyperparameters()
        if sampler not in ("euler", "heun") or not 0.0 <= label_dropout < 1.0:
            raise VitlabError(f"model.sampler must be euler or heun and label_dropout in [0, 1), got {sampler!r}, "
                              f"{label_dropout}")
        cfg = denoiser_cfg(model_name, **{"num_classes": num_classes, **(model_options or {})})
        self.model = Denoiser(cfg)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        labels = tuple(class_names or ())
        self._preprocess = PreprocessCfg(input_size=(cfg.in_chans, cfg.img_size, cfg.img_size),
                                         mean=(0.5,) * cfg.in_chans, std=(0.5,) * cfg.in_chans,
                                         interpolation="area", labels=labels, task="generation")
        self._real: list[torch.Tensor] = []

    @property
    def preprocess(self) -> PreprocessCfg:
        return self._preprocess

    def setup(self, stage: str) -> None:
        """``test`` scores with ``eval_classifier``: check it loads now, not after generating the test samples."""
        super().setup(stage)
        path = self.hparams.eval_classifier
        if stage == "test" and path:
            from vitlab.metrics import load_classifier

            load_classifier(path, key="model.init_args.eval_classifier")
        elif stage == "fit" and path and not os.path.isfile(path):
            log.warning("model.init_args.eval_classifier %s does not exist yet: `vitlab test` will need it "
                        "(`make demo` writes runs/demo/checkpoints/last.ckpt)", path)

    def _param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad],
                 "weight_decay": self.optim.weight_decay}]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, y)

    # --- training ----------------------------------------------------------------------------------------
    def _loss(self, model: Denoiser, batch: dict[str, Any], generator: torch.Generator | None = None,
              drop_labels: bool = False) -> torch.Tensor:
        x0 = to_model_space(batch["image"])
        n, dev = len(x0), x0.device
        t = torch.sigmoid(torch.randn(n, generator=generator)).to(dev)  # logit-normal
        noise = torch.randn(x0.shape, generator=generator).to(dev)
        xt, target = flow_pair(x0, t, noise)
        y = batch["target"]
        if drop_labels and self.hparams.label_dropout > 0:
            drop = torch.rand(n, device=dev) < self.hparams.label_dropout
            y = torch.where(drop, torch.full_like(y, model.null_class), y)
        return F.mse_loss(model(xt, t, y), target)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if not self._count_skipped(batch):
            return None
        loss = self._loss(self.model, batch, drop_labels=True)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_start(self) -> None:
        self._ema_pairs = None  # listed again on the first step, on the training device

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.global_step
        decay = min(self.hparams.ema_decay, (1 + step) / (10 + step))  # short warm-up of the average
        pairs = getattr(self, "_ema_pairs", None)
        if pairs is None:  # listed once: walking both module trees every step cost more than the update itself
            pairs = self._ema_pairs = list(self.ema.parameters()), list(self.model.parameters())
            if len(pairs[0]) != len(pairs[1]):
                raise RuntimeError("the EMA copy and the model have different parameters")
        with torch.no_grad():  # one call over all tensors: bit for bit the per-tensor lerp_
            torch._foreach_lerp_(*pairs, 1 - decay)

    def _eval_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        if not self._count_skipped(batch):
            return
        loss = self._loss(self.ema, batch, torch.Generator().manual_seed(batch_idx))
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True, batch_size=len(batch["image"]))
        if stage == "test" and sum(len(r) for r in self._real) < self.hparams.eval_samples:
            self._real.append(batch["image"].cpu())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    # --- sampling ----------------------------------------------------------------------------------------
    def sample(self, labels: Any, steps: int | None = None, guidance: float | None = None, seed: int = 0,
               method: str | None = None, batch_size: int = 256, progress: bool | None = False) -> np.ndarray:
        """uint8 images ``[N, H, W, C]`` for class ids ``labels`` from the EMA weights (the edge kit's loop:
        the same seed gives the same images as the exported model's)."""
        from vitlab_edge.sampling import sample

        h = self.hparams
        return sample(self.step_fn(), labels, self.preprocess.input_size, steps or h.sample_steps,
                      h.guidance if guidance is None else guidance, seed, method or h.sampler, batch_size, progress)

    def step_fn(self):
        """The guided EMA denoiser as a numpy step function ``(x, t, y, guidance) -> v``."""
        model, device = self.ema.eval(), self.device

        @torch.no_grad()
        def step(x: np.ndarray, t: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
            args = [torch.from_numpy(a).to(device) for a in (x, t, y, g)]
            return model.guided(*args).float().cpu().numpy()

        return step

    def _class_grid(self, name: str) -> None:
        out = self.report_dir()  # on every rank (a broadcast)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            from vitlab.viz import save_sample_grid

            k, per = self.hparams.num_classes, self.hparams.num_preview
            images = self.sample(np.repeat(np.arange(k), per), seed=0)
            save_sample_grid(images.reshape(k, per, *images.shape[1:]), out / name)

    def on_validation_epoch_end(self) -> None:
        self._class_grid(f"samples_epoch{self.current_epoch:03d}.png")

    def on_test_epoch_end(self) -> None:
        self._class_grid("samples_test.png")
        real = torch.cat(self._real)[: self.hparams.eval_samples] if self._real else None
        self._real = []
        if self.hparams.eval_classifier and real is not None and len(real) > 1:
            self._log_generation_scores(real)

    def _log_generation_scores(self, real: torch.Tensor) -> None:
        from vitlab.metrics import generation_scores, load_classifier

        classifier = load_classifier(self.hparams.eval_classifier).to(self.device)
        n = len(real)
        labels = np.arange(n) % self.hparams.num_classes
        fake = torch.from_numpy(self.sample(labels, seed=1)).permute(0, 3, 1, 2)
        train = self._training_images(n)
        scores = generation_scores(classifier, real.to(self.device), fake.to(self.device), labels,
                                   None if train is None else train.to(self.device))
        for key in ("fid", "class_acc", "fid_floor"):
            if key in scores:
                self.log(f"test/{key}", scores[key], sync_dist=True)

    def _training_images(self, n: int) -> torch.Tensor | None:
        """``n`` training images (random by seed 0) as model inputs, for the real-vs-real FID floor."""
        data = getattr(self.trainer, "datamodule", None)
        samples = data.split_set("train") if data is not None and hasattr(data, "split_set") else None
        if samples is None or len(samples) < n:
            return None
        pick = np.random.default_rng(0).choice(len(samples), n, replace=False)
        return torch.from_numpy(np.stack([self.preprocess.prepare(samples[int(i)][0]) for i in pick]))


register_task(TaskSpec(
    "generation", DiffusionTask, aliases=("diffusion",), exporter="vitlab.onnx.generate:GenerationExport",
    instead="it takes no images: sample it with `vitlab sample CKPT --per-class 8 --out DIR` (or `vitlab export` "
            "it and `vitlab-edge sample`)"))
