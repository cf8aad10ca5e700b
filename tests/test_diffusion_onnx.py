"""Generation export: one guided denoiser step as ONNX (fused attention, dynamic batch, metadata), samples equal to
the checkpoint's from the same seed, the torch-free Sampler and `vitlab-edge sample`."""

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from vitlab_edge import ModelFormatError, Sampler
from vitlab_edge.cli import main as edge_main

import vitlab
from vitlab.errors import VitlabError
from vitlab.onnx import count_fused_attention, export_onnx
from vitlab.onnx.generate import PER_CLASS, SEED, GenerationExport, step_examples
from vitlab.onnx.graph import export_graph, get_metadata, model_metadata, set_metadata

LABELS = [f"class{i}" for i in range(10)]
STEPS = 4


def _tiny_task():
    from vitlab.tasks import DiffusionTask

    torch.manual_seed(0)
    task = DiffusionTask(model_name="dit_fmnist_tiny", class_names=LABELS, sample_steps=STEPS, guidance=2.0,
                         optim={"lr": 1e-2}, ema_decay=0.5)
    opt = torch.optim.AdamW(task.model.parameters(), lr=1e-2)
    for _ in range(5):  # a few steps, so that the EMA weights (the exported ones) differ from the init
        batch = {"image": torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8), "target": torch.arange(8)}
        loss = task._loss(task.model, batch, drop_labels=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for e, p in zip(task.ema.parameters(), task.model.parameters(), strict=True):
                e.lerp_(p, 0.5)
    return task.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    task = _tiny_task()
    path = tmp_path_factory.mktemp("diffusion") / "diffusion.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "vitlab_task": "DiffusionTask"}, path)
    return path


@pytest.fixture(scope="module")
def exported(ckpt):
    out = ckpt.parent / "onnx"
    results = export_onnx(ckpt, out, ["fp32", "fp16"], allow_degraded=True)
    return out, results


def test_export_writes_one_step_with_fused_attention_and_generation_metadata(exported):
    out, results = exported
    model = onnx.load(out / "model.onnx")
    depth = vitlab.load(out.parent / "diffusion.ckpt").ema.cfg.depth
    assert count_fused_attention(model) == depth == 2
    assert [i.name for i in model.graph.input] == ["x", "t", "y", "guidance"]
    assert [o.name for o in model.graph.output] == ["v"]
    meta = get_metadata(model)
    assert meta["task"] == "generation" and meta["labels"] == LABELS and meta["input_size"] == [1, 28, 28]
    assert meta["objective"] == "rectified_flow" and meta["steps"] == STEPS and meta["guidance"] == 2.0
    assert meta["sampler"] == "euler" and meta["null_class"] == 10 and meta["pixel_scale"] == 127.5
    assert meta["input_dtype"] == "float32" and meta["depth"] == depth and meta["precision"] == "fp32"
    assert meta["mean"] == [0.5] and meta["std"] == [0.5]


def test_onnx_samples_equal_the_checkpoints(exported, ckpt):
    out, results = exported
    report = json.loads((out / "report.json").read_text())
    fp32 = report["model.onnx"]
    assert fp32["status"] == "ok" and fp32["eval_samples"] == 20 and fp32["steps"] == STEPS
    # measured on CPU (2026-12): fp32 mean |Δ| 0.0, max 0; fp16 mean 0.038, max 1 (uint8 levels): ~4x margin
    assert fp32["mean_abs_diff_px"] <= 0.05 and fp32["max_abs_diff_px"] <= 1, fp32
    fp16 = report["model.fp16.onnx"]
    assert fp16["status"] == "ok" and fp16["mean_abs_diff_px"] <= 0.15 and fp16["max_abs_diff_px"] <= 2, fp16
    # the report's figures are what the written files do: resample both files here and compare with the checkpoint
    labels = np.repeat(np.arange(10), PER_CLASS)[:20]
    ref = vitlab.load(ckpt).sample(labels, seed=SEED)
    for name in ("model.onnx", "model.fp16.onnx"):
        got = Sampler(out / name, providers=["CPUExecutionProvider"]).sample(labels, seed=SEED)
        diff = np.abs(got.astype(int) - ref.astype(int))
        assert report[name]["mean_abs_diff_px"] == pytest.approx(diff.mean(), abs=1e-4), name
        assert report[name]["max_abs_diff_px"] == diff.max(), name


def test_dynamic_batch_and_the_step_equals_guided(exported, ckpt):
    task = vitlab.load(ckpt)
    session = ort.InferenceSession(str(exported[0] / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5):  # traced at batch 3
        ex = step_examples((1, 28, 28), 10, n)
        with torch.no_grad():
            ref = task.ema.guided(*ex.values()).numpy()
        v = session.run(["v"], {k: t.numpy() for k, t in ex.items()})[0]
        assert v.shape == (n, 1, 28, 28)
        np.testing.assert_allclose(v, ref, atol=1e-4)


def test_edge_sampler_without_torch_matches_the_export(exported, ckpt):
    path = exported[0] / "model.onnx"
    code = (
        "import sys, numpy as np\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
        "from vitlab_edge import Sampler\n"
        f"s = Sampler({str(path)!r}, providers=['CPUExecutionProvider'])\n"
        "img = s.sample(['class3', 7, 'class0'], seed=5, batch_size=2)\n"
        "assert not any(k == 'torch' or k.startswith('torch.') for k, v in sys.modules.items() if v is not None)\n"
        "sys.stdout.buffer.write(img.tobytes())\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    edge = np.frombuffer(res.stdout, np.uint8).reshape(3, 28, 28, 1)
    sampler = Sampler(path, providers=["CPUExecutionProvider"])
    assert sampler.labels == LABELS and sampler.input_size == (1, 28, 28) and sampler.num_classes == 10
    np.testing.assert_array_equal(edge, sampler.sample([3, 7, 0], seed=5))
    ref = vitlab.load(ckpt).sample([3, 7, 0], seed=5)
    assert np.abs(edge.astype(int) - ref.astype(int)).mean() <= 0.05  # fp32: measured 0.0


def test_both_samplers_take_the_no_label_id(exported, ckpt):
    """Id ``num_classes`` (the metadata's ``null_class``) is "no label" for the edge kit's Sampler and for
    ``vitlab.Sampler`` over either file; one past it is refused by both."""
    path = exported[0] / "model.onnx"
    edge = Sampler(path, providers=["CPUExecutionProvider"])
    ids = [10, 4]
    images = edge.sample(ids, seed=2)
    onnx_api = vitlab.Sampler.load(path, providers=["CPUExecutionProvider"])
    torch_api = vitlab.Sampler.load(ckpt, device="cpu")
    np.testing.assert_array_equal(onnx_api.sample(ids, seed=2), images)
    assert np.abs(torch_api.sample(ids, seed=2).astype(int) - images.astype(int)).mean() <= 0.05
    assert onnx_api.num_classes == torch_api.num_classes == edge.num_classes == 10
    with pytest.raises(ValueError, match="out of range"):
        edge.sample([11])
    for api in (onnx_api, torch_api):
        with pytest.raises(VitlabError, match="out of range"):
            api.sample([11])


def test_edge_cli_sample_writes_a_grid_and_says_bad_input_in_one_line(exported, tmp_path, capsys):
    path = exported[0] / "model.onnx"
    grid = tmp_path / "grid.png"
    assert edge_main(["sample", str(path), "--per-class", "2", "--steps", "2", "--out", str(grid),
                 "--providers", "CPUExecutionProvider"]) == 0
    w, h = Image.open(grid).size
    assert (w, h) == (2 * 56 + 3 * 2, 10 * 56 + 11 * 2)  # one row per class, 2 columns, 28 px upscaled to 56
    one = tmp_path / "one.png"
    assert edge_main(["sample", str(path), "--labels", "class1", "4", "--out", str(one), "--seed", "3"]) == 0
    assert Image.open(one).size == (2 * 56 + 3 * 2, 56 + 2 * 2)
    assert edge_main(["info", str(path)]) == 0
    assert '"task": "generation"' in capsys.readouterr().out
    assert edge_main(["sample", str(path), "--labels", "dog", "--out", str(tmp_path / "x.png")]) == 2
    assert edge_main(["sample", str(path), "--labels", "11", "--out", str(tmp_path / "x.png")]) == 2
    assert edge_main(["predict", str(path), str(tmp_path), "--out", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "'dog' is not one of this model's labels" in err[0]
    assert "out of range" in err[1] and "vitlab-edge sample" in err[2]
    assert not (tmp_path / "x.png").exists()


def test_sampler_refuses_a_classifier_and_export_refuses_eval_data(ckpt, tmp_path):
    clf = vitlab.create_model("vitlab_tiny", num_classes=3)
    graph = export_graph(clf)
    set_metadata(graph, model_metadata(clf, "vitlab_tiny"))
    onnx.save(graph, tmp_path / "clf.onnx")
    with pytest.raises(ModelFormatError, match="classification model, not a generator"):
        Sampler(tmp_path / "clf.onnx")
    piece = GenerationExport(vitlab.load(ckpt), {})
    with pytest.raises(VitlabError, match="takes no eval data"):
        piece.prepare("fashion-mnist", 10)
