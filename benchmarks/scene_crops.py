"""An RGB image-folder classification set cut from the built-in scenes: every annotated garment of the scenes'
train and val splits, cropped with a margin from its photo-background scene, as ``OUT/{train,val}/<class>/<id>.jpg``
(torchvision's ImageFolder layout). It stands in for "your own photos" where the ImageFolder template
(``configs/classify/imagefolder.yaml``) needs real RGB data offline, e.g. to measure int8 export accuracy on it.
Usage: ``python benchmarks/scene_crops.py [--scenes data/scenes] [--out data/scene_crops] [--margin 0.15]
[--limit N]`` (writes the scenes first when they are missing; a split already written is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from PIL import Image  # noqa: E402

from vitlab.data.scenes import write_scenes  # noqa: E402


def write_crops(images_dir: Path, ann_path: Path, out: Path, margin: float, limit: int | None) -> int:
    """Crops of one split into ``out/<class>/``, written beside ``out`` and renamed into place; the crop count."""
    coco = json.loads(ann_path.read_text())
    names = {c["id"]: c["name"].replace("/", "-") for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    anns = coco["annotations"][:limit]
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    for name in names.values():
        (tmp / name).mkdir()
    by_image: dict[int, list[dict]] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    for image_id, boxes in by_image.items():
        with Image.open(images_dir / files[image_id]) as im:
            rgb = im.convert("RGB")
        for a in boxes:
            x, y, w, h = a["bbox"]
            dx, dy = w * margin, h * margin
            box = (max(0, round(x - dx)), max(0, round(y - dy)), min(rgb.width, round(x + w + dx)),
                   min(rgb.height, round(y + h + dy)))
            rgb.crop(box).save(tmp / names[a["category_id"]] / f"{a['id']:07d}.jpg", quality=95)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return len(anns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default="data/scenes")
    ap.add_argument("--out", default="data/scene_crops")
    ap.add_argument("--margin", type=float, default=0.15, help="added on each side, as a fraction of the box")
    ap.add_argument("--limit", type=int, default=None, help="at most this many crops per split")
    args = ap.parse_args()
    paths = write_scenes(args.scenes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        if (out / split).is_dir():
            print(f"{out / split}: already there, kept")
            continue
        images_dir, ann_path = paths[split]
        print(f"{out / split}: {write_crops(images_dir, ann_path, out / split, args.margin, args.limit)} crops")


if __name__ == "__main__":
    main()
