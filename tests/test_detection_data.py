"""Detection data: letterbox box geometry, the COCO reader and datamodules, augmentation with boxes, and the
built-in scenes generator (tiny sets in tmp_path, real Fashion-MNIST items on real scikit-image photographs)."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from vitlab_edge.boxes import boxes_to_input, boxes_to_original, letterbox_geometry
from vitlab_edge.imaging import resize

from tests.conftest import REPO, needs_fmnist
from vitlab.data import CocoDetectionDataModule, ScenesDataModule
from vitlab.data.detection import CocoDetectionDataset, DetectionSamples, collate_detection, read_coco
from vitlab.data.transforms import load_pipeline
from vitlab.errors import VitlabError
from vitlab.preprocess import PreprocessCfg

DET64 = PreprocessCfg(input_size=(3, 64, 64), resize="letterbox", task="detection")
SCENES_AUGMENT = REPO / "configs" / "augment" / "scenes_train.yaml"
TINY = {"train": 12, "val": 4, "test": 4}


# --- geometry ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("src", [(300, 500), (500, 300), (37, 101), (64, 64), (20, 20), (1, 400)])
def test_resize_puts_the_content_where_the_geometry_says(src):
    for dst in ((64, 64), (48, 80), (81, 33)):
        sy, sx, top, left = letterbox_geometry(src, dst)
        out = resize(np.full((*src, 3), 255, np.uint8), dst, "letterbox")
        rh, rw = round(src[0] * sy), round(src[1] * sx)
        content = np.zeros(dst, bool)
        content[top:top + rh, left:left + rw] = True
        assert (out[content] == 255).all() and (out[~content] == 0).all(), (src, dst)
        assert 0 < rh <= dst[0] and 0 < rw <= dst[1] and (rh == dst[0] or rw == dst[1])


def test_a_box_in_a_non_square_image_round_trips_within_1px():
    image = np.zeros((300, 500, 3), np.uint8)
    box = np.array([[120.0, 60.0, 220.0, 140.0]], np.float32)  # x1, y1, x2, y2
    image[60:140, 120:220] = 255
    out = resize(image, (128, 128), "letterbox")
    ys, xs = np.nonzero(out[:, :, 0] > 127)
    seen = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    mapped = boxes_to_input(box, (300, 500), (128, 128))
    assert np.abs(mapped[0] - seen).max() <= 1.0, (mapped, seen)
    assert np.abs(boxes_to_original(mapped, (300, 500), (128, 128)) - box).max() <= 1e-3
    assert np.abs(boxes_to_original(seen[None], (300, 500), (128, 128)) - box).max() <= 500 / 128  # 1 input px
    # a box over the padding band is clipped to the original image; batched shapes are kept
    pad = boxes_to_original(np.array([[[0.0, 0.0, 128.0, 10.0]]]), (300, 500), (128, 128))
    assert pad.shape == (1, 1, 4) and pad[0, 0, 1] == 0 and pad[0, 0, 3] == 0 and pad[0, 0, 2] == 500


# --- COCO ----------------------------------------------------------------------------------------------------
def _coco(tmp_path, annotations, images=None, categories=None, name="train"):
    """A COCO split in tmp_path: noise PNGs for ``images`` ((id, w, h) triples) and the JSON."""
    images = images or [(1, 40, 30), (2, 50, 50), (3, 32, 48)]
    categories = categories or [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 42, "name": "x"}]
    folder = tmp_path / f"{name}_images"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, w, h in images:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{image_id}.png")
    doc = {"images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h} for i, w, h in images],
           "annotations": [{"id": k + 1, "iscrowd": 0, **a} for k, a in enumerate(annotations)],
           "categories": categories}
    (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    return str(folder), str(tmp_path / f"{name}.json")


def test_coco_category_ids_map_to_contiguous_labels_and_back(tmp_path):
    folder, ann = _coco(tmp_path, [{"image_id": 1, "category_id": 42, "bbox": [2, 3, 10, 8]},
                                   {"image_id": 1, "category_id": 3, "bbox": [20, 5, 10, 10]}])
    dm = CocoDetectionDataModule(folder, ann)
    assert dm.category_ids == [3, 7, 42] and dm.class_names == ["three", "seven", "x"] and dm.num_classes == 3
    image, boxes, labels, image_id = CocoDetectionDataset(read_coco(ann, folder).images)[0]
    assert image.shape == (30, 40, 3) and image_id == 1
    assert labels.tolist() == [2, 0] and [dm.category_ids[i] for i in labels] == [42, 3]
    assert boxes.tolist() == [[2, 3, 12, 11], [20, 5, 30, 15]]  # xywh -> xyxy


def test_negatives_and_crowd_boxes(tmp_path, caplog):
    folder, ann = _coco(tmp_path, [{"image_id": 2, "category_id": 7, "bbox": [1, 1, 20, 20]},
                                   {"image_id": 2, "category_id": 7, "bbox": [0, 0, 50, 50], "iscrowd": 1}])
    with caplog.at_level(logging.WARNING, logger="vitlab.data.detection"):
        coco = read_coco(ann, folder)
    assert coco.dropped["crowd"] == 1 and "1 crowd boxes" in caplog.text
    ds = CocoDetectionDataset(coco.images)
    negative, positive = ds[0], ds[1]
    assert negative[1].shape == (0, 4) and negative[2].shape == (0,)  # image 1 has no box: kept, as a negative
    assert positive[1].tolist() == [[1, 1, 21, 21]]  # the crowd box is not a target
    batch = collate_detection([DetectionSamples(ds, DET64)[i] for i in range(3)])
    assert [len(b) for b in batch["boxes"]] == [0, 1, 0] and batch["boxes"][0].shape == (0, 4)


def test_boxes_are_clipped_and_degenerate_ones_dropped_with_one_count(tmp_path, caplog):
    folder, ann = _coco(tmp_path, [{"image_id": 1, "category_id": 7, "bbox": [30, -5, 20, 15]},  # clipped
                                   {"image_id": 1, "category_id": 7, "bbox": [45, 5, 10, 10]},  # outside: dropped
                                   {"image_id": 1, "category_id": 7, "bbox": [5, 5, 0.5, 10]},  # too thin
                                   {"image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 10]}])
    with caplog.at_level(logging.WARNING, logger="vitlab.data.detection"):
        coco = read_coco(ann, folder)
    assert coco.images[0].boxes.tolist() == [[30, 0, 40, 10], [5, 5, 15, 15]]
    assert coco.dropped == {"crowd": 0, "clipped": 2, "degenerate": 2}
    lines = [r.getMessage() for r in caplog.records if "train.json" in r.getMessage()]
    assert len(lines) == 1 and "2 degenerate boxes" in lines[0]


def test_bad_image_is_skipped_and_counted(tmp_path):
    folder, ann = _coco(tmp_path, [{"image_id": 3, "category_id": 3, "bbox": [1, 1, 5, 5]}])
    (tmp_path / "train_images" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    ds = DetectionSamples(CocoDetectionDataset(read_coco(ann, folder).images), DET64)
    batch = collate_detection([ds[i] for i in range(3)])
    assert batch["skipped"] == 1 and batch["image"].shape == (2, 3, 64, 64)
    assert batch["image_id"].tolist() == [1, 3]
    assert collate_detection([None, None])["skipped"] == 2
    strict = CocoDetectionDataset(read_coco(ann, folder).images, on_bad_image="raise")
    with pytest.raises(VitlabError, match=r"2\.png"):
        strict[1]


def test_coco_errors_name_the_file(tmp_path):
    folder, ann = _coco(tmp_path, [{"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(VitlabError, match=r"bad\.json: invalid JSON"):
        read_coco(tmp_path / "bad.json", folder)
    (tmp_path / "nokey.json").write_text(json.dumps({"images": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(VitlabError, match=r"nokey\.json: missing key 'annotations'"):
        read_coco(tmp_path / "nokey.json", folder)
    doc = json.loads((tmp_path / "train.json").read_text())
    del doc["annotations"][0]["bbox"]
    (tmp_path / "nobox.json").write_text(json.dumps(doc))
    with pytest.raises(VitlabError, match=r"nobox\.json: annotations\[0\] has no 'bbox'"):
        read_coco(tmp_path / "nobox.json", folder)
    with pytest.raises(VitlabError, match=r"image folder .*missing.* does not exist"):
        read_coco(ann, tmp_path / "missing")
    with pytest.raises(VitlabError, match=r"nothere\.json do not exist"):
        read_coco(tmp_path / "nothere.json", folder)
    val = _coco(tmp_path, [], categories=[{"id": 1, "name": "a"}], name="val")
    with pytest.raises(VitlabError, match=r"val\.json: category ids \[1\] differ"):
        CocoDetectionDataModule(folder, ann, *val)
    with pytest.raises(VitlabError, match="val_images and data.val_annotations go together"):
        CocoDetectionDataModule(folder, ann, val_images=folder)


def test_letterbox_maps_boxes_onto_the_object(tmp_path):
    """A white block at a known place in a 60 x 100 image: after the letterbox to 64 x 64 the sample's box sits on
    the block within 1 px, and mapping it back gives the original box within 1 input px."""
    image = np.zeros((60, 100, 3), np.uint8)
    image[10:40, 55:90] = 255
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(image).save(folder / "a.png")
    doc = {"images": [{"id": 5, "file_name": "a.png", "width": 100, "height": 60}],
           "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [55, 10, 35, 30], "iscrowd": 0}],
           "categories": [{"id": 1, "name": "block"}]}
    (tmp_path / "a.json").write_text(json.dumps(doc))
    chw, boxes, labels, image_id, orig_hw = DetectionSamples(
        CocoDetectionDataset(read_coco(tmp_path / "a.json", folder).images), DET64)[0]
    ys, xs = np.nonzero(chw[0] > 127)
    assert np.abs(boxes[0] - [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).max() <= 1.0
    assert np.abs(boxes_to_original(boxes, orig_hw, (64, 64)) - [55, 10, 90, 40]).max() <= 100 / 64
    assert image_id == 5 and orig_hw == (60, 100) and labels.tolist() == [0]
    with pytest.raises(VitlabError, match="letterbox"):
        DetectionSamples([], DET64.replace(resize="squash"))


def test_detection_pipelines_get_the_bbox_params_once(tmp_path):
    aug = load_pipeline(SCENES_AUGMENT, bboxes=True)
    out = aug(image=np.zeros((128, 128, 3), np.uint8), bboxes=np.array([[10, 10, 50, 60]], np.float32),
              labels=np.array([4]))
    assert out["labels"].tolist() == [4] and len(out["bboxes"]) == 1
    text = SCENES_AUGMENT.read_text() + "  bbox_params: {format: coco, label_fields: [labels]}\n"
    (tmp_path / "own.yaml").write_text(text)
    with pytest.raises(VitlabError, match=r"own\.yaml: remove bbox_params"):
        load_pipeline(tmp_path / "own.yaml", bboxes=True)


def test_held_out_validation_has_its_own_ground_truth_json(tmp_path):
    images = [(i, 32, 32) for i in range(1, 11)]
    folder, ann = _coco(tmp_path, [{"image_id": i, "category_id": 7, "bbox": [1, 1, 9, 9]} for i in range(1, 11)],
                        images=images)
    dm = CocoDetectionDataModule(folder, ann, val_fraction=0.3, seed=1, preprocess=DET64, batch_size=4)
    dm.setup("fit")
    held = sorted(int(i) for b in dm.val_dataloader() for i in b["image_id"])
    doc = json.loads(dm.coco_annotations("val").read_text())
    assert len(held) == 3 and sorted(im["id"] for im in doc["images"]) == held
    assert sorted(a["image_id"] for a in doc["annotations"]) == held
    assert dm.coco_annotations("test") == dm.coco_annotations("val") and str(dm.coco_images("test")) == folder


# --- scenes --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory):
    pytest.importorskip("skimage")
    from vitlab.data.scenes import write_scenes

    root = tmp_path_factory.mktemp("scenes")
    return root, write_scenes(root, TINY, image_size=128, seed=0)


@pytest.fixture(scope="module")
def scene_inputs():
    pytest.importorskip("skimage")
    from vitlab.data.scenes import scene_photos, split_items

    return scene_photos(128), *split_items("test")


@needs_fmnist
def test_scenes_boxes_are_tight_masks_pasted_without_a_tile(scene_inputs):
    from vitlab.data.scenes import MAX_IOU, _background, _box_overlaps, compose_scene

    photos, items, labels = scene_inputs
    counts = []
    for i in range(12):
        scene = compose_scene(np.random.default_rng([3, i]), photos, items, labels, 128)
        rng = np.random.default_rng([3, i])  # the same draws again: the background before any item
        background = _background(photos[int(rng.integers(len(photos)))], rng, 128)
        boxes, masks, image = scene["boxes"], scene["masks"], scene["image"]
        counts.append(len(boxes))
        assert 1 <= len(boxes) <= 8 and len(masks) == len(boxes) == len(scene["labels"])
        for box, mask in zip(boxes, masks):
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # tight around the mask
            side = max(box[2] - box[0], box[3] - box[1])
            assert 6 <= side <= 96
        untouched = ~masks.any(0)  # outside every mask the photo is as it was: no tile around the garment
        assert np.abs(image[untouched].astype(int) - background[untouched]).max() <= 1
        top = masks[-1]  # the last item pasted is not covered: its pixels changed
        assert (np.abs(image[top].astype(int) - background[top]).max(1) > 8).mean() > 0.8
        for k in range(1, len(boxes)):
            assert _box_overlaps(boxes[k], boxes[:k])[0].max() <= MAX_IOU
    assert len(set(counts)) > 3


@needs_fmnist
def test_scenes_are_deterministic_cached_and_in_coco_format(tiny_scenes, tmp_path):
    from vitlab.data.scenes import item_indices, write_scenes

    root, paths = tiny_scenes
    again = write_scenes(tmp_path / "again", TINY, image_size=128, seed=0)
    for split in ("train", "val", "test"):
        assert paths[split][1].read_text() == again[split][1].read_text()
        first = sorted(paths[split][0].iterdir())
        assert len(first) == TINY[split]
        assert all(p.read_bytes() == (again[split][0] / p.name).read_bytes() for p in first)
    doc = json.loads(paths["train"][1].read_text())
    assert {c["id"] for c in doc["categories"]} == set(range(1, 11))
    a = doc["annotations"][0]
    assert set(a) >= {"id", "image_id", "category_id", "bbox", "area", "iscrowd"} and a["iscrowd"] == 0
    assert a["area"] == a["bbox"][2] * a["bbox"][3] and {im["width"] for im in doc["images"]} == {128}
    stamp = paths["train"][1].stat().st_mtime_ns
    write_scenes(root, TINY, image_size=128, seed=0)  # same parameters: the files are reused
    assert paths["train"][1].stat().st_mtime_ns == stamp
    other = write_scenes(tmp_path / "again", TINY, image_size=128, seed=1)  # other parameters: rewritten
    assert other["train"][1].read_text() != paths["train"][1].read_text()
    val, test = item_indices("val", 10000), item_indices("test", 10000)
    assert not set(val) & set(test) and len(val) + len(test) == 10000


@needs_fmnist
def test_augmentation_keeps_boxes_on_the_pasted_items(scene_inputs, tmp_path):
    from vitlab.data.scenes import compose_scene

    photos, items, labels = scene_inputs
    flip = tmp_path / "flip.yaml"
    flip.write_text("transform:\n  __class_fullname__: Compose\n  transforms:\n"
                    "    - {__class_fullname__: HorizontalFlip, p: 1.0}\n")
    pipelines = {"flip": load_pipeline(flip, bboxes=True), "scenes": load_pipeline(SCENES_AUGMENT, bboxes=True)}
    for i in range(10):
        scene = compose_scene(np.random.default_rng([5, i]), photos, items, labels, 128)
        ids = np.arange(len(scene["boxes"]))  # labels = object index, so each box finds its mask
        for name, aug in pipelines.items():
            out = aug(image=scene["image"], bboxes=scene["boxes"], labels=ids,
                      masks=[m.astype(np.uint8) for m in scene["masks"]])
            if name == "flip":
                assert np.array_equal(out["image"], scene["image"][:, ::-1])
                assert len(out["bboxes"]) == len(ids)
            for box, k in zip(np.asarray(out["bboxes"]), np.asarray(out["labels"])):
                ys, xs = np.nonzero(out["masks"][k])
                tight = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                tol = 1e-4 if name == "flip" else 1.5
                clipped = tight[0] == 0 or tight[1] == 0 or tight[2] == 128 or tight[3] == 128
                if not clipped:  # boxes cut by the border are clipped boxes of the whole item, not tight
                    assert np.abs(box - tight).max() <= tol, (name, i, box, tight)
                inside = (xs >= box[0] - tol) & (xs < box[2] + tol) & (ys >= box[1] - tol) & (ys < box[3] + tol)
                assert inside.mean() > 0.97


@needs_fmnist
def test_scenes_datamodule_yields_the_batch_format(tiny_scenes):
    root, paths = tiny_scenes
    pre = PreprocessCfg(input_size=(3, 128, 128), resize="letterbox", task="detection")
    dm = ScenesDataModule(root=str(root), train_size=TINY["train"], val_size=TINY["val"], test_size=TINY["test"],
                          batch_size=4, train_augment=str(SCENES_AUGMENT), preprocess=pre)
    assert dm.num_classes == 10 and dm.class_names[0] == "T-shirt/top" and dm.category_ids == list(range(1, 11))
    assert dm.coco_annotations("test") == paths["test"][1] and dm.coco_images("val") == paths["val"][0]
    dm.setup("fit")
    dm.setup("test")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"image", "boxes", "labels", "image_id", "orig_size", "skipped"}
        n = len(batch["image"])
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (n, 3, 128, 128)
        assert len(batch["boxes"]) == len(batch["labels"]) == n and batch["skipped"] == 0
        assert batch["image_id"].dtype == torch.int64 and batch["image_id"].shape == (n,)
        assert batch["orig_size"].dtype == torch.int64 and batch["orig_size"].tolist() == [[128, 128]] * n
        for boxes, labels in zip(batch["boxes"], batch["labels"]):
            assert boxes.dtype == torch.float32 and boxes.shape == (len(labels), 4)
            assert labels.dtype == torch.int64 and ((labels >= 0) & (labels < 10)).all()
            assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 128


@needs_fmnist
def test_scenes_datamodule_takes_other_coco_data(tmp_path):
    folder, ann = _coco(tmp_path, [{"image_id": 1, "category_id": 42, "bbox": [2, 3, 10, 8]}])
    dm = ScenesDataModule(root=str(tmp_path / "scenes"), train_images=folder, train_annotations=ann)
    assert dm.category_ids == [3, 7, 42] and dm.coco_annotations("train").name == "train.json"
    assert not (tmp_path / "scenes").exists()  # nothing generated


@needs_fmnist
def test_concurrent_processes_generate_the_scenes_once(tmp_path):
    """Two processes (as two DDP ranks) asking for the same scenes at once: one writes them, the other waits and
    reads the same files."""
    import subprocess
    import sys

    code = ("import logging, sys; logging.basicConfig(level=logging.WARNING)\n"
            "from vitlab.data.scenes import write_scenes\n"
            "p = write_scenes(sys.argv[1], {'train': 6, 'val': 2, 'test': 2}, image_size=64)\n"
            "print(open(p['train'][1]).read()[:200])\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "scenes")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum("wrote the scenes" in err for _, err in outs) == 1, outs
    assert outs[0][0] == outs[1][0]
