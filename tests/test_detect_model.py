"""The detection model: simple feature pyramid, FCOS targets and losses, post-processing, variants."""

import pytest
import torch
from torchvision.ops import box_iou

import vitlab
from vitlab.errors import VitlabError
from vitlab.models.backbone import WeightsWarning
from vitlab.models.detect import DetectorCfg, MaxDownsample, ViTDetector, create_detector, postprocess
from vitlab.models.fcos import assign_atss, assign_targets, decode_boxes, level_ranges, make_points

K = 3


def tiny(**opts) -> ViTDetector:
    opts = {"img_size": 64, "fpn_channels": 32, "num_convs": 1, **opts}
    return create_detector("vitlab_tiny", num_classes=K, **opts)


@pytest.mark.parametrize("patch", [8, 16])
def test_pyramid_levels_and_strides_follow_the_patch_size(patch):
    model = tiny(patch_size=patch).eval()
    assert model.cfg.scale_factors == (4.0, 2.0, 1.0, 0.5)  # ViTDet's default
    strides = [patch / f for f in (4, 2, 1, 0.5)]
    assert model.neck.strides == tuple(strides)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    feats = model.neck(model.backbone(x)["map"])
    assert [tuple(f.shape) for f in feats] == [(2, 32, int(64 // s), int(64 // s)) for s in strides]
    p = sum(int(64 // s) ** 2 for s in strides)
    assert model.points.shape == (p, 2) and model.strides.shape == (p,)
    assert torch.unique_consecutive(model.strides).tolist() == strides
    assert model.points[0].tolist() == [strides[0] / 2] * 2  # cell centres
    assert model.points[-1].tolist() == [64 - strides[-1] / 2] * 2
    out = model(x)
    assert out["cls_logits"].shape == (2, p, K) and out["box_regression"].shape == (2, p, 4)
    assert out["centerness"].shape == (2, p)
    assert (out["box_regression"] >= 0).all()


@pytest.mark.parametrize(("k", "size"), [(2, (8, 8)), (2, (7, 9)), (4, (13, 16))])
def test_max_downsample_equals_max_pool(k, size):
    x = torch.randn(3, 5, *size)
    torch.testing.assert_close(MaxDownsample(k)(x), torch.nn.MaxPool2d(k, k)(x), rtol=0, atol=0)


def test_points_are_row_major_per_level():
    points, strides = make_points([(2, 3), (1, 1)], [4, 8])
    assert points.tolist() == [[2, 2], [6, 2], [10, 2], [2, 6], [6, 6], [10, 6], [4, 4]]
    assert strides.tolist() == [4] * 6 + [8]
    assert decode_boxes(torch.tensor([[1.0, 0.5, 2.0, 0.0]]), points[:1], strides[:1]).tolist() == [[-2, 0, 10, 2]]


def test_level_ranges_chain_from_fine_to_coarse():
    _, strides = make_points([(2, 2), (1, 1), (1, 1)], [4, 8, 16])
    assert level_ranges(strides).unique(dim=0).tolist() == [[0, 32], [32, 64], [64, float("inf")]]


def test_targets_positive_only_inside_the_box_near_its_centre_and_on_its_level():
    points, strides = make_points([(40, 40), (20, 20), (10, 10)], [4, 8, 16])
    ranges = level_ranges(strides)  # (0, 32], (32, 64], (64, inf)
    boxes = torch.tensor([[10.0, 12.0, 30.0, 34.0],  # 20 x 22 px: largest distance <= 16 -> stride 4
                          [50.0, 50.0, 130.0, 130.0]])  # 80 x 80 px: 34..50 -> stride 8
    matched = assign_targets(points, strides, ranges, boxes, center_radius=1.5)
    assert set(matched.unique().tolist()) == {-1, 0, 1}
    for i, stride in ((0, 4), (1, 8)):
        pos = matched == i
        assert pos.sum() >= 4
        assert (strides[pos] == stride).all()
        x, y = points[pos].unbind(-1)
        b = boxes[i]
        assert ((x > b[0]) & (x < b[2]) & (y > b[1]) & (y < b[3])).all()
        centre = (b[:2] + b[2:]) / 2
        assert ((points[pos] - centre).abs() < 1.5 * stride).all()  # center sampling
    assert (assign_targets(points, strides, ranges, torch.zeros(0, 4)) == -1).all()


def test_overlapping_boxes_give_shared_points_to_the_smaller_box():
    points, strides = make_points([(16, 16)], [4])
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [24.0, 24.0, 40.0, 40.0]])
    matched = assign_targets(points, strides, level_ranges(strides), boxes, center_radius=3)
    inner = (points > 24).all(-1) & (points < 40).all(-1)
    assert (matched[inner] == 1).all()


def test_atss_picks_each_box_its_level_by_iou_and_keeps_points_inside():
    points, strides = make_points([(16, 16), (8, 8)], [8, 16])  # vitdet_scenes' levels on 128 px
    boxes = torch.tensor([[10.0, 10.0, 24.0, 24.0],  # 14 px: the 32 px squares of stride 8 fit it best
                          [40.0, 40.0, 124.0, 120.0],  # 84 x 80 px: the 64 px squares of stride 16
                          [60.0, 5.0, 90.0, 50.0]])  # 30 x 45 px: stride 8
    matched = assign_atss(points, strides, boxes, topk=9, anchor_scale=4.0)
    for i, stride in ((0, 8), (1, 16), (2, 8)):
        pos = matched == i
        assert 1 <= pos.sum() <= 9 and (strides[pos] == stride).all()
        x, y = points[pos].unbind(-1)
        b = boxes[i]
        assert ((x > b[0]) & (x < b[2]) & (y > b[1]) & (y < b[3])).all()
    assert (assign_atss(points, strides, torch.zeros(0, 4)) == -1).all()
    # the loss runs with it, and an unknown assigner is refused
    model = create_detector("vitdet_scenes", num_classes=3, depth=1, assigner="atss")
    images, gt, labels = _scene()
    losses = model.loss(model(torch.nn.functional.interpolate(images.float(), 128)), [b * 2 for b in gt], labels)
    assert torch.isfinite(losses["loss"]) and losses["box"] > 0
    with pytest.raises(VitlabError, match="assigner must be"):
        create_detector("vitdet_scenes", assigner="simota")


def _scene():
    """Two 64x64 images of flat squares whose colour is the class, on grey."""
    images = torch.full((2, 3, 64, 64), 40, dtype=torch.uint8)
    boxes = [torch.tensor([[8.0, 8.0, 30.0, 36.0], [36.0, 20.0, 60.0, 44.0]]), torch.tensor([[16.0, 30.0, 48.0, 60.0]])]
    labels = [torch.tensor([0, 1]), torch.tensor([2])]
    colours = torch.tensor([[230, 40, 40], [40, 40, 230], [40, 230, 40]], dtype=torch.uint8)
    for img, bs, ls in zip(images, boxes, labels):
        for (x1, y1, x2, y2), lab in zip(bs.long().tolist(), ls):
            img[:, y1:y2, x1:x2] = colours[lab][:, None, None]
    return images, boxes, labels


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster, and far faster on a loaded 2-core machine (OpenMP barriers)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_head_learns_two_images_and_postprocess_finds_the_boxes(one_thread):
    torch.manual_seed(0)
    model = tiny(scale_factors=(2, 1))
    images, boxes, labels = _scene()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    history = []
    for _ in range(80):
        losses = model.loss(model(images), boxes, labels)
        assert all(torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert last["loss"] < 0.4 * first["loss"]
    assert last["cls"] < 0.2 * first["cls"] and last["box"] < 0.2 * first["box"]
    with torch.no_grad():
        dets = model.eval().postprocess(model(images), score_thresh=0.3)
    for i, (gt, gl) in enumerate(zip(boxes, labels)):
        n = int(dets["num_dets"][i])
        assert n >= len(gt)
        iou = box_iou(gt, dets["boxes"][i, :n])  # [M, n]
        for j in range(len(gt)):  # each GT is found by a detection of its class
            assert iou[j][dets["labels"][i, :n] == gl[j]].max() > 0.5


def test_loss_on_images_without_boxes_is_background_only():
    model = tiny()
    out = model(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    losses = model.loss(out, [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    assert torch.isfinite(losses["loss"]) and losses["cls"] > 0
    assert losses["box"] == 0 and losses["ctr"] == 0
    losses["loss"].backward()


def _outputs(n=2, grid=8, stride=8.0):
    """Hand-made raw outputs on one level: every class logit very low (no detection) until set."""
    points, strides = make_points([(grid, grid)], [stride])
    p = len(points)
    out = {"cls_logits": torch.full((n, p, K), -20.0), "box_regression": torch.full((n, p, 4), 0.5),
           "centerness": torch.full((n, p), 10.0)}
    return out, points, strides


def test_postprocess_empty_batch_has_fixed_shapes_and_zeros():
    out, points, strides = _outputs()
    dets = postprocess(out, points, strides, max_det=5)
    assert dets["boxes"].shape == (2, 5, 4) and dets["scores"].shape == (2, 5) and dets["labels"].shape == (2, 5)
    assert dets["labels"].dtype == torch.int64 and dets["num_dets"].dtype == torch.int64
    assert dets["num_dets"].tolist() == [0, 0]
    assert not dets["boxes"].any() and not dets["scores"].any() and not dets["labels"].any()


def test_postprocess_full_keeps_the_best_max_det_sorted():
    out, points, strides = _outputs(n=1)
    out["cls_logits"][0, :, 1] = torch.linspace(0, 5, len(points))  # 64 separate boxes (one stride wide)
    dets = postprocess(out, points, strides, max_det=10)
    assert dets["num_dets"].tolist() == [10]
    s = dets["scores"][0]
    assert (s[:-1] >= s[1:]).all() and (s > 0.05).all()
    assert torch.allclose(s[0], torch.sqrt(torch.sigmoid(torch.tensor(5.0)) * torch.sigmoid(torch.tensor(10.0))))
    assert (dets["labels"][0] == 1).all()
    best = points[-1]  # the highest logit
    assert torch.allclose(dets["boxes"][0, 0], torch.cat([best - 4, best + 4]))


def test_postprocess_pads_images_with_fewer_detections_and_clips_to_the_input():
    out, points, strides = _outputs(n=3)
    out["cls_logits"][0, [0, 9, 27], 2] = 3.0  # three separate points in image 0, none in image 1
    out["cls_logits"][2, 0, 0] = 3.0
    out["box_regression"][2, 0] = 2.0  # reaches past the top-left corner
    dets = postprocess(out, points, strides, max_det=4)
    assert dets["num_dets"].tolist() == [3, 0, 1]
    assert (dets["labels"][0, :3] == 2).all() and (dets["scores"][0, :3] > 0).all()
    assert not dets["boxes"][0, 3:].any() and not dets["scores"][0, 3:].any() and not dets["labels"][0, 3:].any()
    assert not dets["boxes"][1].any()
    assert dets["boxes"][2, 0].tolist() == [0.0, 0.0, 20.0, 20.0]  # point (4, 4) +- 16, clipped at 0
    assert postprocess(out, points, strides, image_size=(16, 12))["boxes"][2, 0].tolist() == [0, 0, 12, 16]


def test_postprocess_score_threshold_and_topk():
    out, points, strides = _outputs(n=1)
    out["cls_logits"][0, :, 0] = torch.linspace(-6, 3, len(points))
    n_above = int((torch.sqrt(torch.sigmoid(out["cls_logits"][0, :, 0]) * torch.sigmoid(torch.tensor(10.0)))
                   > 0.5).sum())
    assert postprocess(out, points, strides, score_thresh=0.5)["num_dets"].item() == n_above
    assert postprocess(out, points, strides, score_thresh=0.0, topk=7)["num_dets"].item() == 7


def test_class_aware_and_class_agnostic_nms():
    out, points, strides = _outputs(n=1)
    a, c = 18, 20  # points (20, 20) and (36, 20)
    out["cls_logits"][0, a, 0] = 4.0  # the same box for two classes
    out["cls_logits"][0, a, 1] = 3.0
    out["cls_logits"][0, c, 0] = 2.0  # a box 16 px to the right: IoU 1/3 with the first
    out["box_regression"][0, [a, c]] = 2.0  # 32 px boxes
    aware = postprocess(out, points, strides, nms_thresh=0.3)
    assert aware["num_dets"].item() == 2 and aware["labels"][0, :2].tolist() == [0, 1]
    agnostic = postprocess(out, points, strides, nms_thresh=0.3, class_agnostic=True)
    assert agnostic["num_dets"].item() == 1 and agnostic["labels"][0, 0].item() == 0
    loose = postprocess(out, points, strides, nms_thresh=0.5)
    assert loose["num_dets"].item() == 3  # IoU 1/3 survives a 0.5 threshold


def test_create_detector_scenes_variant():
    model = create_detector("vitdet_scenes").eval()
    pre = model.preprocess
    assert (pre.task, pre.resize, pre.channels) == ("detection", "letterbox", 3)
    assert model.num_classes == len(pre.labels) == 10
    h, w = pre.image_size
    with torch.no_grad():
        out = model(torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8))
    assert out["cls_logits"].shape == (1, len(model.points), 10)
    dets = model.postprocess(out, max_det=7)
    assert dets["boxes"].shape == (1, 7, 4)
    assert pre.image_size == (128, 128) and len(model.points) == 16 * 16 + 8 * 8
    other = create_detector("vitdet_scenes", num_classes=2, img_size=160, labels=["a", "b"])
    assert other.preprocess.image_size == (160, 160) and other.preprocess.labels == ("a", "b")
    assert len(other.points) == 20 * 20 + 10 * 10


@pytest.mark.parametrize("fpn_channels", [64, 128])
def test_every_box_side_starts_alive(fpn_channels):
    """The distances pass a ReLU: a side at 0 for every point gets no gradient and never learns (a 128-channel
    pyramid lost its top side that way). At initialisation every side of every point is positive."""
    torch.manual_seed(0)
    model = create_detector("vitdet_scenes_cs", fpn_channels=fpn_channels).eval()
    with torch.no_grad():
        sides = model(torch.randint(0, 256, (4, 3, 128, 128), dtype=torch.uint8))["box_regression"]
    assert (sides > 0).all(), [round(float((sides[..., k] == 0).float().mean()), 3) for k in range(4)]


def test_conv_stem_variant_keeps_the_token_grid_and_points():
    plain, stem = create_detector("vitdet_scenes"), create_detector("vitdet_scenes_cs")
    assert isinstance(stem.backbone.vit.patch_embed.proj, torch.nn.Sequential)  # the conv stem, not a patchify
    assert torch.equal(plain.points, stem.points) and stem.preprocess == plain.preprocess
    with torch.no_grad():
        out = stem.eval()(torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8))
    assert out["cls_logits"].shape == (2, 16 * 16 + 8 * 8, 10)


def test_create_detector_640_variant_builds():
    model = create_detector("vitdet_small_640", num_classes=80)
    assert model.preprocess.image_size == (640, 640) and model.preprocess.resize == "letterbox"
    assert model.backbone.patch_size == 16 and model.backbone.out_channels == 384
    assert model.neck.strides == (4.0, 8.0, 16.0, 32.0) and model.cfg.fpn_channels == 256
    assert len(model.points) == 160 ** 2 + 80 ** 2 + 40 ** 2 + 20 ** 2
    assert vitlab.create_detector is create_detector


def test_create_detector_options_and_errors():
    model = create_detector("vitdet_scenes", fpn_channels=32, scale_factors=[1, 0.5], depth=2)
    assert model.cfg.scale_factors == (1.0, 0.5) and model.head.num_classes == 10
    assert len(model.backbone.vit.blocks) == 2
    with pytest.raises(VitlabError, match="'fpn_width' is not supported"):
        create_detector("vitdet_scenes", fpn_width=32)
    with pytest.raises(VitlabError, match="powers of two"):
        create_detector("vitdet_scenes", scale_factors=(3, 1))
    with pytest.raises(VitlabError, match="multiple of 16"):
        create_detector("vitdet_scenes", img_size=168)
    with pytest.raises(VitlabError, match="detection variant"):
        vitlab.create_model("vitdet_scenes")
    with pytest.raises(VitlabError, match="pass points_for"):
        model.loss({"cls_logits": torch.zeros(1, 5, 10)}, [], [])
    assert DetectorCfg.from_dict({"num_convs": 2}).num_convs == 2


def test_pretrained_loads_a_classifier_backbone(tmp_path):
    clf = vitlab.create_model("vitlab_tiny", num_classes=5)
    path = tmp_path / "clf.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in clf.state_dict().items()}}, path)
    det = create_detector("vitlab_tiny", num_classes=2, pretrained=str(path))  # same 32 px grid
    w = "blocks.0.attn.qkv.weight"
    assert torch.equal(det.backbone.vit.state_dict()[w], clf.backbone.vit.state_dict()[w])


def test_grey_garment_classifier_loads_into_the_rgb_detector(tmp_path):
    """vitdet_scenes_fm takes vitlab_fmnist_cs's conv stem and blocks: the grey stem's first convolution is spread
    over R, G and B (so a grey pixel gives the classifier's response), the 4x4 position grid resampled to 16x16."""
    clf = vitlab.create_model("vitlab_fmnist_cs")
    path = tmp_path / "garments.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in clf.state_dict().items()}}, path)
    with pytest.warns(WeightsWarning, match="in_chans 1->3"):
        det = create_detector("vitdet_scenes_fm", pretrained=str(path))
    own, theirs = det.backbone.vit.state_dict(), clf.backbone.vit.state_dict()
    assert torch.allclose(own["patch_embed.proj.0.weight"].sum(1, keepdim=True), theirs["patch_embed.proj.0.weight"])
    for k in ("blocks.3.mlp.fc2.weight", "patch_embed.proj.3.weight"):
        assert torch.equal(own[k], theirs[k])
    assert own["pos_embed"].shape == (1, 256, 128)


def test_registry_lists_detection_variants():
    names = vitlab.list_models(include_timm=False)
    assert {"vitdet_scenes", "vitdet_small_640", "vitlab_tiny"} <= set(names)
    assert vitlab.list_models("vitdet_*", include_timm=False) == ["vitdet_scenes", "vitdet_scenes_cs",
                                                                  "vitdet_scenes_fm", "vitdet_small_640"]
