"""Albumentations pipelines declared in YAML (``configs/augment/*.yaml``), in Albumentations' own
serialisation format (what ``A.to_dict`` / ``A.save(..., data_format="yaml")`` write), loaded with ``A.from_dict``.

Pipelines work on HWC uint8; the PreprocessCfg resize brings their output to the model's size. Normalisation is
not theirs to do (it runs inside the model, from PreprocessCfg), so ``Normalize`` / ``ToTensorV2`` are rejected.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vitlab.errors import VitlabError
from vitlab.preprocess import PreprocessCfg

_FORBIDDEN = ("Normalize", "ToTensorV2", "ToFloat")

# The one declaration of how detection pipelines carry boxes: x1, y1, x2, y2 in pixels with their class labels;
# boxes leaving the image are clipped, and dropped when less than 30 % of them (or under 4x4 px) stays visible.
BBOX_PARAMS = {"format": "pascal_voc", "label_fields": ["labels"], "min_visibility": 0.3, "min_area": 16.0,
               "clip": True}


def _names(t) -> list[str]:
    children = getattr(t, "transforms", None) or []
    return [type(t).__name__] + [n for c in children for n in _names(c)]


def _without_p(node) -> str | None:
    """The first transform in a serialised spec without an explicit ``p``. The top-level ``Compose`` defaults to
    1.0 and is exempt; nested containers (``OneOf``, ``SomeOf``, ``Sequential``, ...) default to 0.5 like any
    transform, so they are checked too."""
    if not isinstance(node, dict):
        return None
    if "p" not in node:
        return str(node.get("__class_fullname__", "a transform"))
    return next((m for c in node.get("transforms") or [] if (m := _without_p(c))), None)


def _first_without_p(root) -> str | None:
    children = root.get("transforms") if isinstance(root, dict) else None
    return next((m for c in children or [] if (m := _without_p(c))), None)


def load_pipeline(path: str | os.PathLike, bboxes: bool = False):
    """An ``A.Compose`` from a YAML file; errors name the file and what is wrong.

    ``bboxes=True`` (detection) attaches ``BBOX_PARAMS``, so the pipeline transforms ``bboxes`` and ``labels``
    with the image; the YAML must not declare its own ``bbox_params``."""
    import albumentations as A
    import yaml

    import vitlab.data.augment  # noqa: F401  (registers vitlab's own transforms for from_dict)

    path = Path(path)
    if not path.is_file():
        raise VitlabError(f"augment pipeline {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise VitlabError(f"augment pipeline {path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict) or "transform" not in spec:
        raise VitlabError(f"augment pipeline {path}: expected a mapping with a 'transform' key (A.to_dict format)")
    missing_p = _first_without_p(spec["transform"])
    if missing_p:
        raise VitlabError(f"augment pipeline {path}: {missing_p} has no 'p'; set it explicitly "
                          "(Albumentations' from_dict would silently default it to 0.5)")
    if bboxes:
        if spec["transform"].get("bbox_params"):
            raise VitlabError(f"augment pipeline {path}: remove bbox_params (vitlab sets them: "
                              "vitlab.data.transforms.BBOX_PARAMS)")
        spec = {**spec, "transform": {**spec["transform"], "bbox_params": BBOX_PARAMS}}
    try:
        pipeline = A.from_dict(spec)
    except Exception as e:  # albumentations raises ValueError/KeyError/TypeError/pydantic errors for bad specs
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VitlabError(f"augment pipeline {path}: {type(e).__name__}: {msg}") from None
    bad = [n for n in _names(pipeline) if n in _FORBIDDEN]
    if bad:
        raise VitlabError(f"augment pipeline {path}: remove {bad[0]} (normalisation runs inside the model)")
    if bboxes:
        _check_with_boxes(pipeline, path)
    return pipeline


def _check_with_boxes(pipeline, path: Path) -> None:
    """Run a detection pipeline once on a blank image with one box, so that a transform that cannot carry boxes
    fails now, naming the file, not in a DataLoader worker."""
    try:
        pipeline(image=np.zeros((64, 96, 3), np.uint8), bboxes=np.array([[8.0, 8.0, 40.0, 40.0]], np.float32),
                 labels=np.zeros(1, np.int64))
    except Exception as e:  # noqa: BLE001 - albumentations raises many types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VitlabError(f"augment pipeline {path}: does not work with boxes: {type(e).__name__}: {msg}") from None


def seed_augment(augment) -> None:
    """Seed an augment pipeline from torch's seed in this process, plus the distributed rank. Albumentations'
    ``Compose`` keeps a random state of its own that ``seed_everything`` does not reach; in the main process torch's
    seed is the run's seed, and in a DataLoader worker torch's per-worker seed (distinct per worker and epoch, and
    fixed by the run's seed), so a seeded run augments the same way twice, and neither workers nor DDP ranks repeat
    each other's draws."""
    if augment is not None:
        import torch

        from vitlab._dist import rank

        augment.set_random_seed((torch.initial_seed() + 7919 * rank()) % 2**32)


def seed_augment_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: ``seed_augment`` for the worker's copy of its dataset's ``augment``."""
    from torch.utils.data import get_worker_info

    seed_augment(getattr(get_worker_info().dataset, "augment", None))


def batched_flips(augment) -> list[tuple[int, float]] | None:
    """A pipeline made only of flips (``HorizontalFlip`` / ``VerticalFlip`` at the top level of a ``Compose`` that
    always runs) as ``[(axis of a CHW image, p), ...]``, which a whole batch can take at once
    (``vitlab.data.datamodules.ArrayBatches``); None for any other pipeline (it runs per sample)."""
    import albumentations as A

    if augment is None or type(augment) is not A.Compose or augment.p != 1.0:
        return None
    axes = {A.HorizontalFlip: 2, A.VerticalFlip: 1}
    flips = [(axes.get(type(t)), float(t.p)) for t in augment.transforms]
    return None if any(axis is None for axis, _ in flips) else flips


def make_sample_transform(preprocess: PreprocessCfg, augment=None) -> Callable[[np.ndarray], np.ndarray]:
    """A decoded image (HWC uint8, any size, 1 or 3 channels) -> the model's CHW uint8 input.

    Without ``augment`` this is exactly ``PreprocessCfg.prepare`` (resize, then channels), the step the Predictor
    and the edge kit run, so validation and test see bit for bit what inference sees. With ``augment`` the
    pipeline runs on the decoded image first (grey images are given the model's 3 channels first, so colour
    transforms apply); whatever size it leaves, ``prepare`` finishes, unless the pipeline already produced the
    model's size (a ``RandomResizedCrop``'s geometry is then kept, not cropped again).
    """
    if augment is None:
        return preprocess.prepare

    def transform(image: np.ndarray) -> np.ndarray:
        if image.shape[2] < preprocess.channels:
            image = preprocess.to_model_layout(image).transpose(1, 2, 0)
        image = augment(image=image)["image"]
        if image.ndim == 2:
            image = image[:, :, None]
        if image.shape[:2] == preprocess.image_size:
            return preprocess.to_model_layout(image)
        return preprocess.prepare(image)

    return transform
