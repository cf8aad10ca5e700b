"""Detection data: COCO JSON (what labelling tools export) read into samples and batches for the detection task.

A sample is ``(HWC uint8 image, float32 [M, 4] boxes x1 y1 x2 y2 in its pixels, int64 [M] labels, image id)``.
Training runs the augment pipeline with boxes (``load_pipeline(..., bboxes=True)``: ``BBOX_PARAMS``, declared
once), then every split the PreprocessCfg letterbox (``PreprocessCfg.prepare``), and the boxes follow with
``vitlab_edge.boxes.boxes_to_input``, the rule the Predictor and the edge kit use to map them back.

COCO categories keep their ids (any integers) in ``category_ids``; labels are their positions, sorted by id, so
``category_ids[label]`` is the COCO id again. Reading an annotation file into training targets:

- images without annotations are kept: negatives;
- ``iscrowd: 1`` boxes are left out of the targets, as torchvision's and detectron2's COCO loaders do: a crowd box
  marks a region of many instances, not one object to regress to, so the detector never learns it as an object;
- boxes are clipped to the image (``width`` / ``height`` of the JSON, then the decoded image), and those under
  1 px wide or high after clipping (or after the letterbox, in ``DetectionSamples``) are left out: there is no
  point to learn them from; each file logs what it left out once;
- unreadable image files are skipped and counted (the batch's ``skipped``), or raise with ``on_bad_image: raise``.

Evaluation does not use these targets: ``vitlab test`` and validation score against the split's annotation file
itself (``coco_annotations``, ``vitlab.tasks.detection.CocoMAP``), where crowd boxes are COCO's ignore regions and
every other box, however small, is ground truth.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from vitlab_edge.boxes import boxes_to_input

from vitlab._fs import atomic_write_json
from vitlab.data.datamodules import TransformedDataset, VitlabDataModule
from vitlab.data.scenes import write_scenes
from vitlab.errors import VitlabError
from vitlab.inference.io import ImageReadError, read_image
from vitlab.preprocess import PreprocessCfg

log = logging.getLogger(__name__)


@dataclass
class CocoImage:
    path: str
    image_id: int
    boxes: np.ndarray  # float32 [M, 4] x1, y1, x2, y2 in the image's pixels
    labels: np.ndarray  # int64 [M], contiguous 0..K-1


@dataclass
class CocoSplit:
    """One COCO file read: its images (``CocoImage``), categories and what reading it dropped."""

    annotations: Path
    images_dir: Path
    images: list[CocoImage]
    category_ids: list[int]
    class_names: list[str]
    dropped: dict[str, int] = field(default_factory=dict)


def _entries(doc: dict, key: str, needed: tuple[str, ...], path: Path) -> list[dict]:
    entries = doc.get(key)
    if not isinstance(entries, list):
        raise VitlabError(f"COCO annotations {path}: missing key '{key}' (a list)" if entries is None
                          else f"COCO annotations {path}: '{key}' must be a list")
    for i, e in enumerate(entries):
        missing = [k for k in needed if not isinstance(e, dict) or k not in e]
        if missing:
            raise VitlabError(f"COCO annotations {path}: {key}[{i}] has no '{missing[0]}'")
    return entries


def read_coco(annotations: str | os.PathLike, images_dir: str | os.PathLike,
              category_ids: list[int] | None = None) -> CocoSplit:
    """Read a COCO detection file whose ``file_name``s are relative to ``images_dir``; errors name the file.

    ``category_ids``: the training split's ids, which a validation / test file must have too (its labels then
    mean the same classes)."""
    path, images_dir = Path(annotations), Path(images_dir)
    if not path.is_file():
        raise VitlabError(f"COCO annotations {path} do not exist")
    if not images_dir.is_dir():
        raise VitlabError(f"image folder {images_dir} (for {path.name}) does not exist")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise VitlabError(f"COCO annotations {path}: invalid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise VitlabError(f"COCO annotations {path}: expected an object with images, annotations, categories")
    cats = sorted(_entries(doc, "categories", ("id", "name"), path), key=lambda c: c["id"])
    ids = [int(c["id"]) for c in cats]
    if len(set(ids)) != len(ids) or not ids:
        raise VitlabError(f"COCO annotations {path}: category ids must be unique and at least one, got {ids}")
    if category_ids is not None and ids != list(category_ids):
        raise VitlabError(f"COCO annotations {path}: category ids {ids} differ from the training split's "
                          f"{list(category_ids)}")
    label_of = {cid: i for i, cid in enumerate(ids)}
    images = _entries(doc, "images", ("id", "file_name"), path)
    info = {int(im["id"]): im for im in images}
    if len(info) != len(images):
        raise VitlabError(f"COCO annotations {path}: image ids are not unique")
    boxes: dict[int, list] = {i: [] for i in info}
    dropped = {"crowd": 0, "degenerate": 0, "clipped": 0}
    for i, a in enumerate(_entries(doc, "annotations", ("image_id", "category_id", "bbox"), path)):
        image_id, cat = int(a["image_id"]), int(a["category_id"])
        if image_id not in info:
            raise VitlabError(f"COCO annotations {path}: annotations[{i}] refers to image_id {image_id}, not in images")
        if cat not in label_of:
            raise VitlabError(f"COCO annotations {path}: annotations[{i}] has category_id {cat}, not in categories")
        bbox = a["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise VitlabError(f"COCO annotations {path}: annotations[{i}].bbox must be [x, y, w, h], got {bbox}")
        if a.get("iscrowd", 0):
            dropped["crowd"] += 1
            continue
        x, y, w, h = (float(v) for v in bbox)
        box = np.array([x, y, x + w, y + h], np.float32)
        im = info[image_id]
        if "width" in im and "height" in im:
            clipped = clip_boxes(box[None], (int(im["height"]), int(im["width"])))[0]
            dropped["clipped"] += int(not np.array_equal(clipped, box))
            box = clipped
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            dropped["degenerate"] += 1
            continue
        boxes[image_id].append((box, label_of[cat]))
    records = [CocoImage(str(images_dir / im["file_name"]), int(im["id"]),
                         np.array([b for b, _ in boxes[int(im["id"])]], np.float32).reshape(-1, 4),
                         np.array([lbl for _, lbl in boxes[int(im["id"])]], np.int64)) for im in images]
    if any(dropped.values()):
        log.warning("COCO annotations %s: %d crowd boxes (iscrowd: 1) left out of the training targets, %d boxes "
                    "clipped to the image, %d degenerate boxes (under 1 px after clipping) left out of them; "
                    "evaluation reads the file as it is",
                    path, dropped["crowd"], dropped["clipped"], dropped["degenerate"])
    return CocoSplit(path, images_dir, records, ids, [str(c["name"]) for c in cats], dropped)


def clip_boxes(boxes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Boxes ``[M, 4]`` x1 y1 x2 y2 clipped to an ``hw`` image (x2 < x1 after clipping stays degenerate)."""
    hi = np.array([hw[1], hw[0], hw[1], hw[0]], np.float32)
    return np.clip(boxes, 0.0, hi).astype(np.float32)


