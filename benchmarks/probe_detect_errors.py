"""What a detector's mAP50 loses to classification and what to localisation (issue 26): COCO's evaluation of a
results file as ``vitlab test`` scores it, then the same detections with the class of every detection that overlaps a
ground-truth box (IoU >= 0.5) replaced by that box's class ("oracle classes": what perfect classification of the same
boxes would score), and per ground-truth box whether any detection found it (IoU >= 0.5) and whether the best-scoring
one of those named the right class. ``--classifier CKPT`` also scores a two-stage variant: the detections after
class-agnostic NMS, each box cropped from the image (a grey square around it, 28x28) and named by a garment
classifier (its 3 best classes, score = detection score x class probability). Prints one JSON line with the machine.

    vitlab predict runs/scenes_demo/checkpoints/last.ckpt data/scenes/test --out res.json --format coco \\
        --annotations data/scenes/annotations/test.json
    python benchmarks/probe_detect_errors.py res.json data/scenes/annotations/test.json \\
        --classifier runs/demo/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import copy
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from faster_coco_eval import COCO
from machine import machine_info  # benchmarks/machine.py: the machine block of every result
from PIL import Image
from torchvision.ops import batched_nms, box_convert, box_iou, nms

from vitlab.tasks.detection import coco_evaluate


def _xyxy(rows: list[dict]) -> torch.Tensor:
    """COCO rows' ``bbox`` (x, y, w, h) as ``[N, 4]`` x1, y1, x2, y2."""
    return box_convert(torch.tensor([r["bbox"] for r in rows], dtype=torch.float64).reshape(-1, 4), "xywh", "xyxy")


@torch.no_grad()
def _classified(gt: COCO, by_image: dict, images: Path, classifier: str, cats: list[int], nms_iou: float) -> list[dict]:
    """The two-stage variant: class-agnostic NMS of each image's detections, then every kept box cropped (a grey
    square around it, resized to 28x28) and named by ``classifier``'s 3 best classes (score = detection score x
    probability)."""
    import vitlab

    model = vitlab.load(classifier).eval()
    rows = []
    for i, dets in by_image.items():
        boxes = _xyxy(dets)
        keep = nms(boxes, torch.tensor([d["score"] for d in dets], dtype=torch.float64), nms_iou).tolist()
        img = Image.open(images / gt.imgs[i]["file_name"]).convert("L")
        crops = []
        for k in keep:
            x1, y1, x2, y2 = boxes[k].tolist()
            cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1, 1.0) / 2  # a square, as the items were
            crop = img.crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
            crops.append(np.asarray(crop.resize((28, 28), Image.BOX)))
        if not crops:
            continue
        probs = model(torch.from_numpy(np.stack(crops))[:, None]).softmax(1)  # [B, 10]
        p, c = probs.topk(3, dim=1)
        for k, pk, ck in zip(keep, p.tolist(), c.tolist()):
            rows += [dict(dets[k], category_id=cats[cls], score=dets[k]["score"] * prob) for prob, cls in zip(pk, ck)]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="COCO results JSON (vitlab predict --format coco)")
    ap.add_argument("annotations", help="the split's ground-truth COCO JSON")
    ap.add_argument("--iou", type=float, default=0.5, help="overlap that counts as found")
    ap.add_argument("--nms", type=float, default=0.6, help="per-class NMS after the oracle relabelling (the "
                    "duplicates it makes of one box)")
    ap.add_argument("--classifier", default=None, help="a garment classifier checkpoint for the two-stage variant")
    ap.add_argument("--images", default=None, help="the split's image folder (default: annotations/../<split>)")
    args = ap.parse_args()
    gt = COCO(args.annotations)
    results = json.loads(Path(args.results).read_text())
    cats = sorted(gt.getCatIds())
    names = {c["id"]: c["name"] for c in gt.loadCats(cats)}
    image_ids = sorted(gt.getImgIds())
    by_image = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)

    oracle, found, right, confusions = [], 0, 0, Counter()
    n_gt = 0
    for i in image_ids:
        gts = [a for a in gt.imgToAnns.get(i, []) if not a.get("iscrowd", 0)]
        dets = sorted(by_image.get(i, []), key=lambda r: -r["score"])
        n_gt += len(gts)
        if not dets:
            continue
        if not gts:
            oracle += dets
            continue
        boxes, scores = _xyxy(dets), torch.tensor([d["score"] for d in dets], dtype=torch.float64)
        iou = box_iou(boxes, _xyxy(gts))  # [D, G]
        best_iou, best_gt = iou.max(1)
        relabelled = [dict(d, category_id=gts[g]["category_id"]) if v >= args.iou else dict(d)
                      for d, v, g in zip(dets, best_iou.tolist(), best_gt.tolist())]
        keep = batched_nms(boxes, scores, torch.tensor([d["category_id"] for d in relabelled]), args.nms)
        oracle += [relabelled[k] for k in keep.tolist()]
        for g, a in enumerate(gts):
            hits = (iou[:, g] >= args.iou).nonzero().flatten().tolist()  # dets are sorted best first
            if hits:
                found += 1
                said = dets[hits[0]]["category_id"]
                right += said == a["category_id"]
                if said != a["category_id"]:
                    confusions[f"{names[a['category_id']]} -> {names[said]}"] += 1

    def summary(rows: list[dict]) -> dict:
        out = coco_evaluate(copy.deepcopy(gt), rows, image_ids, cats)
        return {"map_50": round(float(out["map_50"]), 4), "map": round(float(out["map"]), 4),
                "map_50_per_class": {names[c]: round(float(v), 4) for c, v in zip(
                    cats, out["precision"][0, :, :, 0, -1].clamp(min=0).mean(0).tolist())}}

    two_stage = {}
    if args.classifier:
        ann = Path(args.annotations)
        images = Path(args.images) if args.images else ann.parent.parent / ann.stem
        two_stage = {"garment_classifier": summary(_classified(gt, by_image, images, args.classifier, cats,
                                                               args.nms)), "classifier": args.classifier}
    print(json.dumps({
        "machine": machine_info(), "results": args.results, "ground_truth_boxes": n_gt, "detections": len(results),
        "as_scored": summary(results), "oracle_classes": summary(oracle), **two_stage,
        f"found_pct (any detection, IoU >= {args.iou})": round(100 * found / max(n_gt, 1), 2),
        "right_class_pct_of_found (the best-scoring detection there)": round(100 * right / max(found, 1), 2),
        "top_confusions": dict(confusions.most_common(8))}))


if __name__ == "__main__":
    main()
