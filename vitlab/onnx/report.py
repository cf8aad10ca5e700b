"""Held-out images, the torch reference, and the parity report that gates every export.

The report compares an ONNX model with the torch model it came from on real held-out images: top-1 agreement,
accuracy of both (when labels are known), max abs differences, file size and node counts. Export fails when the
accuracy drop exceeds the precision's budget; without labels the disagreement rate bounds the drop and is gated.
Reading the held-out images and running each model over them (up to 10k images each) show a progress bar on a
terminal (``vitlab_edge.progress``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vitlab_edge.progress import Progress

from vitlab.errors import VitlabError

log = logging.getLogger(__name__)

MAX_ACC_DROP_PP = {"fp32": 0.1, "fp16": 0.3, "int8": 1.0}


@dataclass
class EvalSet:
    """Model-ready uint8 images ``[N, C, H, W]``, their class ids (or None) and where they came from."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str


def load_eval_set(spec: str | os.PathLike | None, preprocess, split: str = "test", limit: int = 10000,
                  seed: int = 0) -> EvalSet:
    """``spec``: ``fashion-mnist`` (its ``split``), an image folder (class sub-folders named like the model's
    labels give accuracy; other folders give agreement only), or None for Fashion-MNIST when the model was
    trained on it. At most ``limit`` images, a fixed random subset when there are more."""
    from vitlab.models.classify import FMNIST_LABELS

    if spec is None:
        if tuple(preprocess.labels) != FMNIST_LABELS:
            raise VitlabError("no held-out images for the export report: pass eval_data (--eval-data FOLDER) with "
                              "images the model did not train on")
        spec = "fashion-mnist"
    if str(spec) == "fashion-mnist":
        from vitlab.data.datasets import fashion_mnist_arrays

        x, y = fashion_mnist_arrays(split)
        idx = _subset(len(y), limit, seed)
        images = x[idx][:, None] if x.ndim == 3 else x[idx]
        if images.shape[1:] != tuple(preprocess.input_size):
            raise VitlabError(f"Fashion-MNIST images are {images.shape[1:]}, the model takes {preprocess.input_size}")
        return EvalSet(np.ascontiguousarray(images), y[idx].astype(np.int64), f"fashion-mnist/{split}")
    return _folder_eval_set(Path(spec), preprocess, limit, seed)


def _subset(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _folder_eval_set(root: Path, preprocess, limit: int, seed: int) -> EvalSet:
    from vitlab.inference.io import ImageReadError, is_image_file, read_image

    if not root.is_dir():
        raise VitlabError(f"eval data {root} is not a folder (or 'fashion-mnist')")
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise VitlabError(f"eval data {root} holds no images")
    files = [files[i] for i in _subset(len(files), limit, seed)]
    index = {name: i for i, name in enumerate(preprocess.labels)}
    labelled = all(f.parent != root and f.parent.name in index for f in files)
    images, labels = [], []
    with Progress(len(files), "eval images") as bar:
        for f in files:
            bar.update()
            try:
                arr = preprocess.prepare(read_image(f))
            except ImageReadError as e:
                log.warning("skipping eval image %s", e)
                continue
            images.append(arr)
            labels.append(index.get(f.parent.name, -1))
    if not images:
        raise VitlabError(f"eval data {root}: no readable images")
    return EvalSet(np.stack(images), np.array(labels) if labelled else None, str(root))


def counted_slices(n: int, batch_size: int, desc: str, progress: bool | None = None):
    """``slice``s over ``n`` items in steps of ``batch_size``, counted on a progress bar (``vitlab_edge.progress``)."""
    with Progress(n, desc, progress=progress) as bar:
        for i in range(0, n, batch_size):
            yield slice(i, min(n, i + batch_size))
            bar.update(min(batch_size, n - i))


def _batches(images: np.ndarray, batch_size: int, desc: str, progress: bool | None):
    """``images`` in slices of ``batch_size``, counted on a progress bar."""
    return (images[s] for s in counted_slices(len(images), batch_size, desc, progress))


@torch.no_grad()
def torch_outputs(classifier: torch.nn.Module, images: np.ndarray, batch_size: int = 256,
                  progress: bool | None = None) -> np.ndarray:
    """fp32 logits of the torch model, ``[N, K]``."""
    classifier.eval()
    batches = _batches(images, batch_size, "eval torch", progress)
    return torch.cat([classifier(torch.from_numpy(b)) for b in batches]).numpy()


def onnx_outputs(session, images: np.ndarray, batch_size: int = 256,
                 progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probs, logits) of an ONNX Runtime session, ``[N, K]`` each."""
    name = session.get_inputs()[0].name
    precision = json.loads(session.get_modelmeta().custom_metadata_map.get("vitlab", "{}")).get("precision", "")
    batches = _batches(images, batch_size, f"eval onnx {precision}".strip(), progress)
    outs = [session.run(["probs", "logits"], {name: b}) for b in batches]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def parity_report(ref_logits: np.ndarray, probs: np.ndarray, logits: np.ndarray, eval_set: EvalSet,
                  precision: str) -> dict[str, Any]:
    """Agreement and accuracy of an ONNX variant vs torch, and whether it is within the precision's budget."""
    ref_probs = torch.from_numpy(ref_logits).softmax(-1).numpy()
    ref_top1, top1 = ref_logits.argmax(1), probs.argmax(1)
    agreement = float((ref_top1 == top1).mean() * 100)
    rep: dict[str, Any] = {"eval_images": int(len(top1)), "eval_source": eval_set.source,
                           "top1_agreement_pct": round(agreement, 3),
                           "max_abs_diff_probs": float(np.abs(probs - ref_probs).max()),
                           "max_abs_diff_logits": float(np.abs(logits - ref_logits).max())}
    budget = MAX_ACC_DROP_PP[precision]
    if eval_set.labels is not None:
        acc_ref = float((ref_top1 == eval_set.labels).mean() * 100)
        acc = float((top1 == eval_set.labels).mean() * 100)
        drop = acc_ref - acc
        rep.update(accuracy_torch_pct=round(acc_ref, 3), accuracy_onnx_pct=round(acc, 3),
                   accuracy_drop_pp=round(drop, 3))
    else:  # no labels: a changed top-1 is the most accuracy that can have been lost
        drop = 100.0 - agreement
        rep.update(accuracy_drop_bound_pp=round(drop, 3))
    rep.update(max_accuracy_drop_pp=budget, passed=bool(drop <= budget + 1e-9))
    return rep
