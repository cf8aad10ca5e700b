"""The built-in "scenes" detection data set: Fashion-MNIST garments composited onto crops of real photographs.

No detection data set can be downloaded here, so the demo and the tests make one: each image is a crop of one of
scikit-image's bundled photographs with 1-8 Fashion-MNIST items pasted on it (train items for ``train``, the
official test items for ``val`` and ``test``, the test items split in two disjoint halves). Each item is pasted
through its own mask (its grey pixels as alpha, tinted with a random colour, its grey texture kept as shading),
never as a dark 28 x 28 tile, so a detector has to find the garment, not a square. Scales vary from 0.5x to 3x of
28 px (about 14-84 px, with a mild aspect jitter), boxes overlap little (IoU <= 0.3, and no box more than half
inside another; placements are retried, then the item shrunk), and every box is exact: the tight box of the item's
pasted mask (its whole mask, even where a later item covers part of it).

Images are 128 x 128 by default, chosen for the 2-core CPU: a ViT's cost grows with its token count (at patch 8,
256 tokens at 128 px against 400 at 160 px, attention quadratic in them), and the objects are sized in absolute
pixels, so a larger canvas only adds background at ~1.6x the compute per object. 128 still holds the largest item
(84 px) whole and 4.5 objects per image on average (about half the canvas), and divides by every stride up to 32.

``write_scenes`` writes a split as JPEG files plus COCO JSON (``bbox`` = x, y, w, h; ``area`` = w x h; category
ids are the Fashion-MNIST label + 1, so that readers exercise the id mapping), so users see the format their own
data takes; ``ScenesDataModule`` (``vitlab.data.detection``) reads them back through the COCO path. Generation is
deterministic by seed: image ``i`` of a split depends only on ``(seed, split, i)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from vitlab._fs import atomic_write_json
from vitlab.data.datasets import fashion_mnist_arrays, skimage_photos
from vitlab.errors import VitlabError
from vitlab.models.classify import FMNIST_LABELS

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SCENES_VERSION = 1  # bump when the generator changes, so cached sets are rewritten
MIN_SCALE, MAX_SCALE = 0.5, 3.0  # of Fashion-MNIST's 28 px
MAX_OBJECTS = 8
MAX_IOU, MAX_COVER = 0.3, 0.5  # between any two boxes: IoU, and the share of the smaller box inside the other
MASK_LEVEL = 16  # grey levels (of 255) below this are transparent: the item's mask is grey >= MASK_LEVEL


def _box_overlaps(box: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection / smaller area of ``box`` [4] against ``boxes`` [M, 4] (x1, y1, x2, y2)."""
    lt, rb = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area, areas = np.prod(box[2:] - box[:2]), np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + areas - inter), inter / np.minimum(area, areas)


def _item_patch(grey: np.ndarray, scale: float, aspect: float, flip: bool) -> np.ndarray:
    """A 28 x 28 grey item resized by ``scale`` (width x ``aspect``), cropped to its mask's tight box; float 0..1,
    pixels under ``MASK_LEVEL`` set to 0 so that the mask is exactly ``patch > 0``."""
    from PIL import Image

    h = max(2, round(28 * scale))
    w = max(2, round(28 * scale * aspect))
    a = np.asarray(Image.fromarray(grey).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    a = a[:, ::-1] if flip else a
    a[a < MASK_LEVEL] = 0
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    if not len(rows):
        return np.zeros((0, 0), np.float32)
    return np.ascontiguousarray(a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]) / 255.0


