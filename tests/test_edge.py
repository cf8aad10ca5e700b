"""The torch-free edge kit: same answers as torch on real images, no torch import, clear errors."""

import io
import json
import re
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
    captured = capsys.readouterr()
    assert "11 records (2 errors)" in captured.out and "ETA" not in captured.err  # no bar when not a terminal
    csv_out = tmp_path / "preds.csv"
    assert edge_main(["predict", str(exported["int8"]), str(photo_dir), "--out", str(csv_out), "--topk", "2"]) == 0
    from vitlab.inference.writers import read_records

    rows = read_records(csv_out)
    assert [(r["source"], r["label"] or None, r["error"], r["topk"]) for r in rows] == \
        [(r["source"], r["label"], r["error"], r["topk"]) for r in lines]  # CSV: an empty cell for None
    assert edge_main(["predict", str(photo_dir / "0.png"), str(photo_dir), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert not (tmp_path / "x.jsonl").exists()
    assert "not a loadable ONNX model" in capsys.readouterr().err
    assert edge_main(["predict", str(exported["int8"]), str(photo_dir), "--out", str(tmp_path / "x.txt")]) == 2
    assert "use a .jsonl or .csv" in capsys.readouterr().err


def test_names_that_match_nothing_are_one_line_errors_in_both_clis(exported, photo_dir, tmp_path, capsys):
    from vitlab.cli import main as vitlab_main

    (tmp_path / "empty").mkdir()
    for name, msg in [(str(photo_dir / "*.bmp"), "matches no files"), (str(tmp_path / "empty"), "no image files")]:
        args = ["predict", str(exported["fp32"]), str(photo_dir / "0.png"), name, "--out", str(tmp_path / "p.jsonl")]
        assert edge_main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vitlab-edge: error:") and msg in err[0] and name in err[0]
        with pytest.raises(SystemExit) as exit_info:
            vitlab_main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("vitlab: error:") and msg in err[0]
    assert not (tmp_path / "p.jsonl").exists()


def assert_same_topk(a: dict, b: dict) -> None:
    """The same ranking, and probabilities equal up to float noise (batches of other sizes round differently)."""
    assert [t["class_id"] for t in a["topk"]] == [t["class_id"] for t in b["topk"]]
    np.testing.assert_allclose([t["prob"] for t in a["topk"]], [t["prob"] for t in b["topk"]], atol=1e-6)


def test_edge_kit_and_predictor_give_the_same_records(exported, fmnist_test, tmp_path):
    """Same mixed inputs -> the same records: paths, PIL images (EXIF-rotated, broken), RGBA/LA arrays, a .txt item
    of a list (an input, not a list to expand), a missing file, and every multi-frame / read-only format."""
    from tests.test_io import write_frame_corpus

    img = fmnist_test[0][7]
    Image.fromarray(img).save(tmp_path / "a.png")
    (tmp_path / "list.txt").write_text("a.png\na.png\n")
    upright = np.repeat(img[:, 3:, None], 3, 2)  # 28x25: not square, so a missed rotation changes the input
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer rotates 90 degrees clockwise: store the pixels rotated back
    buf = io.BytesIO()
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", exif=exif, quality=95)
    (tmp_path / "rotated.jpg").write_bytes(buf.getvalue())
    alpha = np.full_like(img, 255)
    alpha[:, :14] = 0  # the left half transparent: white once composited
    frames = write_frame_corpus(tmp_path / "frames")
    inputs = [str(tmp_path / "a.png"), Image.fromarray(img), Image.open(io.BytesIO(buf.getvalue())),
              Image.open(io.BytesIO(buf.getvalue()[:-100])), np.dstack([img, img, img, alpha]),
              np.dstack([img, alpha]), *(str(tmp_path / f) for f in ("list.txt", "missing.png", "rotated.jpg")),
              *map(str, frames), *(expected for expected, tol in frames.values() if tol == 0)]
    edge = EdgeModel(exported["fp32"], providers=["CPUExecutionProvider"]).predict(inputs, batch_size=4, topk=3)
    pred = vitlab.Predictor.load(exported["fp32"], providers=["CPUExecutionProvider"])
    ref = [p.to_dict() for p in pred.predict(inputs, batch_size=4, num_workers=0, topk=3)]
    assert [r["index"] for r in edge] == [r["index"] for r in ref] == list(range(len(inputs)))
    for e, r in zip(edge, ref):
        assert {k: e[k] for k in ("source", "label", "class_id", "error")} == \
            {k: r[k] for k in ("source", "label", "class_id", "error")}, e["source"]
        np.testing.assert_allclose([t["prob"] for t in e["topk"]], [t["prob"] for t in r["topk"]], atol=1e-5)
    errors = {e["source"]: e["error"] for e in edge if e["error"]}
    assert list(errors) == ["<JpegImageFile 3>", str(tmp_path / "list.txt"), str(tmp_path / "missing.png")]
    assert "truncated" in errors["<JpegImageFile 3>"] and "UnidentifiedImageError" in errors[str(tmp_path / "list.txt")]
    assert_same_topk(edge[2], edge[8])  # the in-memory photo is turned upright like its file
    white = np.where(alpha[:, :, None] == 0, 255, np.repeat(img[:, :, None], 3, 2)).astype(np.uint8)
    assert_same_topk(edge[4], edge[5])
    assert_same_topk(edge[4], EdgeModel(exported["fp32"]).predict([white], topk=3)[0])
    files = edge[9:9 + len(frames)]
    assert [r["source"] for r in files] == list(map(str, frames)) and all(r["error"] is None for r in files)
    exact = [r for r, (expected, tol) in zip(files, frames.values()) if tol == 0]
    for file_rec, frame_rec in zip(exact, edge[9 + len(frames):], strict=True):  # a file answers like its frame
        assert file_rec["source"] != frame_rec["source"]
        assert_same_topk(file_rec, frame_rec)


def test_edge_kit_depends_on_numpy_pillow_and_one_runtime_extra():
    import re

    from tests.conftest import REPO

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; vitlab itself runs on 3.10

    project = tomllib.loads((REPO / "export" / "pyproject.toml").read_text())["project"]
    names = lambda deps: {re.split(r"[<>=;\s\[]", d, maxsplit=1)[0].lower() for d in deps}  # noqa: E731
    assert names(project["dependencies"]) == {"numpy", "pillow", "tqdm"}
    extras = project["optional-dependencies"]
    assert names(extras["cpu"]) == {"onnxruntime"} and names(extras["gpu"]) == {"onnxruntime-gpu"}


def test_missing_runtime_is_one_line_naming_the_extras(exported, monkeypatch, capsys):
    from vitlab_edge import RuntimeMissingError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # any 'import onnxruntime' now raises ImportError
    with pytest.raises(RuntimeMissingError, match=r"vitlab-edge\[cpu\].*vitlab-edge\[gpu\]"):
        EdgeModel(exported["fp32"])
    assert edge_main(["info", str(exported["fp32"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'vitlab-edge[cpu]'" in err[0]


def test_edge_model_progress(exported, fmnist_test, capsys):
    """The bar itself is tested with vitlab's (tests/test_predict.py): the same code. Here: EdgeModel's switch."""
    model = EdgeModel(exported["fp32"], providers=["CPUExecutionProvider"])
    assert len(model.predict([fmnist_test[0][0]] * 3, batch_size=2)) == 3
    assert capsys.readouterr().err == ""  # silent by default
    assert len(model.predict([fmnist_test[0][0]] * 3, batch_size=2, progress=True)) == 3
    assert re.fullmatch(r"predict: 3 img in [\d.]+ s \([\d.]+ img/s\)\n", capsys.readouterr().err)  # no terminal


def test_edge_options_out_of_range_are_one_line_before_the_model_loads(photo_dir, tmp_path, monkeypatch, capsys):
    import vitlab_edge.cli as edge_cli

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(edge_cli, "EdgeModel", no_model)
    monkeypatch.setattr(edge_cli, "Sampler", no_model)
    cases = [(["predict", "m.onnx", str(photo_dir), "--out", str(tmp_path / "p.jsonl"), "--batch-size", "0"],
              "--batch-size must be >= 1, got 0"),
             (["predict", "m.onnx", str(photo_dir), "--out", str(tmp_path / "p.jsonl"), "--batch-size", "-2"],
              "--batch-size must be >= 1, got -2"),
             (["sample", "g.onnx", "--per-class", "0", "--out", str(tmp_path / "g.png")],
              "--per-class must be >= 1, got 0"),
             (["sample", "g.onnx", "--labels", "1", "--steps", "0", "--out", str(tmp_path / "g.png")],
              "--steps must be >= 1, got 0")]
    for args, message in cases:
        assert edge_main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"vitlab-edge: error: {message}"]
    assert [p.name for p in tmp_path.iterdir()] == [photo_dir.name]  # nothing written


@pytest.mark.parametrize("vendor, family, model, flags, want", [
    ("AuthenticAMD", 25, 1, {"avx2"}, "Zen 3"),
    ("AuthenticAMD", 25, 17, {"avx2", "avx512f"}, "Zen 4"),
    ("GenuineIntel", 6, 207, {"avx512f", "amx_tile"}, "Emerald Rapids"),
    ("GenuineIntel", 6, 143, {"avx512f", "amx_tile"}, "Sapphire Rapids"),
    ("GenuineIntel", 6, 999, {"avx2"}, None),
    ("AuthenticAMD", None, None, set(), None),
])
def test_machine_block_names_the_micro_architecture(vendor, family, model, flags, want):
    from vitlab_edge.machine import _uarch

    assert _uarch(vendor, family, model, flags) == want
