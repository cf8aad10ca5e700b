"""DetectionTask: COCO mAP through the task's own metric path, training on generated scenes through Lightning,
reload from the checkpoint alone, the test report (per-class AP, PR curve, overlays), and DDP on 2 CPU processes."""

import csv
import json

import lightning as L
import numpy as np
import pytest
import torch
from vitlab_edge.boxes import boxes_to_original

import vitlab
from tests.conftest import REPO, needs_fmnist
from vitlab.tasks.detection import CocoMAP

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# a detector small enough to train a few steps in seconds: 64 px, patch 8, width 32, 2 blocks, strides 8 and 16
TINY = dict(model_name="vitdet_scenes", num_classes=10, class_names=NAMES,
            model_options=dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, scale_factors=[1.0, 0.5],
                               fpn_channels=32, num_convs=1))


def _gt_batch():
    """Three 64 x 64 letterboxed inputs (originals 128 x 256, 64 x 64, 200 x 100) with boxes of several classes."""
    boxes = [torch.tensor([[4.0, 20.0, 30.0, 40.0], [34.0, 18.0, 60.0, 44.0]]),
             torch.tensor([[10.0, 10.0, 50.0, 30.0], [12.0, 36.0, 28.0, 60.0], [40.0, 40.0, 62.0, 62.0]]),
             torch.tensor([[20.0, 5.0, 40.0, 25.0]])]
    labels = [torch.tensor([0, 3]), torch.tensor([3, 7, 9]), torch.tensor([5])]
    return {"image": torch.zeros(3, 3, 64, 64, dtype=torch.uint8), "boxes": boxes, "labels": labels,
            "image_id": torch.tensor([1, 2, 3]), "orig_size": torch.tensor([[128, 256], [64, 64], [200, 100]]),
            "skipped": 0}


def _as_detections(batch, max_det=5, labels=None, boxes=None):
    """``postprocess``-shaped output (padded to ``max_det``) holding the batch's ground truth."""
    n = len(batch["boxes"])
    out = {"boxes": torch.zeros(n, max_det, 4), "scores": torch.zeros(n, max_det),
           "labels": torch.zeros(n, max_det, dtype=torch.long), "num_dets": torch.zeros(n, dtype=torch.long)}
    for i, (b, lab) in enumerate(zip(boxes or batch["boxes"], labels or batch["labels"])):
        out["boxes"][i, :len(b)], out["labels"][i, :len(b)] = b, lab
        out["scores"][i, :len(b)] = torch.linspace(0.9, 0.6, len(b))
        out["num_dets"][i] = len(b)
    return out


def _map(dets, batch, annotations=None):
    metric = CocoMAP(NAMES, annotations)
    metric.update(dets, batch)
    return metric, metric.compute()


def test_ground_truth_as_predictions_scores_map_one():
    batch = _gt_batch()
    metric, res = _map(_as_detections(batch), batch)
    assert res["map"] == pytest.approx(1.0) and res["map_50"] == pytest.approx(1.0)
    assert res["map_75"] == pytest.approx(1.0)
    # every class has its row; those without ground truth score -1 (COCO's "nothing to score")
    assert res["classes"].tolist() == list(range(10)) and res["num_gt"] == [1, 0, 0, 2, 0, 1, 0, 1, 0, 1]
    assert res["map_per_class"].tolist() == pytest.approx([1, -1, -1, 1, -1, 1, -1, 1, -1, 1])
    # the padding rows (label 0, score 0, empty boxes) never reach the metric
    dets = metric.dets[0].reshape(-1, CocoMAP.DET).numpy()
    assert np.bincount(dets[:, 1].astype(int)).tolist() == [0, 2, 3, 1]
    # both sides are scored in the original image's pixels (the letterbox undone): what `vitlab predict` writes
    expected = boxes_to_original(batch["boxes"][0].numpy(), (128, 256), (64, 64))
    assert expected[:, 2].max() > 64
    gts = metric.gts[0].reshape(-1, CocoMAP.GT).numpy()
    for stored in (gts[gts[:, 1] == 1, 2:6], dets[dets[:, 1] == 1, 2:6]):  # COCO's x, y, w, h
        assert np.allclose(np.concatenate([stored[:, :2], stored[:, :2] + stored[:, 2:]], 1), expected, atol=2e-3)


def test_wrong_labels_or_box_format_do_not_score_one():
    batch = _gt_batch()
    shifted = [(lab + 1) % 10 for lab in batch["labels"]]  # an off-by-one label mapping
    assert _map(_as_detections(batch, labels=shifted), batch)[1]["map"] == pytest.approx(0.0)
    as_xywh = [torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1) for b in batch["boxes"]]  # x, y, w, h given as xyxy
    assert _map(_as_detections(batch, boxes=as_xywh), batch)[1]["map"] < 0.5


