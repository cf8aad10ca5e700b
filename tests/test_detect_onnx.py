"""Detection export: NMS inside the graph as ONNX NonMaxSuppression, one fused attention node per block, parity
with torch's postprocess on batches mixing empty and busy images (larger than the export example, all empty,
fp16), the mAP50 gate and report, metadata through the edge kit's parser, and the CLI."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import vitlab
from tests.conftest import needs_fmnist
from vitlab.errors import VitlabError
from vitlab.onnx import count_fused_attention, export_onnx
from vitlab.onnx.detect import OUTPUTS, DetectEndToEnd, detection_parity, postprocess_nodes
from vitlab.onnx.graph import export_module
from vitlab.onnx.precision import to_fp16

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
OPTS = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, fpn_channels=32, num_convs=1)
POST = dict(score_thresh=0.2, nms_thresh=0.6, topk=100, max_det=20, class_agnostic=False)


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(model, images):
    return dict(zip(OUTPUTS, _session(model).run(OUTPUTS, {"images": images})))


@torch.no_grad()
def _torch(module, images):
    return {k: v.numpy() for k, v in zip(OUTPUTS, module(torch.from_numpy(images)))}


def _pool(n=12, seed=0):
    """Noise, flat and flat-with-squares images, in turn."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 3, 64, 64), np.uint8)
    for i in range(n):
        x[i] = rng.integers(0, 256, (3, 64, 64)) if i % 3 == 0 else rng.integers(0, 256)
        for _ in range(3 if i % 3 == 2 else 0):
            a, b = rng.integers(0, 48, 2)
            x[i, :, a:a + 16, b:b + 16] = rng.integers(0, 256, (3, 1, 1))
    return x


@pytest.fixture(scope="module")
def graphs():
    """An untrained tiny detector with hand-set classifier weights (scores spread over images) and a score
    threshold in the widest gap between the images' best scores: about a third of the pool detects nothing."""
    torch.manual_seed(0)
    det = vitlab.create_detector("vitdet_scenes", num_classes=3, labels=["a", "b", "c"], **OPTS).eval()
    with torch.no_grad():
        det.head.classification_head.cls_logits.bias.copy_(torch.tensor([0.5, -0.5, -3.0]))
        det.head.classification_head.cls_logits.weight.mul_(20)
        det.head.regression_head.bbox_reg.bias.fill_(1.5)  # boxes about 3 strides wide: neighbours overlap
        pool = _pool()
        out = det(torch.from_numpy(pool))
        best = torch.sqrt(out["cls_logits"].sigmoid() * out["centerness"].sigmoid()[..., None]).amax((1, 2))
    ranked = best.sort().values
    k = max(range(3, 9), key=lambda i: float(ranked[i] - ranked[i - 1]))
    assert ranked[k] - ranked[k - 1] > 1e-3  # far from any rounding difference between torch and ORT
    module = DetectEndToEnd(det, {**POST, "score_thresh": float(ranked[k - 1] + ranked[k]) / 2}).eval()
    fp32 = export_module(module, det.preprocess.input_size, OUTPUTS)
    return {"det": det, "module": module, "fp32": fp32, "fp16": to_fp16(fp32, postprocess_nodes(fp32)),
            "pool": pool, "empty": (best < module.options["score_thresh"]).nonzero().squeeze(1).tolist(),
            "busy": [i for i in best.argsort(descending=True).tolist() if best[i] > module.options["score_thresh"]]}


def _assert_same(ref, out, score_tol=1e-3):
    np.testing.assert_array_equal(out["num_dets"], ref["num_dets"])
    assert [o.dtype for o in out.values()] == [np.float32, np.float32, np.int64, np.int64]
    par = detection_parity(ref, out)
    assert par["matched_detections_pct"] == 100.0, par
    for i, k in enumerate(ref["num_dets"]):  # padding rows are zeros
        assert not out["boxes"][i, k:].any() and not out["scores"][i, k:].any() and not out["labels"][i, k:].any()


