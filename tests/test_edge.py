"""The torch-free edge kit: same answers as torch on real images, no torch import, clear errors."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from vitlab_edge import EdgeModel, ModelFormatError
from vitlab_edge.cli import main as edge_main

import vitlab
from tests.conftest import needs_fmnist

pytestmark = needs_fmnist


@pytest.fixture()
def photo_dir(tmp_path, fmnist_test):
    """Real Fashion-MNIST images as files, some resized to RGB photos of other sizes, plus bad inputs."""
    images, _ = fmnist_test
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(6):
        Image.fromarray(images[i]).save(d / f"{i}.png")
    for i in range(6, 9):  # colour, 3x larger, not square: the kit must resize and convert like vitlab does
        Image.fromarray(images[i]).convert("RGB").resize((84, 70), Image.BICUBIC).save(d / f"{i}.jpg", quality=95)
    (d / "9_empty.png").write_bytes(b"")
    (d / "10_text.jpg").write_text("not an image")
    return d


def _torch_reference(ckpt, files):
    from vitlab.inference.io import read_image

    task = vitlab.load(ckpt)
    pre = task.preprocess
    batch = np.stack([pre.prepare(read_image(f)) for f in files])
    with torch.no_grad():
        return task.model(torch.from_numpy(batch)).softmax(-1).numpy()


def test_edge_kit_matches_torch_without_importing_torch(exported, trained_ckpt, photo_dir):
    files = sorted(photo_dir.iterdir(), key=lambda p: int(p.name.split(".")[0].split("_")[0]))
    code = (
        "import json, sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
        "from vitlab_edge import EdgeModel\n"
        f"m = EdgeModel({str(exported['fp32'])!r})\n"
        f"recs = m.predict({[str(f) for f in files]!r}, batch_size=4, topk=10)\n"
        "assert not any(k == 'torch' or k.startswith('torch.') for k, v in sys.modules.items() if v is not None)\n"
        "print(json.dumps(recs))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    recs = json.loads(res.stdout)
    assert [r["index"] for r in recs] == list(range(len(files)))  # one record per input, in order
    good = [r for r in recs if r["error"] is None]
    assert [r["source"] for r in recs if r["error"]] == [str(files[9]), str(files[10])]
    assert "empty file" in recs[9]["error"] and "UnidentifiedImageError" in recs[10]["error"]
    ref = _torch_reference(trained_ckpt, files[:9])
    assert [r["class_id"] for r in good] == ref.argmax(1).tolist()
    for r, p in zip(good, ref):
        probs = np.array([t["prob"] for t in sorted(r["topk"], key=lambda t: t["class_id"])])
        np.testing.assert_allclose(probs, p, atol=1e-5)


def test_edge_inputs_of_any_size_and_channels(exported, fmnist_test):
    model = EdgeModel(exported["fp32"], providers=["CPUExecutionProvider"])
    assert model.providers == ["CPUExecutionProvider"] and model.input_size == (1, 28, 28)
    img = fmnist_test[0][0]
    rgb_big = np.asarray(Image.fromarray(img).convert("RGB").resize((56, 56), Image.NEAREST))
    rgba = np.dstack([np.repeat(img[:, :, None], 3, 2), np.full((28, 28), 255, np.uint8)])
    recs = model.predict([img, img[:, :, None], rgba, rgb_big, Image.fromarray(img), np.zeros((4, 4), np.float32)])
    assert len({r["class_id"] for r in recs[:5]}) == 1  # same picture, five layouts, one answer
    assert "uint8" in recs[5]["error"] and recs[5]["class_id"] is None
    with pytest.raises(ValueError, match=r"uint8 \[N, 1, 28, 28\]"):
        model.run(np.zeros((1, 3, 28, 28), np.uint8))


def test_edge_refuses_bad_model_files(exported, tmp_path):
    good = exported["fp32"].read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 100)
    foreign = onnx.load(exported["fp32"])  # a valid ONNX model without vitlab's metadata
    del foreign.metadata_props[:]
    onnx.save(foreign, tmp_path / "foreign.onnx")
    bad_meta = onnx.load(exported["fp32"])
    for p in bad_meta.metadata_props:
        if p.key == "vitlab":
            p.value = json.dumps({"format": 1, "task": "classification"})
    onnx.save(bad_meta, tmp_path / "partial.onnx")
    cases = {"trunc.onnx": "not a loadable ONNX model", "junk.onnx": "not a loadable ONNX model",
             "foreign.onnx": "no 'vitlab' metadata", "partial.onnx": "lacks labels", "none.onnx": "no such model"}
    for name, msg in cases.items():
        with pytest.raises(ModelFormatError, match=msg):
            EdgeModel(tmp_path / name)


def test_edge_cli_writes_one_record_per_input(exported, photo_dir, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    assert edge_main(["predict", str(exported["int8"]), str(photo_dir), "--out", str(out), "--topk", "2"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 11 and sum(r["error"] is not None for r in lines) == 2
    assert all(len(r["topk"]) == 2 for r in lines if r["error"] is None)
    assert "11 records (2 errors)" in capsys.readouterr().out
    assert edge_main(["predict", str(photo_dir / "0.png"), str(photo_dir), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    assert "not a loadable ONNX model" in capsys.readouterr().err


def test_edge_kit_depends_on_onnxruntime_numpy_pillow_only():
    import re

    import tomllib

    from tests.conftest import REPO

    deps = tomllib.loads((REPO / "export" / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=;\s\[]", d, maxsplit=1)[0].lower() for d in deps}
    assert names == {"numpy", "pillow", "onnxruntime", "onnxruntime-gpu"}