def _background(photo: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop of ``photo`` (a quarter of its shorter side or more), resized to ``size``, maybe
    flipped; HWC uint8."""
    from PIL import Image

    ph, pw = photo.shape[:2]
    short = min(ph, pw)
    side = int(rng.integers(min(short, max(size, short // 4)), short + 1))
    top, left = int(rng.integers(0, ph - side + 1)), int(rng.integers(0, pw - side + 1))
    crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.Resampling.BILINEAR)
    out = np.asarray(crop)
    return np.ascontiguousarray(out[:, ::-1] if rng.random() < 0.5 else out)


def scene_photos(size: int = 128) -> list[np.ndarray]:
    """scikit-image's photographs, those larger than needed shrunk so that the shorter side is at most 3 x
    ``size`` (background crops take a quarter of it or more, so they stay sharp and resizing them stays cheap)."""
    from PIL import Image

    photos = []
    for photo in skimage_photos():
        s = 3 * size / min(photo.shape[:2])
        if s < 1:
            hw = (max(1, round(photo.shape[1] * s)), max(1, round(photo.shape[0] * s)))
            photo = np.asarray(Image.fromarray(photo).resize(hw, Image.Resampling.BILINEAR))
        photos.append(photo)
    return photos


def _tint(rng: np.random.Generator) -> np.ndarray:
    """A random saturated, bright-ish colour, RGB 0..255."""
    import colorsys

    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.55, 1.0))) * 255.0


def compose_scene(rng: np.random.Generator, photos: list[np.ndarray], items: np.ndarray, labels: np.ndarray,
                  size: int = 128, max_tries: int = 30) -> dict[str, Any]:
    """One scene: ``{"image": HWC uint8, "boxes": float32 [M, 4] x1 y1 x2 y2, "labels": int64 [M] (Fashion-MNIST
    labels), "masks": bool [M, size, size]}`` with 1..``MAX_OBJECTS`` items drawn from ``items`` [N, 28, 28].

    Each placement is tried ``max_tries`` times at random positions; an item that does not fit is shrunk by 0.85
    (down to ``MIN_SCALE``) and tried again, and dropped only if it fits at no scale (the first always fits)."""
    canvas = _background(photos[int(rng.integers(len(photos)))], rng, size).astype(np.float32)
    boxes, out_labels, masks = np.zeros((0, 4), np.float32), [], []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        k = int(rng.integers(len(items)))
        scale = float(np.exp(rng.uniform(np.log(MIN_SCALE), np.log(MAX_SCALE))))
        aspect, flip, colour = float(np.exp(rng.uniform(-0.2, 0.2))), bool(rng.random() < 0.5), _tint(rng)
        placed = None
        while placed is None:
            patch = _item_patch(items[k], scale, aspect, flip)
            ph, pw = patch.shape
            for _ in range(max_tries if 0 < ph <= size and 0 < pw <= size else 0):
                x, y = int(rng.integers(0, size - pw + 1)), int(rng.integers(0, size - ph + 1))
                box = np.array([x, y, x + pw, y + ph], np.float32)
                if len(boxes):
                    iou, cover = _box_overlaps(box, boxes)
                    if iou.max() > MAX_IOU or cover.max() > MAX_COVER:
                        continue
                placed = (x, y, box)
                break
            if placed is None and scale <= MIN_SCALE:
                break
            scale = max(MIN_SCALE, scale * 0.85)
        if placed is None:
            continue
        x, y, box = placed
        alpha = np.clip(patch / 0.4, 0.0, 1.0)[:, :, None]  # grey >= 0.4 opaque: the garment reads as solid
        shade = colour * (0.35 + 0.65 * patch[:, :, None])  # the item's own texture, tinted
        region = canvas[y:y + ph, x:x + pw]
        canvas[y:y + ph, x:x + pw] = alpha * shade + (1.0 - alpha) * region
        mask = np.zeros((size, size), bool)
        mask[y:y + ph, x:x + pw] = patch > 0
        boxes = np.concatenate([boxes, box[None]])
        out_labels.append(int(labels[k]))
        masks.append(mask)
    return {"image": np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "boxes": boxes,
            "labels": np.array(out_labels, np.int64), "masks": np.array(masks, bool).reshape(-1, size, size)}


def split_items(split: str, seed: int = 0, data_dir: str | os.PathLike | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """The Fashion-MNIST items a split draws from: all 60k train items for ``train``; the official 10k test items,
    shuffled by ``seed`` and halved, for ``val`` (first half) and ``test`` (second half), so val and test share no
    item."""
    if split not in SPLITS:
        raise VitlabError(f"scenes split must be one of {SPLITS}, got {split!r}")
    images, labels = fashion_mnist_arrays("train" if split == "train" else "test", data_dir)
    pick = item_indices(split, len(labels), seed)
    return images[pick], labels[pick]


def item_indices(split: str, n: int, seed: int = 0) -> np.ndarray:
    """Which of the ``n`` items of its Fashion-MNIST split a scenes split uses (sorted): all for ``train``, and
    two disjoint halves of the test split, drawn by ``seed``, for ``val`` and ``test``."""
    if split == "train":
        return np.arange(n)
    order = np.random.default_rng([seed, 10]).permutation(n)
    return np.sort(order[:n // 2] if split == "val" else order[n // 2:])


def categories() -> list[dict[str, Any]]:
    """COCO categories of the scenes: id = Fashion-MNIST label + 1 (1..10), name = the Fashion-MNIST class."""
    return [{"id": i + 1, "name": name, "supercategory": "fashion"} for i, name in enumerate(FMNIST_LABELS)]


def _write_split(folder: Path, ann_path: Path, split: str, n: int, size: int, seed: int,
                 photos: list[np.ndarray], data_dir: str | os.PathLike | None) -> None:
    """``n`` scenes as ``folder/NNNNNN.jpg`` and their COCO JSON ``ann_path``. The images go to a temporary folder
    renamed into place when complete; the JSON is written atomically after them."""
    from PIL import Image

    items, labels = split_items(split, seed, data_dir)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        scene = compose_scene(np.random.default_rng([seed, SPLITS.index(split), i]), photos, items, labels, size)
        name = f"{i:06d}.jpg"
        Image.fromarray(scene["image"]).save(tmp / name, format="JPEG", quality=92)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for box, label in zip(scene["boxes"].tolist(), scene["labels"].tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    atomic_write_json(ann_path, {"info": {"description": f"vitlab scenes, {split} split", "version": SCENES_VERSION},
                                 "images": images, "annotations": annotations, "categories": categories()})


def scenes_paths(root: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """split -> (images folder, COCO JSON) under ``root``: ``root/<split>/`` and ``root/annotations/<split>.json``."""
    root = Path(root)
    return {s: (root / s, root / "annotations" / f"{s}.json") for s in SPLITS}


def existing_scenes(root: str | os.PathLike, split: str = "test") -> tuple[Path, Path]:
    """(images folder, COCO JSON) of a ``split`` of the scenes already written under ``root``, whatever sizes, image
    size and seed made them: for readers that must not (re)generate, which would replace a user's scenes. A
    VitlabError in one line when there are none, saying what to pass instead."""
    if split not in SPLITS:
        raise VitlabError(f"scenes split must be one of {SPLITS}, got {split!r}")
    images_dir, annotations = scenes_paths(root)[split]
    hint = ("pass --eval-data IMAGES_DIR ANNOTATIONS.json (held-out COCO data), or write the scenes first "
            "(vitlab fit --config configs/detect/scenes_demo.yaml)")
    try:
        params = json.loads((Path(root) / "params.json").read_text(encoding="utf-8"))
        count = int(params["sizes"][split])
    except (OSError, ValueError, KeyError, TypeError):
        raise VitlabError(f"no scenes under {root} (no {Path(root) / 'params.json'}): {hint}") from None
    if count < 1 or not images_dir.is_dir() or not annotations.is_file():
        raise VitlabError(f"the scenes under {root} have no {split} images ({annotations}): {hint}")
    return images_dir, annotations


def write_scenes(root: str | os.PathLike = "data/scenes", sizes: dict[str, int] | None = None, image_size: int = 128,
                 seed: int = 0, data_dir: str | os.PathLike | None = None) -> dict[str, tuple[Path, Path]]:
    """Generate the scenes under ``root`` once; returns ``scenes_paths(root)``.

    ``sizes`` (default train 6,000 / val 500 / test 1,000 images) x ``image_size`` x ``seed`` are recorded in
    ``root/params.json``, written last: a call with the same parameters finds it and reuses the files, other
    parameters rewrite them (the marker goes first, so an interrupted run is redone, never half-read)."""
    sizes = {"train": 6000, "val": 500, "test": 1000, **(sizes or {})}
    if set(sizes) - set(SPLITS) or any(int(v) < 0 for v in sizes.values()):
        raise VitlabError(f"scenes sizes must be non-negative counts for {SPLITS}, got {sizes}")
    if not 32 <= image_size <= 4096:
        raise VitlabError(f"scenes image_size must be in [32, 4096] (objects are up to 84 px), got {image_size}")
    root, params = Path(root), {"version": SCENES_VERSION, "sizes": sizes, "image_size": image_size, "seed": seed}
    marker, paths = root / "params.json", scenes_paths(root)
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / ".lock"):  # DDP ranks (and nodes on a shared disk) generate once, the others wait
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == params:
                return paths
        except (OSError, ValueError):
            pass
        marker.unlink(missing_ok=True)
        start, photos = time.perf_counter(), scene_photos(image_size)
        for split in SPLITS:
            _write_split(*paths[split], split, int(sizes[split]), image_size, seed, photos, data_dir)
        atomic_write_json(marker, params)
    log.warning("wrote the scenes data set to %s (%s images) in %.1f s", root, sum(sizes.values()),
                time.perf_counter() - start)
    return paths


@contextlib.contextmanager
def _exclusive(path: Path):
    """An exclusive advisory lock on ``path`` (``fcntl.flock``; without fcntl, e.g. on Windows, no lock)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
