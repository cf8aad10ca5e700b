"""A user's own COCO detection data on every path (issue 23): ``vitlab fit`` -> ``vitlab test`` (COCO mAP and the
per-class report) -> ``vitlab export`` -> ``vitlab predict --format coco``, on a one-class set with crowd boxes, boxes
that the letterbox shrinks below a pixel and images without boxes, and on a set where one class never appears in
the test split; and ``vitlab export`` without eval data leaving a user's scenes as they are.

The data sets are real pixels: Fashion-MNIST garments pasted on crops of scikit-image's photographs (the scenes'
generator, ``vitlab.data.scenes.compose_scene``), written as PNG files + COCO JSON the way a labelling tool would."""

import csv
import hashlib
import json

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from vitlab.errors import VitlabError

SIZE = 128  # the images' side; the detector's input is 64: the letterbox halves every box
# the configs' detector (vitdet_scenes_cs: conv stem + ViTDet pyramid + FCOS head) cut down to train in seconds
TINY_OPTS = dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, scale_factors=[1.0, 0.5],
                 fpn_channels=32, num_convs=1)
FOOTWEAR = (5, 7, 9)  # Fashion-MNIST's sandal, sneaker, ankle boot


@pytest.fixture(autouse=True)
def one_thread():
    """These detectors are tiny: one intra-op thread runs them several times faster than two that wait on each other
    on a shared 2-core machine (restored after each test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _scenes(n, seed, items, labels, photos):
    from vitlab.data.scenes import compose_scene

    return [compose_scene(np.random.default_rng([seed, i]), photos, items, labels, SIZE) for i in range(n)]


def _write_coco(folder, name, scenes, categories, category_of, negatives=0, crowd=(), tiny=(), photos=None):
    """``scenes`` as ``folder/<name>/NNN.png`` + ``folder/<name>.json``; ``negatives`` more images with no box (photo
    crops); on the scenes numbered in ``crowd`` the two first items become ONE ``iscrowd: 1`` box (their union, as
    COCO labels a group), and those in ``tiny`` get a 1.5 px box (0.75 px in the detector's input) as well."""
    from PIL import Image

    from vitlab.data.scenes import _background

    images_dir = folder / name
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    pictures = [s["image"] for s in scenes]
    rng = np.random.default_rng(len(scenes))
    pictures += [_background(photos[k % len(photos)], rng, SIZE) for k in range(negatives)]

    def add(image_id, bbox, category, crowd_box=0):
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                            "bbox": [round(float(v), 2) for v in bbox], "area": float(bbox[2] * bbox[3]),
                            "iscrowd": crowd_box})

    for i, picture in enumerate(pictures):
        image_id = 100 + i  # ids that are not positions
        Image.fromarray(picture).save(images_dir / f"{i:03d}.png")
        images.append({"id": image_id, "file_name": f"{i:03d}.png", "width": SIZE, "height": SIZE})
        if i >= len(scenes):
            continue
        boxes, labels = scenes[i]["boxes"], scenes[i]["labels"]
        grouped = 2 if i in crowd and len(boxes) >= 3 else 0
        if grouped:
            union = np.concatenate([boxes[:2, :2].min(0), boxes[:2, 2:].max(0)])
            add(image_id, [*union[:2], *(union[2:] - union[:2])], category_of(labels[0]), 1)
        for box, label in zip(boxes[grouped:], labels[grouped:]):
            add(image_id, [*box[:2], *(box[2:] - box[:2])], category_of(label))
        if i in tiny:
            add(image_id, [3.0, SIZE - 6.0, 1.5, 1.5], category_of(labels[0]))
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return images_dir, path


@pytest.fixture(scope="module")
def photos():
    from vitlab.data.scenes import scene_photos

    return scene_photos(SIZE)


@pytest.fixture(scope="module")
def one_class(tmp_path_factory, fmnist_test, photos):
    """One category ("garment", id 3): 24 train, 6 val, 12 test images; the test split has 2 images without boxes,
    2 crowd boxes and 3 boxes too small for the letterbox (train has crowd and tiny boxes too)."""
    items, labels = fmnist_test
    root = tmp_path_factory.mktemp("one_class")
    cats = [{"id": 3, "name": "garment", "supercategory": "thing"}]
    splits = {"train": _write_coco(root, "train", _scenes(24, 1, items[:5000], labels[:5000], photos), cats,
                                   lambda _: 3, negatives=2, crowd=(0, 1, 2), tiny=(3,), photos=photos),
              "val": _write_coco(root, "val", _scenes(6, 2, items[5000:], labels[5000:], photos), cats, lambda _: 3),
              "test": _write_coco(root, "test", _scenes(10, 3, items[5000:], labels[5000:], photos), cats, lambda _: 3,
                                  negatives=2, crowd=(0, 4), tiny=(1, 2, 5), photos=photos)}
    return splits