def _valid(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)


class CocoDetectionDataset(Dataset):
    """COCO images as ``(image, boxes, labels, image_id)``; unreadable files yield ``None`` or raise."""

    def __init__(self, images: list[CocoImage], on_bad_image: str = "skip") -> None:
        if on_bad_image not in ("skip", "raise"):
            raise VitlabError(f"on_bad_image must be 'skip' or 'raise', got {on_bad_image!r}")
        self.images, self.on_bad_image = images, on_bad_image

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
        rec = self.images[i]
        try:
            image = read_image(rec.path)
        except ImageReadError as e:
            if self.on_bad_image == "raise":
                raise VitlabError(f"bad image in dataset: {e} (set on_bad_image: skip to skip such files)") from None
            log.warning("skipping unreadable image %s", e)
            return None
        boxes = clip_boxes(rec.boxes, image.shape[:2])  # the decoded size rules (a JSON without width/height)
        keep = _valid(boxes)
        return image, boxes[keep], rec.labels[keep], rec.image_id


class DetectionSamples(TransformedDataset):
    """Samples as model inputs: ``augment`` (with boxes) when given, then the letterbox to the model's size.

    Yields ``(CHW uint8 image, float32 [M, 4] boxes in input pixels, int64 [M] labels, image id, (h, w) of the
    decoded original)``; ``None`` (an unreadable file) passes through for ``collate_detection`` to count."""

    def __init__(self, base: Dataset, preprocess: PreprocessCfg, augment=None) -> None:
        if preprocess.resize != "letterbox":
            raise VitlabError(f"detection needs preprocess.resize: letterbox (boxes map back exactly), got "
                              f"{preprocess.resize!r}")
        super().__init__(base)
        self.preprocess, self.augment = preprocess, augment

    def transform_item(self, item: Any) -> Any:
        image, boxes, labels, image_id = item
        orig_hw = image.shape[:2]
        pre = self.preprocess
        if self.augment is not None:
            if image.shape[2] < pre.channels:  # grey file, colour model: colour transforms then apply
                image = pre.to_model_layout(image).transpose(1, 2, 0)
            out = self.augment(image=image, bboxes=boxes, labels=labels)
            image = out["image"] if out["image"].ndim == 3 else out["image"][:, :, None]
            boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], np.int64).reshape(-1)
        boxes = clip_boxes(boxes_to_input(boxes, image.shape[:2], pre.image_size), pre.image_size)
        keep = _valid(boxes)
        return pre.prepare(image), boxes[keep], labels[keep], image_id, orig_hw