def test_an_image_seen_twice_counts_once():
    """A DDP sampler pads a split with repeats: the second visit of an image adds neither detections nor truth."""
    batch = _gt_batch()
    metric = CocoMAP(NAMES)
    metric.update(_as_detections(batch), batch)
    metric.update(_as_detections(batch, labels=[(lab + 1) % 10 for lab in batch["labels"]]), batch)  # repeats
    res = metric.compute()
    assert res["map"] == pytest.approx(1.0) and res["num_gt"] == [1, 0, 0, 2, 0, 1, 0, 1, 0, 1]


def test_scores_against_the_annotation_file_as_coco_does(tmp_path):
    """With the split's file: a crowd box is an ignore region (a detection on it is no false positive) and a box
    the batch never had (too small to survive the letterbox) is ground truth still, as COCOeval counts them."""
    batch = _gt_batch()
    doc = {"images": [{"id": i, "file_name": f"{i}.png"} for i in (1, 2, 3, 4)],
           "categories": [{"id": k + 1, "name": n} for k, n in enumerate(NAMES)], "annotations": []}
    for image_id, (boxes, labels), hw in zip((1, 2, 3), zip(batch["boxes"], batch["labels"]), batch["orig_size"]):
        for b, k in zip(boxes_to_original(boxes.numpy(), tuple(hw.tolist()), (64, 64)).tolist(), labels.tolist()):
            doc["annotations"].append({"image_id": image_id, "category_id": k + 1, "bbox": [b[0], b[1], b[2] - b[0],
                                                                                           b[3] - b[1]]})
    doc["annotations"].append({"image_id": 2, "category_id": 4, "bbox": [0, 0, 40, 8], "iscrowd": 1})
    for k, a in enumerate(doc["annotations"]):
        a.update(id=k + 1, area=a["bbox"][2] * a["bbox"][3])
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(doc))
    dets = _as_detections(batch, max_det=6)
    dets["boxes"][1, 3], dets["labels"][1, 3], dets["scores"][1, 3], dets["num_dets"][1] = (
        torch.tensor([1.0, 1.0, 30.0, 4.0]), 3, 0.95, 4)  # inside the crowd region, the best score of its image
    assert _map(dets, batch, path)[1]["map"] == pytest.approx(1.0)  # ignored, not a false positive
    assert _map(dets, batch)[1]["map"] < 1.0  # against the batch's boxes (no crowd region) it is one
    doc["annotations"].append({"id": 99, "image_id": 1, "category_id": 1, "bbox": [3, 3, 1.5, 1.5], "area": 2.25})
    path.write_text(json.dumps(doc))  # a box of 1.5 px (0.4 px in the input): missed, so class 0 has recall 1/2
    _, res = _map(dets, batch, path)
    assert res["num_gt"][0] == 2 and res["mar_100_per_class"][0] == pytest.approx(0.5)
    with pytest.raises(vitlab.VitlabError, match="no image with id 3"):
        path.write_text(json.dumps({**doc, "images": doc["images"][:2]}))
        _map(dets, batch, path)


def test_class_table_of_a_one_class_torchmetrics_result(tmp_path):
    """torchmetrics gives ``classes`` (and the per-class values) as 0-d tensors when one class was seen: the table
    reads them (vitlab test crashed there on a one-class data set), and a class never seen gets None and 0."""
    from torchmetrics.detection import MeanAveragePrecision

    from vitlab.viz import detection_class_table, plot_pr_curves

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval", class_metrics=True,
                                  extended_summary=True)
    box = torch.tensor([[10.0, 10.0, 30.0, 40.0]])
    metric.update([{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}],
                  [{"boxes": box, "labels": torch.tensor([0])}])
    res = metric.compute()
    assert res["classes"].ndim == 0  # what torchmetrics does
    thresholds = [round(0.5 + 0.05 * i, 2) for i in range(10)]
    rows = detection_class_table(res, ["thing", "other"], [1, 0], thresholds)
    assert rows[0] == {"class": "thing", "class_id": 0, "ap": 1.0, "ap50": 1.0, "ap75": 1.0, "ar100": 1.0, "num_gt": 1}
    assert rows[1] == {"class": "other", "class_id": 1, "ap": None, "ap50": None, "ap75": None, "ar100": None,
                       "num_gt": 0}
    assert plot_pr_curves(res, ["thing", "other"], tmp_path / "pr.png", 0.5, thresholds).stat().st_size > 1000


