"""ONNX export: fused attention per block on both paths, parity with torch, precision gates, metadata, errors."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import vitlab
from tests.conftest import needs_fmnist
from vitlab.errors import VitlabError
from vitlab.onnx import count_fused_attention, export_onnx, rewrite_to_ort_mha
from vitlab.onnx.graph import export_graph
from vitlab.onnx.precision import to_fp16

VARIANTS = {  # timm ViT shapes the exporter must handle: cls token or not, registers, patch sizes, widths
    "cls_token": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)),
    "avg_pool_no_cls": ("vit_tiny_patch16_224", dict(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=3,
                                                     num_heads=2, class_token=False, global_pool="avg")),
    "registers": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4,
                                               reg_tokens=4)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=16, embed_dim=32, depth=2,
                                                               num_heads=2)),
    "conv_stem": ("vitlab_fmnist_cs", {}),
}


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_one_fused_attention_node_per_block_on_both_paths(variant):
    arch, opts = VARIANTS[variant]
    model = vitlab.create_model(arch, num_classes=5, **opts).eval()
    depth = model.backbone.depth
    graph = export_graph(model)
    assert count_fused_attention(graph) == depth
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("Attention") == depth
    # 3-D attention fed by one Split of the QKV projection: no head Transposes / Squeezes / Reshapes left per block
    assert all(_heads(n) == model.backbone.vit.blocks[0].attn.num_heads for n in graph.graph.node
               if n.op_type == "Attention")
    assert ops.count("Split") == depth and ops.count("Transpose") <= 1 and "Squeeze" not in ops
    mha = rewrite_to_ort_mha(graph)
    onnx.checker.check_model(mha)
    assert count_fused_attention(mha) == depth
    assert sum(n.op_type == "MultiHeadAttention" and n.domain == "com.microsoft" for n in mha.graph.node) == depth
    assert not any(n.op_type == "Attention" for n in mha.graph.node)
    c, h, w = model.preprocess.input_size
    x = np.random.default_rng(0).integers(0, 256, (3, c, h, w), dtype=np.uint8)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    for g in (graph, mha):
        probs, logits = _session(g).run(["probs", "logits"], {"images": x})
        np.testing.assert_allclose(logits, ref, atol=1e-4)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # fp16 of an untrained model: equal LayerNorm weights are merged into one initializer by the exporter
    half = to_fp16(mha)
    assert count_fused_attention(half) == depth
    np.testing.assert_allclose(_session(half).run(["logits"], {"images": x})[0], ref, atol=2e-2)


def _heads(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "q_num_heads"), None)


def test_attention_the_split_pattern_does_not_fit_is_still_3d_and_exact():
    """qk-norm puts a LayerNorm between the head split and the attention: Transposes around the 3-D node instead."""
    model = vitlab.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, embed_dim=48,
                                depth=2, num_heads=3).eval()
    for block in model.backbone.vit.blocks:  # timm's qk_norm=True, set after the fact
        block.attn.q_norm, block.attn.k_norm = torch.nn.LayerNorm(16), torch.nn.LayerNorm(16)
    graph = export_graph(model)
    attention = [n for n in graph.graph.node if n.op_type == "Attention"]
    assert len(attention) == 2 and all(_heads(n) == 3 for n in attention)
    assert [n.op_type for n in graph.graph.node].count("Transpose") > 1  # the fallback wrap, not the Split
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    for g in (graph, rewrite_to_ort_mha(graph)):
        np.testing.assert_allclose(_session(g).run(["logits"], {"images": x})[0], ref, atol=1e-4)


@pytest.mark.parametrize("opset", [17, 22, 26])
def test_unsupported_opset_is_one_clear_error(opset):
    model = vitlab.create_model("vitlab_tiny", num_classes=3)
    with pytest.raises(VitlabError, match=f"opset {opset} is not supported"):
        export_graph(model, opset=opset)


def test_unsupported_source_is_one_clear_error(tmp_path):
    with pytest.raises(VitlabError, match="cannot export a Linear"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path)
    with pytest.raises(VitlabError, match="precision 'int4'"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path, precision="int4")
    with pytest.raises(VitlabError, match="does not exist"):
        export_onnx(tmp_path / "missing.ckpt", tmp_path)


@needs_fmnist
def test_export_report_metadata_and_parity(exported, trained_ckpt, fmnist_test):
    out = exported["fp32"].parent
    report = json.loads((out / "report.json").read_text())
    task = vitlab.load(trained_ckpt)
    for name, prec in (("model.onnx", "fp32"), ("model.int8.onnx", "int8")):
        rep = report[name]
        assert rep["status"] == "ok" and rep["precision"] == prec and rep["eval_images"] == 1000
        assert rep["fused_attention_nodes"] == task.model.backbone.depth == 2
        assert abs(rep["accuracy_drop_pp"]) <= {"fp32": 0.1, "int8": 1.0}[prec]
        assert rep["accuracy_torch_pct"] > 70  # a model that learned something: the gate means something
        model = onnx.load(out / name)
        meta = json.loads({p.key: p.value for p in model.metadata_props}["vitlab"])
        assert meta["precision"] == prec and meta["labels"][9] == "Ankle boot" and meta["input_size"] == [1, 28, 28]
        assert meta["attention"] == "onnx" and meta["opset"] == 23 and meta["backbone"] == "vitlab_fmnist"
    assert report["model.onnx"]["top1_agreement_pct"] == 100.0
    int8 = onnx.load(out / "model.int8.onnx")
    assert count_fused_attention(int8) == 2 and not any(n.op_type == "QAttention" for n in int8.graph.node)
    # parity at batch 1, 3 and 8 on real images, with a fresh session on the reloaded file
    images = fmnist_test[0][:8, None]
    with torch.no_grad():
        ref = task.model(torch.from_numpy(images)).numpy()
    sess = ort.InferenceSession(str(exported["fp32"]), providers=["CPUExecutionProvider"])
    for n in (1, 3, 8):
        probs, logits = sess.run(None, {"images": images[:n]})
        np.testing.assert_allclose(logits, ref[:n], atol=1e-4)
        assert (probs.argmax(1) == ref[:n].argmax(1)).all()


@needs_fmnist
def test_accuracy_gate_rejects_without_writing(trained_ckpt, tmp_path, monkeypatch):
    from vitlab.onnx import report

    monkeypatch.setitem(report.MAX_ACC_DROP_PP, "fp16", -1.0)  # an impossible budget: every variant fails it
    with pytest.raises(VitlabError, match="exceeds the fp16 budget"):
        export_onnx(trained_ckpt, tmp_path, "fp16", num_eval=200)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no model, no temp file left behind
    assert json.loads((tmp_path / "report.json").read_text())["model.fp16.onnx"]["status"] == "rejected"
    res = export_onnx(trained_ckpt, tmp_path, "fp16", num_eval=200, allow_degraded=True, attention="ort-mha")
    assert res["fp16"].path.is_file() and res["fp16"].report["status"] == "degraded"
    assert count_fused_attention(onnx.load(res["fp16"].path)) == 2


@needs_fmnist
def test_a_new_export_leaves_no_file_of_an_earlier_one(trained_ckpt, tmp_path, monkeypatch):
    """An earlier export's int8 / fp16 files must not sit beside a new export as if they were its own: a variant
    rejected now removes its old file, and precisions not written now are removed with their report entries."""
    from vitlab.onnx import report

    export_onnx(trained_ckpt, tmp_path, ["fp32", "fp16", "int8"], num_eval=200)
    assert {p.name for p in tmp_path.glob("*.onnx")} == {"model.onnx", "model.fp16.onnx", "model.int8.onnx"}
    monkeypatch.setitem(report.MAX_ACC_DROP_PP, "int8", -1.0)  # this time int8 is rejected
    with pytest.raises(VitlabError, match="exceeds the int8 budget"):
        export_onnx(trained_ckpt, tmp_path, ["fp32", "int8"], num_eval=200)
    assert not (tmp_path / "model.int8.onnx").exists()
    monkeypatch.undo()
    export_onnx(trained_ckpt, tmp_path, ["fp32"], num_eval=200)
    assert {p.name for p in tmp_path.glob("*.onnx")} == {"model.onnx"}
    assert set(json.loads((tmp_path / "report.json").read_text())) == {"model.onnx"}


@needs_fmnist
def test_cli_export_and_missing_eval_data(trained_ckpt, tmp_path, capsys):
    from vitlab.cli import main

    main(["export", str(trained_ckpt), "--out", str(tmp_path), "--num-eval", "300", "--attention", "ort-mha"])
    assert "model.onnx" in capsys.readouterr().out
    assert (tmp_path / "model.onnx").is_file()
    other = vitlab.create_model("vitlab_tiny", num_classes=3)  # not a Fashion-MNIST model: needs eval data
    with pytest.raises(VitlabError, match="no held-out images"):
        export_onnx(other, tmp_path)


@needs_fmnist
def test_static_int8_is_calibrated_qdq_and_keeps_fused_attention(trained_ckpt, tmp_path):
    res = export_onnx(trained_ckpt, tmp_path, "int8", calib_data="fashion-mnist", num_calib=128, num_eval=500)
    rep = res["int8"].report
    assert rep["int8_mode"] == "static" and rep["status"] == "ok" and rep["fused_attention_nodes"] == 2
    assert rep["node_counts"].get("QuantizeLinear", 0) > 0 and rep["node_counts"].get("DequantizeLinear", 0) > 0
    meta = json.loads({p.key: p.value for p in onnx.load(res["int8"].path).metadata_props}["vitlab"])
    assert meta["int8_mode"] == "static" and meta["precision"] == "int8"