def collate_detection(samples: list) -> dict[str, Any]:
    """-> ``{"image": uint8 [N, C, H, W], "boxes": N x float32 [M_i, 4] (x1 y1 x2 y2, input pixels), "labels":
    N x int64 [M_i], "image_id": int64 [N], "orig_size": int64 [N, 2] (h, w), "skipped": unreadable samples}``."""
    good = [s for s in samples if s is not None]
    if not good:
        return {"image": torch.empty(0, dtype=torch.uint8), "boxes": [], "labels": [],
                "image_id": torch.empty(0, dtype=torch.long), "orig_size": torch.empty((0, 2), dtype=torch.long),
                "skipped": len(samples)}
    return {"image": torch.from_numpy(np.stack([s[0] for s in good])),
            "boxes": [torch.from_numpy(s[1]) for s in good],
            "labels": [torch.from_numpy(s[2]) for s in good],
            "image_id": torch.tensor([s[3] for s in good], dtype=torch.long),
            "orig_size": torch.tensor([list(s[4]) for s in good], dtype=torch.long),
            "skipped": len(samples) - len(good)}


class CocoDetectionDataModule(VitlabDataModule):
    """Your own detection data as COCO JSON: an images folder plus its annotation file per split.

    Exposes ``num_classes``, ``class_names`` (category names, by id), ``category_ids`` (label -> COCO id),
    ``coco_annotations(split)`` (the ground-truth JSON of a split) and ``coco_images(split)`` (its folder)."""

    augment_bboxes = True
    collate_fn = staticmethod(collate_detection)

    def __init__(self, train_images: str, train_annotations: str, val_images: str | None = None,
                 val_annotations: str | None = None, test_images: str | None = None,
                 test_annotations: str | None = None, on_bad_image: str = "skip", **kwargs: Any) -> None:
        """
        Args:
            train_images: the training images folder (COCO ``file_name``s are relative to it).
            train_annotations: the training COCO JSON (``bbox`` = x, y, w, h in pixels).
            val_images: validation images (default: ``val_fraction`` of the training images held out).
            val_annotations: validation COCO JSON, with the training categories.
            test_images: test images (default: ``test`` runs on the validation split).
            test_annotations: test COCO JSON, with the training categories.
            on_bad_image: ``skip`` (count and warn) or ``raise`` for unreadable files.
        """
        super().__init__(**kwargs)
        self._use_coco({"train": (train_images, train_annotations), "val": (val_images, val_annotations),
                        "test": (test_images, test_annotations)}, on_bad_image)

    def _use_coco(self, splits: dict[str, tuple[str | None, str | None]], on_bad_image: str) -> None:
        if on_bad_image not in ("skip", "raise"):
            raise VitlabError(f"data.on_bad_image must be 'skip' or 'raise', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self._coco: dict[str, CocoSplit | None] = {}
        for split in ("train", "val", "test"):
            images, annotations = splits[split]
            if (images is None) != (annotations is None):
                raise VitlabError(f"data.{split}_images and data.{split}_annotations go together: give both or "
                                  f"neither (got {split}_images={images}, {split}_annotations={annotations})")
            if split == "train" and images is None:
                raise VitlabError("data.train_images and data.train_annotations are required")
            train = self._coco.get("train")
            self._coco[split] = (read_coco(annotations, images, train.category_ids if train else None)
                                 if images is not None else None)
        self.class_names = list(self._coco["train"].class_names)
        self.category_ids: list[int] = list(self._coco["train"].category_ids)

    # --- VitlabDataModule hooks ---------------------------------------------------------------------
    def _wrap(self, samples: Dataset, preprocess: PreprocessCfg, augment) -> Dataset:
        return DetectionSamples(samples, preprocess, augment)

    def split_set(self, split: str) -> CocoDetectionDataset | None:
        coco = self._coco[split]
        return CocoDetectionDataset(coco.images, self.on_bad_image) if coco else None

    # --- the ground truth as COCO files ------------------------------------------------------------
    def coco_images(self, split: str) -> Path:
        """The images folder of ``split`` (``train``, ``val``, ``test``; a missing split: where it comes from)."""
        coco = self._coco[self._source(split)]
        return (coco or self._coco["train"]).images_dir

    def coco_annotations(self, split: str) -> Path:
        """The ground-truth COCO JSON of ``split`` as given; for a validation split held out of the training data
        (and a test split that falls back on it), a JSON of just those images, written once to a cache folder."""
        split = self._source(split)
        if self._coco[split] is not None:
            return self._coco[split].annotations
        train = self._coco["train"]
        ids = {train.images[i].image_id for i in self._train_val()[1].indices}  # type: ignore[attr-defined]
        key = f"{train.annotations.resolve()}:{train.annotations.stat().st_mtime_ns}:{self.seed}:{self.val_fraction}"
        out = Path(tempfile.gettempdir()) / "vitlab-coco" / hashlib.sha1(key.encode()).hexdigest()[:16] / "val.json"
        if not out.is_file():
            doc = json.loads(train.annotations.read_text(encoding="utf-8"))
            doc["images"] = [im for im in doc["images"] if int(im["id"]) in ids]
            doc["annotations"] = [a for a in doc["annotations"] if int(a["image_id"]) in ids]
            atomic_write_json(out, doc)
        return out

    def _source(self, split: str) -> str:
        if split not in ("train", "val", "test"):
            raise VitlabError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return "val" if split == "test" and self._coco["test"] is None else split


class ScenesDataModule(CocoDetectionDataModule):
    """The built-in "scenes" data set (``vitlab.data.scenes``): Fashion-MNIST garments on crops of real photos,
    10 classes, written once under ``root`` as images + COCO JSON and read back through the COCO path.

    Setting ``train_images`` + ``train_annotations`` points it at other COCO data instead (nothing is generated;
    val / test then come from their own overrides, or are held out / fall back as for ``CocoDetectionDataModule``);
    ``val_*`` / ``test_*`` alone replace just that split of the scenes."""

    def __init__(self, root: str = "data/scenes", train_size: int = 6000, val_size: int = 500, test_size: int = 1000,
                 image_size: int = 128, scenes_seed: int = 0, data_dir: str | None = None,
                 train_images: str | None = None, train_annotations: str | None = None, val_images: str | None = None,
                 val_annotations: str | None = None, test_images: str | None = None,
                 test_annotations: str | None = None, on_bad_image: str = "skip", **kwargs: Any) -> None:
        """
        Args:
            root: where the scenes are written (``root/<split>/``, ``root/annotations/<split>.json``).
            train_size: training scenes.
            val_size: validation scenes (items disjoint from the test scenes').
            test_size: test scenes.
            image_size: the scenes' side in pixels (objects are 14-84 px).
            scenes_seed: the generator's seed.
            data_dir: where Fashion-MNIST is (default: ``$VITLAB_DATA``, then Debian's package).
            train_images: other COCO data's training images instead of the scenes.
            train_annotations: other COCO data's training JSON.
            val_images: validation images replacing the scenes' validation split.
            val_annotations: their COCO JSON.
            test_images: test images replacing the scenes' test split.
            test_annotations: their COCO JSON.
            on_bad_image: ``skip`` (count and warn) or ``raise`` for unreadable files.
        """
        self.root = root
        if train_images is None and train_annotations is None:  # the scenes, save the splits given
            sizes = {"train": train_size, "val": val_size, "test": test_size}
            paths = {s: tuple(str(p) for p in pair) if sizes[s] > 0 else (None, None)
                     for s, pair in write_scenes(root, sizes, image_size, scenes_seed, data_dir).items()}
            train_images, train_annotations = paths["train"]
            if val_images is None and val_annotations is None:
                val_images, val_annotations = paths["val"]
            if test_images is None and test_annotations is None:
                test_images, test_annotations = paths["test"]
        super().__init__(train_images=train_images, train_annotations=train_annotations, val_images=val_images,
                         val_annotations=val_annotations, test_images=test_images, test_annotations=test_annotations,
                         on_bad_image=on_bad_image, **kwargs)