def test_detection_overlay_draws_boxes_where_they_are(tmp_path):
    from PIL import Image

    from vitlab.viz import _palette, save_detection_overlay

    image = np.zeros((40, 60, 3), np.uint8)  # non-square
    path = save_detection_overlay(image, tmp_path / "o.png", np.array([[10.0, 20.0, 50.0, 35.0]]), np.array([3]),
                                  NAMES, np.array([0.9]), gt_boxes=np.array([[5.0, 5.0, 15.0, 15.0]]),
                                  gt_class_ids=np.array([1]), min_side=80)
    out = np.asarray(Image.open(path).convert("RGB"))
    assert out.shape == (80, 120, 3)  # upscaled x2
    assert tuple(out[35 * 2 - 1, 30 * 2]) == _palette(3)  # bottom edge of the prediction, in its class colour
    assert tuple(out[15 * 2, 10 * 2]) == (255, 255, 255)  # bottom edge of the ground truth, white


def test_layer_decay_covers_backbone_and_keeps_neck_and_head_at_full_lr():
    from vitlab.tasks import DetectionTask

    task = DetectionTask(**TINY, optim={"layer_decay": 0.5, "lr": 1.0})
    groups = task._param_groups()
    scales = sorted({g.get("lr_scale", 1.0) for g in groups})
    # timm's grouping: embeddings 0.25, block 0 0.5, block 1 (with the final norm the map goes through), neck, head 1
    assert scales == pytest.approx([0.25, 0.5, 1.0])
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in task.parameters()}


# --- through Lightning on generated scenes ---------------------------------------------------------------------
def _scenes(root, **kw):
    """Tiny scenes at 96 px for the 64 px detector: the letterbox scales by 2/3, so boxes must be mapped back."""
    from vitlab.data import ScenesDataModule

    return ScenesDataModule(root=str(root), train_size=48, val_size=16, test_size=16, image_size=96, batch_size=8,
                            **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fmnist_test):
    """The tiny detector after 2 epochs (12 steps) on 48 scenes, its trainer, run folder and scenes folder."""
    from lightning.pytorch.loggers import CSVLogger

    from vitlab.tasks import DetectionTask

    L.seed_everything(0, verbose=False)
    root, run = tmp_path_factory.mktemp("scenes"), tmp_path_factory.mktemp("run")
    task = DetectionTask(**TINY, optim={"lr": 3e-3, "warmup_epochs": 0.5})
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, default_root_dir=run, log_every_n_steps=1,
                        logger=CSVLogger(run, name="logs"), enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(task, _scenes(root))
    return {"task": task, "trainer": trainer, "run": run, "root": root}


def test_fit_logs_losses_and_map(trained):
    m = trained["trainer"].callback_metrics
    assert {"train/loss", "train/cls", "train/box", "train/ctr", "val/loss"} <= set(m)
    assert {"val/map", "val/map_50", "val/map_75", "val/map_small", "val/mar_100"} <= set(m)
    assert 0.0 <= float(m["val/map"]) <= float(m["val/map_50"]) <= 1.0 and torch.isfinite(m["train/loss"])


def test_reloads_from_checkpoint_alone_with_the_same_outputs(trained, tmp_path):
    task, trainer = trained["task"], trained["trainer"]
    trainer.save_checkpoint(tmp_path / "det.ckpt")
    again = vitlab.load(tmp_path / "det.ckpt")
    assert type(again).__name__ == "DetectionTask" and again.preprocess == task.preprocess
    assert again.hparams.model_options == TINY["model_options"] and again.preprocess.labels == tuple(NAMES)
    images = next(iter(trained["trainer"].datamodule.val_dataloader()))["image"]  # real scenes, letterboxed
    task.eval()
    with torch.no_grad():
        a, b = task(images), again(images)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    da, db = task.detect(images), again.detect(images)
    assert torch.equal(da["num_dets"], db["num_dets"]) and torch.allclose(da["boxes"], db["boxes"], atol=1e-4)


def test_test_writes_ap_tables_pr_curve_and_overlays(trained):
    task, trainer = trained["task"], trained["trainer"]
    res = trainer.test(task, _scenes(trained["root"]))[0]
    assert {"test/map", "test/map_50", "test/map_75", "test/map_small", "test/mar_100"} <= set(res)
    out = trained["run"] / "logs" / "version_0"
    rows = list(csv.DictReader((out / "per_class_ap.csv").open()))
    assert [r["class"] for r in rows] == NAMES and list(rows[0]) == ["class", "class_id", "ap", "ap50", "ap75",
                                                                     "ar100", "num_gt"]
    doc = json.loads((trained["root"] / "annotations" / "test.json").read_text())
    assert sum(int(r["num_gt"]) for r in rows) == len(doc["annotations"])  # every test box, counted once
    report = json.loads((out / "per_class_ap.json").read_text())
    assert report["summary"]["map"] == pytest.approx(res["test/map"], abs=1e-4)
    assert (out / "pr_curve.png").stat().st_size > 5000
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 8 and all(p.stat().st_size > 1000 for p in overlays)