def test_nms_is_one_onnx_node_and_attention_fused_per_block(graphs):
    counts = [n.op_type for n in graphs["fp32"].graph.node]
    assert counts.count("NonMaxSuppression") == 1
    assert "MaxPool" not in counts  # ONNX Runtime's CUDA provider has no opset-22 MaxPool: it would run on the CPU
    assert count_fused_attention(graphs["fp32"]) == count_fused_attention(graphs["fp16"]) == 2
    assert [o.name for o in graphs["fp32"].graph.output] == OUTPUTS
    assert graphs["fp32"].graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    fp16_types = {n.name: n.op_type for n in graphs["fp16"].graph.node}
    assert "NonMaxSuppression" in fp16_types.values()  # and it stays fp32: the session below loads
    # the op stops after max_det selections per image (most of the post-processing time otherwise)
    nms = next(n for n in graphs["fp32"].graph.node if n.op_type == "NonMaxSuppression")
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in graphs["fp32"].graph.initializer}
    consts.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graphs["fp32"].graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    assert consts[nms.input[2]].tolist() == [POST["max_det"]]


@pytest.mark.parametrize("batch", ["mixed", "larger", "all_empty"])
def test_parity_with_torch_on_mixed_larger_and_all_empty_batches(graphs, batch):
    """Batch 2 (the export example's size) with one empty image, 9 images (larger, some empty), all empty."""
    empty, busy = graphs["empty"], graphs["busy"]
    idx = {"mixed": [busy[0], empty[0]], "larger": busy[:5] + empty[:4], "all_empty": empty[:3]}[batch]
    images = graphs["pool"][idx]
    ref = _torch(graphs["module"], images)
    assert (ref["num_dets"] == 0).tolist() == [i in empty for i in idx]
    _assert_same(ref, _run(graphs["fp32"], images))


def test_fp16_keeps_post_processing_fp32_and_matches_torch(graphs):
    post = set(postprocess_nodes(graphs["fp32"]))
    post_values = {o for n in graphs["fp32"].graph.node if n.name in post for o in n.output}
    to_half = [n for n in graphs["fp16"].graph.node
               if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT16]
    assert post and not [n.name for n in to_half if n.output[0] in post_values]  # no fp16 round trip after the head
    images = graphs["pool"]
    ref = _torch(graphs["module"], images)
    out = _run(graphs["fp16"], images)
    assert out["boxes"].dtype == np.float32 and (out["num_dets"][graphs["empty"]] == 0).all()
    par = detection_parity(ref, out)
    assert par["matched_detections_pct"] >= 80.0, par


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_dense_detections_suppressed_and_padded_like_torch(graphs, class_agnostic):
    """Every candidate above the threshold: NMS has work to do and ``max_det`` cuts, at batch 9."""
    det = graphs["det"]
    options = {**POST, "score_thresh": 0.0, "nms_thresh": 0.45, "max_det": 20, "class_agnostic": class_agnostic}
    module = DetectEndToEnd(det, options).eval()
    images = graphs["pool"][:9]
    ref = _torch(module, images)
    assert ref["num_dets"].max() == 20  # cut at max_det
    no_nms = _torch(DetectEndToEnd(det, {**options, "nms_thresh": 1.0, "max_det": 1000}).eval(), images)
    assert (ref["num_dets"] < no_nms["num_dets"]).all()  # NMS suppressed boxes in every image
    _assert_same(ref, _run(export_module(module, det.preprocess.input_size, OUTPUTS), images))


def test_metadata_schema_for_detection_and_classification():
    from vitlab_edge.metadata import ModelFormatError, parse_metadata

    base = dict(format=1, labels=["a"], input_size=[3, 64, 64], mean=[0.5] * 3, std=[0.5] * 3,
                interpolation="bilinear", crop_pct=1.0, inputs=["images"], precision="fp32")
    cls = {**base, "task": "classification", "resize": "squash", "outputs": ["probs", "logits"]}
    assert parse_metadata(json.dumps(cls), "m")["task"] == "classification"
    det = {**base, "task": "detection", "resize": "letterbox", "outputs": OUTPUTS, "score_thresh": 0.05,
           "nms_thresh": 0.6, "topk": 1000, "max_det": 100, "class_agnostic": False}
    assert parse_metadata(json.dumps(det), "m")["max_det"] == 100
    with pytest.raises(ModelFormatError, match="lacks nms_thresh"):
        parse_metadata(json.dumps({k: v for k, v in det.items() if k != "nms_thresh"}), "m")
    with pytest.raises(ModelFormatError, match="must have outputs"):
        parse_metadata(json.dumps({**det, "outputs": ["probs", "logits"]}), "m")
    with pytest.raises(ModelFormatError, match="task 'pose'"):
        parse_metadata(json.dumps({**det, "task": "pose"}), "m")


