"""``vitlab demo --task detect``: train the scenes detector (``configs/detect/scenes_demo.yaml``, ViTDet-style
pyramid + FCOS head) within its time budget, test it on the scenes' test split (COCO mAP, mAP50), export it to
ONNX (fp32 and int8, each gated on mAP50 against torch on that split), predict the test images as files with the
checkpoint and the ONNX model (JSONL, mAP50 of those records against the ground truth, detection-level agreement,
box overlays of a few), and print where everything went; exit 2 after the summary if a step failed.

``--limit N`` (smoke runs) generates N scenes per split under ``OUT/scenes`` (the shared ``data/scenes`` keeps
its sizes: other sizes would rewrite it) and trains on all N of them per epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from vitlab.demo import _export, export_and_predict_lines, finish, fit_and_test, path_lines

NUM_OVERLAYS = 6


def detect_demo(args) -> dict:
    out = Path(args.out)
    data = (yaml.safe_load(Path(args.config).read_text()) or {}).get("data", {}).get("init_args", {})
    root, test_size = Path(data.get("root", "data/scenes")), int(data.get("test_size", 1000))
    data_args = []
    if args.limit:
        root, test_size = out / "scenes", args.limit
        data_args = [f"--data.init_args.root={root}", *(f"--data.init_args.{s}_size={args.limit}"
                                                         for s in ("train", "val", "test")),
                     "--trainer.limit_train_batches=1.0"]
    summary, ckpt, log_dir = fit_and_test(args, data_args)
    from vitlab.data.scenes import scenes_paths

    images_dir, annotations = scenes_paths(root)["test"]
    summary["export"] = _export(ckpt, out / "export", test_size, eval_data=(str(images_dir), str(annotations)))
    summary["predict"] = _predict_scenes(ckpt, out, images_dir, annotations)
    nan = float("nan")
    lines = [f"test mAP50 {summary.get('test/map_50', nan):.2%}  mAP50:95 {summary.get('test/map', nan):.2%}  "
             f"mAP75 {summary.get('test/map_75', nan):.2%}  (scenes test split, {annotations})"]
    lines += path_lines([("checkpoint", ckpt), ("metrics", out / "demo_metrics.json"),
                         ("per-class AP table", log_dir / "per_class_ap.csv"),
                         ("precision-recall curve", log_dir / "pr_curve.png"),
                         ("test overlays", log_dir / "overlays"), ("logs (CSV + TensorBoard)", log_dir)])
    lines += export_and_predict_lines(
        summary, out,
        lambda rep: (f"mAP50 {rep.get('map50_onnx_pct', nan):.2f}% (torch {rep.get('map50_torch_pct', nan):.2f}%), "
                     f"detections matched {rep.get('matched_detections_pct', nan):.1f}%"),
        lambda p: [f"{'batch prediction':>26}: {p['images']} test images as files: mAP50 {p['map50_pct']:.2f}% "
                   f"(checkpoint) / {p['map50_onnx_pct']:.2f}% (ONNX), detections matched "
                   f"{p['matched_detections_pct']:.1f}%, {p['boxes_per_image']:.1f} boxes/image with score >= "
                   f"0.3, {p['errors']} error records -> {p['jsonl']}", f"{'box overlays':>26}: {p['overlays']}"])
    return finish(out, summary, lines, "vitlab demo (detection)")


def _predict_scenes(ckpt: Path, out: Path, images_dir: Path, annotations: Path) -> dict:
    """Predict the test images (as files) with the checkpoint and the ONNX model: the ONNX records as JSONL, the
    mAP50 of each model's records against the COCO ground truth, how many of the checkpoint's detections the ONNX
    model reproduces (``detection_parity``), and box overlays of the first ``NUM_OVERLAYS`` images."""
    from vitlab.inference import Predictor
    from vitlab.inference.writers import write_records
    from vitlab.onnx.detect import detection_parity
    from vitlab.tasks.detection import OVERLAY_MIN_SCORE

    onnx_path = out / "export" / "model.onnx"
    if not onnx_path.is_file():
        return {"error": "no exported fp32 model"}
    doc = json.loads(Path(annotations).read_text(encoding="utf-8"))
    files = [str(Path(images_dir) / im["file_name"]) for im in doc["images"]]
    checkpoint = Predictor.load(ckpt)
    labels = list(checkpoint.backend.preprocess.labels)
    torch_preds = checkpoint.predict(files, num_workers=0)
    onnx = Predictor.load(onnx_path)
    onnx_preds = onnx.predict(files, num_workers=0)
    write_records((p.to_dict() for p in onnx_preds), out / "predictions.jsonl")
    onnx.predict(files[:NUM_OVERLAYS], num_workers=0, overlays=out / "overlays")
    parity = detection_parity(_padded(torch_preds), _padded(onnx_preds))
    kept = sum(s >= OVERLAY_MIN_SCORE for p in onnx_preds for s in p.scores)
    return {"images": len(files), "errors": sum(p.error is not None for p in onnx_preds),
            "map50_pct": _map50(torch_preds, annotations, labels),
            "map50_onnx_pct": _map50(onnx_preds, annotations, labels),
            "matched_detections_pct": parity["matched_detections_pct"],
            "boxes_per_image": kept / max(1, len(files)), "jsonl": str(out / "predictions.jsonl"),
            "overlays": str(out / "overlays")}


def _padded(preds) -> dict[str, np.ndarray]:
    """Prediction records -> ``postprocess``-style padded arrays (``boxes``, ``scores``, ``labels``, ``num_dets``)."""
    n, m = len(preds), max([len(p.scores) for p in preds] + [1])
    out = {"boxes": np.zeros((n, m, 4), np.float32), "scores": np.zeros((n, m), np.float32),
           "labels": np.zeros((n, m), np.int64), "num_dets": np.array([len(p.scores) for p in preds], np.int64)}
    for i, p in enumerate(preds):
        k = len(p.scores)
        if k:
            out["boxes"][i, :k], out["scores"][i, :k], out["labels"][i, :k] = p.boxes, p.scores, p.class_ids
    return out


def _map50(preds, annotations: Path, labels: list[str]) -> float:
    """COCO mAP50 (%) of prediction records (original-image pixels; one per image of the COCO file, in its order)
    against that file, as ``vitlab test`` and ``vitlab predict --format coco`` results are scored."""
    from faster_coco_eval import COCO
    from vitlab_edge.files import coco_bbox, coco_category_ids

    from vitlab.tasks.detection import coco_evaluate

    gt = COCO(str(annotations))
    images = [int(im["id"]) for im in gt.dataset["images"]]
    category = coco_category_ids(gt.dataset, labels)
    results = [{"image_id": image_id, "category_id": category[k], "bbox": coco_bbox(box), "score": score}
               for p, image_id in zip(preds, images) for box, score, k in zip(p.boxes, p.scores, p.class_ids)]
    return float(coco_evaluate(gt, results, images, category)["map_50"]) * 100