@pytest.fixture(scope="module")
def missing_class(tmp_path_factory, fmnist_test, photos):
    """Two categories, "top" and "footwear": the training and validation scenes have both, the test scenes only
    garments that are not footwear."""
    items, labels = fmnist_test
    root = tmp_path_factory.mktemp("missing_class")
    cats = [{"id": 1, "name": "top"}, {"id": 2, "name": "footwear"}]

    def category_of(label):
        return 2 if int(label) in FOOTWEAR else 1

    no_shoes = ~np.isin(labels[5000:], FOOTWEAR)
    return {"train": _write_coco(root, "train", _scenes(16, 4, items[:5000], labels[:5000], photos), cats, category_of),
            "val": _write_coco(root, "val", _scenes(4, 5, items[:5000], labels[:5000], photos), cats, category_of),
            "test": _write_coco(root, "test", _scenes(6, 6, items[5000:][no_shoes], labels[5000:][no_shoes], photos),
                                cats, category_of)}


def _data_args(splits):
    return [f"--data.init_args.{split}_{kind}={path}" for split, (images, annotations) in splits.items()
            for kind, path in (("images", images), ("annotations", annotations))]


def _coco_eval(annotations, results):
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(str(annotations))
    ev = COCOeval_faster(gt, gt.loadRes(str(results)), "bbox", print_function=lambda *a, **k: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def _fit_test_export_predict(config, splits, run, extra):
    """The user's commands in order; returns ``vitlab test``'s metrics, its per-class rows and summary, the export
    report and COCO's own evaluation of `vitlab predict --format coco` against the ORIGINAL test JSON."""
    from vitlab.cli import main, run_cli

    common = ["--config", str(REPO / "configs" / "detect" / config), *_data_args(splits),
              f"--model.init_args.model_options={json.dumps(TINY_OPTS)}", "--data.init_args.batch_size=8",
              "--data.init_args.eval_batch_size=8", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
              f"--trainer.default_root_dir={run}", *extra]
    run_cli(["fit", *common])
    ckpt = run / "checkpoints" / "last.ckpt"
    tested = run_cli(["test", *common, f"--ckpt_path={ckpt}"]).trainer.callback_metrics
    metrics = {k: float(v) for k, v in tested.items()}
    rows = list(csv.DictReader((run / "test_report" / "per_class_ap.csv").open()))
    summary = json.loads((run / "test_report" / "per_class_ap.json").read_text())
    images, annotations = splits["test"]
    main(["export", str(ckpt), "--out", str(run / "onnx"), "--eval-data", str(images), str(annotations)])
    report = json.loads((run / "onnx" / "report.json").read_text())["model.onnx"]
    main(["predict", str(ckpt), str(images), "--out", str(run / "results.json"), "--format", "coco",
          "--annotations", str(annotations), "--workers", "0"])
    return metrics, rows, summary, report, _coco_eval(annotations, run / "results.json")


def test_one_class_with_crowd_tiny_and_empty_images_scores_as_coco_eval(one_class, tmp_path):
    """`vitlab test`'s mAP and mAP50 on a one-class set equal COCOeval's on the original test JSON for what `vitlab
    predict --format coco` writes from the same checkpoint: crowd boxes ignored, sub-pixel boxes counted."""
    doc = json.loads(one_class["test"][1].read_text())
    crowd = [a for a in doc["annotations"] if a["iscrowd"]]
    tiny = [a for a in doc["annotations"] if a["bbox"][2] < 2]
    assert len(crowd) == 2 and len(tiny) == 3 and len({a["image_id"] for a in doc["annotations"]}) == 10
    metrics, rows, summary, report, stats = _fit_test_export_predict(
        "coco_small.yaml", one_class, tmp_path,
        ["--trainer.max_steps=60", "--trainer.val_check_interval=30", "--model.init_args.optim.lr=3e-3",
         "--data.init_args.train_augment=null"])
    assert stats[1] > 0.08, "the 60-step detector found too little to compare"
    assert metrics["test/map"] == pytest.approx(stats[0], abs=1e-4)
    assert metrics["test/map_50"] == pytest.approx(stats[1], abs=1e-4)
    assert metrics["test/mar_100"] == pytest.approx(stats[8], abs=1e-4)
    # the one class's row (the report crashed here: torchmetrics' 0-d `classes`); every non-crowd box counted
    assert [r["class"] for r in rows] == ["garment"] and int(rows[0]["num_gt"]) == len(doc["annotations"]) - 2
    assert float(rows[0]["ap50"]) == pytest.approx(stats[1], abs=1e-4)
    assert summary["summary"]["map_50"] == pytest.approx(stats[1], abs=1e-4)
    assert report["status"] == "ok" and report["eval_images"] == 12
    assert report["map50_torch_pct"] == pytest.approx(100 * stats[1], abs=0.01)  # the gate scores the same way


def test_a_class_missing_from_the_test_split(missing_class, tmp_path):
    """The issue's own path (the scenes demo config with the six data overrides) on a set whose test split has no
    footwear: its row says so (None, num_gt 0), and the figures are still COCOeval's."""
    doc = json.loads(missing_class["test"][1].read_text())
    assert {a["category_id"] for a in doc["annotations"]} == {1}
    metrics, rows, summary, report, stats = _fit_test_export_predict(
        "scenes_demo.yaml", missing_class, tmp_path, ["--trainer.max_epochs=6", "--model.init_args.optim.lr=3e-3"])
    assert [r["class"] for r in rows] == ["top", "footwear"]
    assert rows[1] == {"class": "footwear", "class_id": "1", "ap": "", "ap50": "", "ap75": "", "ar100": "",
                       "num_gt": "0"}
    assert int(rows[0]["num_gt"]) == len(doc["annotations"]) and rows[0]["ap"] != ""
    assert summary["classes"][1]["ap"] is None and summary["classes"][1]["num_gt"] == 0
    assert metrics["test/map"] == pytest.approx(stats[0], abs=1e-4)
    assert metrics["test/map_50"] == pytest.approx(stats[1], abs=1e-4)
    assert report["status"] == "ok" and report["eval_images"] == 6


# --- vitlab export without eval data: the scenes as they are, never rewritten --------------------------------------
def _tree_digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def scenes_ckpt(tmp_path):
    """An (untrained) tiny scenes detector as a checkpoint: the export only needs its labels and graph."""
    from vitlab.models.classify import FMNIST_LABELS
    from vitlab.tasks import DetectionTask

    torch.manual_seed(0)
    task = DetectionTask("vitdet_scenes", 10, list(FMNIST_LABELS), dict(TINY_OPTS), max_det=20, topk=100)
    path = tmp_path / "det.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "vitlab_task": "DetectionTask"}, path)
    return path


def test_export_without_eval_data_reads_the_users_scenes_as_they_are(scenes_ckpt, tmp_path, monkeypatch,
                                                                     fmnist_test):
    from vitlab.cli import main
    from vitlab.data.scenes import write_scenes

    monkeypatch.chdir(tmp_path)
    write_scenes("data/scenes", {"train": 4, "val": 2, "test": 5}, image_size=96, seed=7)  # not the defaults
    before = _tree_digest(tmp_path / "data" / "scenes")
    main(["export", str(scenes_ckpt), "--out", "onnx"])
    report = json.loads((tmp_path / "onnx" / "report.json").read_text())["model.onnx"]
    assert report["status"] == "ok" and report["eval_images"] == 5 and "data/scenes" in report["eval_source"]
    assert _tree_digest(tmp_path / "data" / "scenes") == before  # every file byte for byte, none added or removed


def test_export_without_eval_data_or_scenes_refuses_in_one_line(scenes_ckpt, tmp_path, monkeypatch):
    from vitlab.onnx import export_onnx

    monkeypatch.chdir(tmp_path)
    with pytest.raises(VitlabError, match=r"pass --eval-data IMAGES_DIR ANNOTATIONS\.json") as e:
        export_onnx(scenes_ckpt, tmp_path / "onnx")
    assert "\n" not in str(e.value) and "data/scenes" in str(e.value)
    assert not (tmp_path / "data").exists()  # nothing generated either