# --- a trained detector through export_onnx and the CLI ----------------------------------------------------------
@pytest.fixture(scope="module")
def det_ckpt(tmp_path_factory, fmnist_test):
    """A tiny scenes detector trained for 40 steps (so it detects garments), saved as a vitlab checkpoint, and
    the scenes it came from (64 px train, 96 px test: the letterbox scales)."""
    from vitlab.data.detection import CocoDetectionDataset, DetectionSamples, collate_detection, read_coco
    from vitlab.data.scenes import write_scenes
    from vitlab.tasks import DetectionTask

    root = tmp_path_factory.mktemp("scenes")
    paths = write_scenes(root, {"train": 64, "val": 0, "test": 24}, image_size=96)
    torch.manual_seed(0)
    task = DetectionTask("vitdet_scenes", 10, NAMES, dict(OPTS), optim={"lr": 3e-3}, score_thresh=0.05, max_det=30,
                         topk=200)
    data = DetectionSamples(CocoDetectionDataset(read_coco(paths["train"][1], paths["train"][0]).images),
                            task.model.preprocess)
    items = [data[i] for i in range(len(data))]
    opt = torch.optim.AdamW(task.model.parameters(), lr=3e-3)
    task.train()
    for step in range(40):
        batch = collate_detection([items[(step * 16 + i) % len(items)] for i in range(16)])
        loss = task.model.loss(task(batch["image"]), batch["boxes"], batch["labels"])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "det.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "vitlab_task": "DetectionTask"}, path)
    return path, paths["test"]


@needs_fmnist
def test_export_report_gates_on_map50_and_writes_detection_metadata(det_ckpt, tmp_path):
    from vitlab_edge.metadata import parse_metadata

    ckpt, (images, annotations) = det_ckpt
    res = export_onnx(ckpt, tmp_path, ["fp32", "fp16", "int8"], eval_data=(images, annotations))
    report = json.loads((tmp_path / "report.json").read_text())
    for name, prec in (("model.onnx", "fp32"), ("model.fp16.onnx", "fp16"), ("model.int8.onnx", "int8")):
        rep = report[name]
        assert rep["status"] == "ok" and rep["precision"] == prec and rep["eval_images"] == 24
        assert rep["fused_attention_nodes"] == 2 and rep["node_counts"]["NonMaxSuppression"] == 1
        assert rep["map50_drop_pp"] <= {"fp32": 0.1, "fp16": 0.5, "int8": 1.0}[prec]
        model = onnx.load(tmp_path / name)
        meta = parse_metadata({p.key: p.value for p in model.metadata_props}["vitlab"], name)
        assert meta["task"] == "detection" and meta["resize"] == "letterbox" and meta["labels"] == NAMES
        assert meta["outputs"] == OUTPUTS and meta["input_size"] == [3, 64, 64] and meta["precision"] == prec
        assert (meta["score_thresh"], meta["nms_thresh"], meta["max_det"], meta["topk"]) == (0.05, 0.6, 30, 200)
        assert meta["class_agnostic"] is False
    fp32 = report["model.onnx"]
    assert fp32["map50_torch_pct"] > 1.0  # it learned something: the gate means something
    assert fp32["matched_detections_pct"] == 100.0 and fp32["num_dets_equal_pct"] == 100.0
    assert fp32["min_matched_iou"] >= 0.99 and fp32["max_abs_diff_matched_scores"] <= 1e-3
    assert abs(fp32["map50_drop_pp"]) <= 0.1 and res["fp32"].summary.startswith("mAP50")


@needs_fmnist
def test_cli_exports_a_detection_checkpoint(det_ckpt, tmp_path, capsys):
    from vitlab.cli import main

    ckpt, (images, annotations) = det_ckpt
    main(["export", str(ckpt), "--out", str(tmp_path), "--eval-data", str(images), str(annotations)])
    assert "mAP50" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model.onnx"]["status"] == "ok" and "map50_onnx_pct" in report["model.onnx"]
    with pytest.raises(VitlabError, match="IMAGES_DIR ANNOTATIONS.json"):
        export_onnx(ckpt, tmp_path, eval_data=str(images))


@needs_fmnist
def test_map50_gate_rejects_without_writing(det_ckpt, tmp_path, monkeypatch):
    from vitlab.onnx import detect

    ckpt, test_split = det_ckpt
    monkeypatch.setitem(detect.MAX_MAP50_DROP_PP, "fp32", -1.0)  # an impossible budget
    with pytest.raises(VitlabError, match=r"mAP50 drop -?0.0\d pp exceeds the fp32 budget"):
        export_onnx(ckpt, tmp_path, eval_data=test_split)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert json.loads((tmp_path / "report.json").read_text())["model.onnx"]["status"] == "rejected"
