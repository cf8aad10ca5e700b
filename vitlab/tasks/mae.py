"""MAETask: masked-autoencoder pretraining of a registered ViT (He et al., 2022), labels unused.

The encoder is the same ``ViTBackbone`` a ``ClassificationTask`` or ``DetectionTask`` builds, so its checkpoint
starts either of them (``pretrained=mae.ckpt``: the decoder and mask token are dropped, with a key report).
Validation and test log the loss (``val/loss``) and the masked-patch MSE in normalised pixels (``val/mse``, with
fixed masks per batch; with ``norm_pix_loss`` the hidden patches' predictions are de-normalised with the visible
patches' mean and std, never their own: ``MaskedAutoencoder.to_pixels``) and write a PNG grid (original | masked |
reconstruction | reconstruction with the visible patches pasted back, de-normalised the same way) for a fixed set
of images. ``reconstruct`` is the Python API for pictures and inpainting.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from vitlab.models.classify import create_backbone
from vitlab.models.mae import MaskedAutoencoder
from vitlab.tasks.base import VitlabTask
from vitlab.tasks.optim import OptimConfig
from vitlab.tasks.spec import TaskSpec, register_task

DEFAULT_OPTIM = OptimConfig(lr=1.5e-3, weight_decay=0.05, betas=(0.9, 0.95), warmup_epochs=1.0)  # MAE's


class MAETask(VitlabTask):
    def __init__(self, model_name: str = "vitlab_fmnist", model_options: dict[str, Any] | None = None,
                 pretrained: str | bool | None = None, mask_ratio: float = 0.75, decoder_dim: int = 128,
                 decoder_depth: int = 2, decoder_heads: int = 4, norm_pix_loss: bool = True,
                 optim: OptimConfig = DEFAULT_OPTIM, num_preview: int = 8,
                 num_classes: int | None = None, class_names: list[str] | None = None) -> None:
        """
        Args:
            model_name: the encoder: a vitlab variant or timm ViT-family architecture, as for classification.
            model_options: backbone options (img_size, patch_size, in_chans, drop_path_rate, ...).
            mask_ratio: share of the patches hidden from the encoder (MAE: 0.75).
            decoder_dim / decoder_depth / decoder_heads: the light decoder of timm blocks.
            norm_pix_loss: predict each patch normalised by its own mean and variance (MAE's better target).
            optim: AdamW + warmup-cosine settings (``OptimConfig``); keys left out keep ``DEFAULT_OPTIM``.
            num_preview: images in the reconstruction grid written after validation and test.
            num_classes / class_names: linked from the data by the CLI; kept, but labels are not used.
        """
        super().__init__()
        optim = OptimConfig.of(optim, DEFAULT_OPTIM).as_dict()  # plain values in the checkpoint
        self.save_hyperparameters()
        backbone = create_backbone(model_name, pretrained=pretrained, **(model_options or {}))
        self.model = MaskedAutoencoder(backbone, decoder_dim, decoder_depth, decoder_heads,
                                       norm_pix_loss=norm_pix_loss)
        self._preview: torch.Tensor | None = None

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        return self.model(images, self.hparams.mask_ratio, generator)

    def _losses(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        out = self(images, generator)
        targets = self.model.target(images)
        loss = self.model.loss(out["pred"], targets["target"], out["mask"])
        mse = self.model.loss(self.model.to_pixels(out["pred"], targets, out["mask"]), targets["pixels"], out["mask"])
        return {"loss": loss, "mse": mse}

    # --- steps -----------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if not self._count_skipped(batch):
            return None
        loss = self._losses(batch["image"])["loss"]
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        if not self._count_skipped(batch):
            return
        images = batch["image"]
        generator = torch.Generator().manual_seed(batch_idx)  # the same masks every epoch: comparable figures
        losses = self._losses(images, generator)
        n = len(images)
        self.log(f"{stage}/loss", losses["loss"], prog_bar=stage == "val", sync_dist=True, batch_size=n)
        self.log(f"{stage}/mse", losses["mse"], sync_dist=True, batch_size=n)
        if batch_idx == 0 and self._preview is None:
            self._preview = images[: self.hparams.num_preview].detach().cpu()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _write_grid(self, name: str) -> None:
        out = self.report_dir()  # on every rank (a broadcast)
        if self.trainer.is_global_zero and self._preview is not None and not self.trainer.sanity_checking:
            from vitlab.viz import save_image_grid

            rec = self.reconstruct(self._preview.to(self.device))
            save_image_grid({k: v for k, v in rec.items() if k != "mask"}, out / name)
        self._preview = None

    def on_validation_epoch_end(self) -> None:
        self._write_grid(f"reconstruction_epoch{self.current_epoch:03d}.png")

    def on_test_epoch_end(self) -> None:
        self._write_grid("reconstruction_test.png")

    # --- inference -------------------------------------------------------------------------------------
    def reconstruct(self, images: Any, mask_ratio: float | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Reconstructions of ``images``: uint8 ``[N, H, W]`` / ``[N, H, W, C]`` arrays at the model's input
        size, a ``[N, C, H, W]`` uint8 tensor, or image files / PIL images (resized by the model's
        ``PreprocessCfg``). Returns uint8 ``[N, C, H, W]`` arrays ``original`` (the model's input), ``masked``
        (hidden patches grey), ``reconstruction``, ``pasted`` (visible patches put back) and the bool ``mask
        [N, H/p, W/p]``; ``mask_ratio`` defaults to the training one, and the same ``seed`` gives the same masks."""
        x = self._as_batch(images)
        was_training = self.training
        self.eval()
        try:
            out = self.model.reconstruct(x, self.hparams.mask_ratio if mask_ratio is None else mask_ratio, seed)
        finally:
            self.train(was_training)
        return {k: v.cpu().numpy() for k, v in out.items()}

    def _as_batch(self, images: Any) -> torch.Tensor:
        """-> uint8 ``[N, C, H, W]`` at the model's input size on the model's device."""
        from vitlab_edge.imaging import ImageReadError, is_pil_image, to_hwc_uint8

        from vitlab.errors import VitlabError

        pre = self.preprocess
        c, h, w = pre.input_size
        if isinstance(images, (str, os.PathLike)) or is_pil_image(images):
            images = [images]
        if isinstance(images, (list, tuple)) and images and not isinstance(images[0], (np.ndarray, torch.Tensor)):
            try:  # files and PIL images through the one decoder: EXIF orientation, palette, alpha on white
                decoded = [to_hwc_uint8(i) for i in images]
            except ImageReadError as e:
                raise VitlabError(f"{e}; reconstruct needs readable images") from None
            images = np.stack([pre.prepare(d) for d in decoded])  # [N, C, H, W]
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        if x.ndim == 3:
            x = x[:, None] if c == 1 else x[None].permute(0, 3, 1, 2)
        elif x.ndim == 4 and x.shape[1] != c and x.shape[-1] == c:
            x = x.permute(0, 3, 1, 2)  # [N, H, W, C]
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != (c, h, w):
            raise VitlabError(f"reconstruct needs uint8 images of {h}x{w} with {c} channel(s) (or image files), "
                              f"got {x.dtype} {tuple(x.shape)}")
        return x.to(self.device)


register_task(TaskSpec(
    "mae", MAETask, aliases=("masked_autoencoder",), serves="embedding",
    instead="reconstruct images with `vitlab reconstruct CKPT IMAGES --out grid.png`, take embeddings with "
            "`vitlab predict CKPT IMAGES --out emb.npy`, or fine-tune it (configs/classify/fmnist_10pct_mae.yaml)"))