def test_test_map_equals_coco_eval_of_predictions_in_original_pixels(trained, tmp_path):
    """What ``vitlab test`` reports is what COCO evaluation gives for the same detections mapped back to the
    original images and written as COCO results (category ids, not labels) against the split's own JSON."""
    from faster_coco_eval import COCO, COCOeval_faster

    task, data = trained["task"].eval(), _scenes(trained["root"])
    trainer = L.Trainer(accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    res = trainer.test(task, data, verbose=False)[0]
    results = []
    for batch in data.test_dataloader():
        dets = task.detect(batch["image"])
        for i, image_id in enumerate(batch["image_id"].tolist()):
            k = int(dets["num_dets"][i])
            src = tuple(batch["orig_size"][i].tolist())
            boxes = boxes_to_original(dets["boxes"][i, :k].numpy(), src, (64, 64))
            for box, score, label in zip(boxes, dets["scores"][i, :k].tolist(), dets["labels"][i, :k].tolist()):
                results.append({"image_id": image_id, "category_id": data.category_ids[label], "score": score,
                                "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]})
    assert results, "the tiny detector found nothing to score"
    gt = COCO(str(data.coco_annotations("test")))
    coco_eval = COCOeval_faster(gt, gt.loadRes(results), "bbox", print_function=lambda *a: None)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    assert coco_eval.stats[1] > 0  # something to compare: the 12-step detector finds a few objects
    for key, i in (("map", 0), ("map_50", 1), ("map_75", 2), ("map_small", 3), ("map_medium", 4), ("mar_100", 8)):
        assert res[f"test/{key}"] == pytest.approx(coco_eval.stats[i], rel=1e-3, abs=1e-6), key


def test_test_without_logger_writes_report_under_the_run_folder(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    trainer = L.Trainer(accelerator="cpu", default_root_dir=run, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.test(trained["task"], _scenes(trained["root"]), verbose=False)
    report = run / "test_report"
    assert (report / "per_class_ap.csv").is_file() and (report / "pr_curve.png").is_file()
    assert len(list((report / "overlays").glob("*.png"))) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing loose in the working directory


# --- DDP: 2 CPU processes (gloo) ------------------------------------------------------------------------------
def _metrics_csv(root):
    rows = list(csv.DictReader(next(root.glob("logs/version_*/metrics.csv")).open()))
    return {k: float(v) for r in rows for k, v in r.items() if v not in ("", None)}


@needs_fmnist
@pytest.mark.slow
def test_ddp_fit_and_test_compute_one_map_over_both_ranks(tmp_path):
    """fit + test on 2 processes: the logged test mAP is that of all 8 test scenes (4 per rank), the same figure a
    single process gets from the same checkpoint, and the report counts every test box once."""
    from tests.test_cli import run
    from vitlab.data.scenes import write_scenes

    scenes = tmp_path / "scenes"
    write_scenes(scenes, {"train": 16, "val": 8, "test": 8}, image_size=96)
    opts = json.dumps(TINY["model_options"])
    common = ["--config", str(REPO / "configs" / "detect" / "scenes_demo.yaml"), f"--data.init_args.root={scenes}",
              "--data.init_args.train_size=16", "--data.init_args.val_size=8", "--data.init_args.test_size=8",
              "--data.init_args.image_size=96", "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4",
              f"--model.init_args.model_options={opts}", "--model.init_args.optim.lr=3e-3", "--trainer.max_epochs=2",
              "--trainer.limit_train_batches=null", "--trainer.enable_progress_bar=false"]
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2"]
    run(["fit", *common, *ddp, f"--trainer.default_root_dir={tmp_path / 'fit'}"], REPO)
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4  # 16 scenes / (2 ranks x 4) x 2 epochs
    assert "val/map" in _metrics_csv(tmp_path / "fit")
    run(["test", *common, *ddp, f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={tmp_path / 'ddp'}"], REPO)
    run(["test", *common, f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={tmp_path / 'one'}"], REPO)
    both, one = _metrics_csv(tmp_path / "ddp"), _metrics_csv(tmp_path / "one")
    assert one["test/mar_100"] > 0  # something to compare
    for key in ("test/map", "test/map_50", "test/mar_100"):
        assert both[key] == pytest.approx(one[key], abs=1e-6), key
    report = json.loads(next((tmp_path / "ddp").glob("logs/version_*/per_class_ap.json")).read_text())
    doc = json.loads((scenes / "annotations" / "test.json").read_text())
    assert sum(r["num_gt"] for r in report["classes"]) == len(doc["annotations"])
    assert report["summary"]["map"] == pytest.approx(both["test/map"], abs=1e-4)
