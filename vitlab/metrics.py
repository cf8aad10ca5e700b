"""Generation metrics with a vitlab classifier instead of Inception (which cannot be downloaded here): FID
(torchmetrics' ``FrechetInceptionDistance`` with the classifier's pooled features as the ``feature`` module) and
class consistency (the classifier's top-1 accuracy on generated images against their conditioning labels)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from vitlab.errors import VitlabError


class ClassifierFeatures(nn.Module):
    """uint8 images ``[N, C, H, W]`` -> a vitlab classifier's pooled features ``[N, D]`` (the FID space)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = int(classifier.backbone.out_channels)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.backbone(images)["pooled"]


def load_classifier(path: str | os.PathLike, key: str = "eval_classifier") -> nn.Module:
    """The classifier of a vitlab classification checkpoint (weights only, no pickled code); a missing file is one
    line naming ``key`` (the option that named it) and how to make the demo classifier."""
    from vitlab.tasks import ClassificationTask, load_task

    if not os.path.isfile(path):
        raise VitlabError(f"{key}: classifier checkpoint {path} does not exist; train the demo classifier with "
                          "`make demo` (writes runs/demo/checkpoints/last.ckpt) or point it at a vitlab "
                          "classification checkpoint")
    task = load_task(path)
    if not isinstance(task, ClassificationTask):
        raise VitlabError(f"{path}: the evaluation classifier must be a classification checkpoint, not a "
                          f"{type(task).__name__}")
    return task.model.eval()


def _batches(images: Any, size: int):
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    for i in range(0, len(x), size):
        yield x[i:i + size].contiguous()


@torch.no_grad()
def generation_scores(classifier: nn.Module, real: Any, fake: Any, labels: Any | None = None,
                      other_real: Any | None = None, batch_size: int = 500) -> dict[str, float]:
    """``fid`` between uint8 image sets ``real`` and ``fake`` (``[N, C, H, W]`` or ``[N, H, W, C]``) in the
    classifier's feature space; with ``labels`` (the classes ``fake`` was conditioned on) ``class_acc``, the
    classifier's accuracy on ``fake`` in percent; with ``other_real`` (e.g. training images, as many as ``real``)
    ``fid_floor``, the FID between the two real sets (``real``'s features computed once for both)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=ClassifierFeatures(classifier), reset_real_features=False)
    for x in _batches(real, batch_size):
        fid.update(x, real=True)
    correct, n = 0, 0
    y = torch.as_tensor(np.asarray(labels)).long() if labels is not None else None
    for x in _batches(fake, batch_size):
        fid.update(x, real=False)
        if y is not None:
            correct += int((classifier(x).argmax(1) == y[n:n + len(x)]).sum())
        n += len(x)
    out = {"fid": float(fid.compute())}
    if y is not None:
        out["class_acc"] = 100.0 * correct / max(1, n)
    if other_real is not None:
        fid.reset()  # the fake side only: reset_real_features=False keeps ``real``'s
        for x in _batches(other_real, batch_size):
            fid.update(x, real=False)
        out["fid_floor"] = float(fid.compute())
    return out
