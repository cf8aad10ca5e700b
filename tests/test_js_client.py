"""The JavaScript client (export/js: Node CLI + library) and the web page (export/web, in headless Chromium) against
the Python edge kit on the same exported files and the same real photos: identical model inputs (Pillow's JPEG draft
decoding and resampling reproduced in JS; GIF, WebP and BMP by the browser's decoders), the same records
(classification, detection and embedding, fp32 and int8: 7-bit int8 weights make integer products exact in every
runtime, see vitlab.onnx.precision), the same output files as `vitlab-edge predict` (JSONL, CSV, COCO), the same
journal (a run killed in one CLI is resumed by the other), the same diffusion samples from the same noise, one JS
decoder per Python-kit task, and the page on WebGPU (SwiftShader's software adapter) where Chromium offers one.

Skips (with the reason) only when Node, export/js/node_modules (`npm ci` in export/js) or, for the browser tests,
Chromium and export/web/vendor (`npm run vendor` in export/js) are missing; CI installs them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from vitlab_edge import EdgeModel, Sampler
from vitlab_edge.sampling import initial_noise
from vitlab_edge.tasks import EDGE_TASKS

import vitlab
from tests.js_files import detector, eval_folder, generator, int8_variant, with_metadata, write_formats, write_photos

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


# --- photos and models (made by tests/js_files.py) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    files = write_photos(tmp_path_factory.mktemp("photos") / "photos")
    good = [f for f in files if not f.name.startswith("zz_")]
    return {"dir": files[0].parent, "files": files, "good": good}


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    return write_formats(tmp_path_factory.mktemp("formats") / "formats")


GEN_LABELS = [0, 3, 7, 10]  # 10: no label


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    ev = eval_folder(out / "eval")
    torch.manual_seed(0)
    clf = vitlab.create_model("vitlab_tiny", num_classes=3)
    with torch.no_grad():  # spread the untrained head's probabilities, so that top-5 bars differ
        clf.head.weight.mul_(30)
    vitlab.export_onnx(clf, out / "cls", ["fp32", "int8"], eval_data=str(ev), allow_degraded=True)
    vitlab.export_onnx(clf, out / "emb", ["fp32", "int8"], eval_data=str(ev), allow_degraded=True, task="embedding")
    cls, det = out / "cls" / "model.onnx", detector(out)
    return {"cls": cls, "cls_int8": out / "cls" / "model.int8.onnx", "emb": out / "emb" / "model.onnx",
            "emb_int8": out / "emb" / "model.int8.onnx", "det": det,
            "det_int8": int8_variant(det, out / "det.int8.onnx"), "gen": generator(out),
            "variants": {  # the same graph described with every resize policy and interpolation (inputs only)
                "center_crop_bicubic": with_metadata(cls, out / "v1.onnx", resize="center_crop",
                                                     interpolation="bicubic", crop_pct=0.875),
                "letterbox_area_48x40": with_metadata(cls, out / "v2.onnx", resize="letterbox",
                                                      interpolation="area", input_size=[3, 48, 40]),
                "squash_nearest": with_metadata(cls, out / "v3.onnx", interpolation="nearest"),
                "grey_bicubic_224": with_metadata(cls, out / "v4.onnx", interpolation="bicubic",
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


def compare_records(js: list[dict], py: list[dict], task: str, prob_tol: float) -> dict:
    """Assert the JS records answer like the Python kit's (top-1 on every image); returns the measured differences."""
    assert len(js) == len(py)
    worst = {"prob": 0.0, "box": 0.0, "score": 0.0, "cos": 1.0}
    for a, b in zip(js, py):
        assert list(a) == list(b), (a.keys(), b.keys())  # same keys, same order
        assert a["index"] == b["index"] and Path(a["source"]) == Path(b["source"])
        assert (a["error"] is None) == (b["error"] is None), (a["source"], a["error"], b["error"])
        if b["error"] is not None:
            continue
        if task == "classification":
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


def py_cli(*args) -> int:
    """`vitlab-edge` (the Python kit's CLI) in this process; its exit status."""
    from vitlab_edge.cli import main

    return main([str(a) for a in args])


# --- tests --------------------------------------------------------------------------------------------------------
def test_js_has_a_decoder_and_the_metadata_rules_for_every_python_task():
    res = node("--input-type=module", "-e",
               "import {DECODERS} from './src/records.js'; import {TASK_KEYS, TASK_OUTPUTS} from './src/metadata.js';"
               "import {IMAGE_EXTENSIONS} from './src/node.js';"
               "console.log(JSON.stringify({decoders: Object.fromEntries(Object.entries(DECODERS).map("
               "([k, d]) => [k, {outputs: d.outputs, fields: d.fields}])), keys: TASK_KEYS, outputs: TASK_OUTPUTS,"
               "extensions: IMAGE_EXTENSIONS}))")
    js = json.loads(res.stdout)
    from vitlab_edge.imaging import IMAGE_EXTENSIONS

    py = {k: {"outputs": list(t.decoder.outputs), "fields": list(t.decoder.fields)}
          for k, t in EDGE_TASKS.items() if t.decoder}
    assert js["decoders"] == py, "a vitlab_edge task without the same JS decoder: add it to export/js/src/records.js"
    assert js["keys"] == {k: list(t.keys) for k, t in EDGE_TASKS.items()}  # vitlab_edge/tasks.py's descriptors
    assert js["outputs"] == {k: list(t.outputs) for k, t in EDGE_TASKS.items()}
    assert js["extensions"] == list(IMAGE_EXTENSIONS)  # a folder gives both CLIs the same inputs (and journal keys)


def test_int8_weights_are_7_bit_so_every_runtime_computes_the_same_products(models):
    """ONNX Runtime's uint8 x int8 kernel on x86 CPUs without VNNI adds neighbouring products in a saturating int16
    (vpmaddubsw): with 8-bit weights it clipped, so the same file answered otherwise than onnxruntime-web's wasm and
    VNNI CPUs (probabilities up to 0.15 apart on these photos, a top-1 flip). Activations are uint8 (0...255):
    weights within [-64, 64] keep every pair within 2 x 255 x 64 = 32,640, and every runtime exact."""
    from onnx import numpy_helper

    for name in ("cls_int8", "emb_int8", "det_int8"):
        model = onnx.load(models[name])
        weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        nodes = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
        assert nodes, f"{name}: no MatMulInteger (dynamic int8)"
        for n in nodes:
            w, zero = weights[n.input[1]], weights[n.input[3]]
            assert w.dtype == np.int8 and np.abs(w.astype(int) - zero.astype(int)).max() <= 64, (name, n.name)


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


TASKS = {"cls": "classification", "cls_int8": "classification", "det": "detection", "det_int8": "detection",
         "emb": "embedding", "emb_int8": "embedding"}


@pytest.mark.parametrize("name", list(TASKS))
def test_node_cli_gives_the_records_of_vitlab_edge(models, photos, name, tmp_path):
    js = js_predict(models[name], [photos["dir"]], tmp_path / "preds.jsonl")
    py = py_predict(models[name], photos["files"])
    compare_records(js, py, TASKS[name], prob_tol=1e-2)
    assert sum(r["error"] is not None for r in js) == 1  # the text file, named like a JPEG


def test_node_says_gif_webp_and_bmp_are_left_to_browsers(models, formats, tmp_path):
    """Node has no decoder for them (a page uses the browser's): an error record naming that, not a wrong answer."""
    records = js_predict(models["cls"], formats, tmp_path / "preds.jsonl")
    assert all("browser's decoder" in (r["error"] or "") for r in records), [r["error"] for r in records]


def _coco_annotations(files: list[Path], path: Path) -> Path:
    images = [{"id": 100 + 3 * i, "file_name": f"photos/{f.name}"} for i, f in enumerate(files)]
    categories = [{"id": 7, "name": "a"}, {"id": 3, "name": "b"}, {"id": 11, "name": "c"}]
    path.write_text(json.dumps({"images": images, "categories": categories, "annotations": []}))
    return path


@pytest.mark.parametrize("name,out", [("cls", "p.jsonl"), ("cls_int8", "p.csv"), ("det", "p.csv"),
                                      ("det_int8", "p.jsonl"), ("emb_int8", "p.csv"), ("det", "coco.json")])
def test_node_cli_writes_the_files_of_vitlab_edge_byte_for_byte(models, photos, name, out, tmp_path):
    """JSONL, CSV and COCO results JSON from `vitlab-edge-js predict` are the bytes `vitlab-edge predict` writes
    (Python's JSON and CSV text, floats as repr; the same ONNX Runtime version gives the same floats)."""
    extra = ["--format", "coco", "--annotations", _coco_annotations(photos["files"], tmp_path / "gt.json")] \
        if out.endswith(".json") else []
    node(CLI, "predict", models[name], photos["dir"], "--out", tmp_path / "js" / out, "--batch-size", 4, *extra)
    assert py_cli("predict", models[name], photos["dir"], "--out", tmp_path / "py" / out, "--batch-size", 4,
                  *extra) == 0
    assert (tmp_path / "js" / out).read_bytes() == (tmp_path / "py" / out).read_bytes()


# `predict` slowed down (each batch waits 0.2 s), so that a kill lands mid-run
SLOW_JS = ("import {EdgeModel} from './src/model.js'; import {main} from './src/cli.js';"
           "const run = EdgeModel.prototype.run;"
           "EdgeModel.prototype.run = async function (...a) { await new Promise((r) => setTimeout(r, 200));"
           "  return run.apply(this, a); };"
           "process.exitCode = await main(process.argv.slice(1));")
SLOW_PY = ("import sys, time\nfrom vitlab_edge import model\nfrom vitlab_edge.cli import main\n"
           "chunk = model.EdgeModel._predict_chunk\n"
           "model.EdgeModel._predict_chunk = lambda self, *a, **k: (time.sleep(0.2), chunk(self, *a, **k))[1]\n"
           "sys.exit(main(sys.argv[1:]))")


def stopped_run(cli: str, args: list, journal: Path, lines: int, sig: int) -> tuple[int, str]:
    """Start a slowed `predict` of ``cli`` ("js" or "py"), send ``sig`` once its journal holds ``lines`` lines;
    (exit status, stderr)."""
    cmd = [NODE, "--input-type=module", "-e", SLOW_JS] if cli == "js" else [sys.executable, "-c", SLOW_PY]
    proc = subprocess.Popen([*cmd, *map(str, args)], cwd=JS, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (journal.is_file() and journal.read_bytes().count(b"\n") >= lines):
        assert proc.poll() is None, ("the run ended before it was stopped", proc.communicate())
        assert time.monotonic() < deadline, "no journal lines in 120 s"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_a_run_killed_in_one_cli_is_resumed_by_the_other(models, photos, tmp_path, capsys):
    """The journal is one format: Node killed (SIGKILL, a line torn) -> Python resumes; Python killed -> Node
    refuses to start over, resumes, is stopped by Ctrl-C -> Python finishes; a COCO run resumes from the journal; a
    finished CSV resumes to itself. Each output is the bytes of an uninterrupted run; the resumed runs predicted
    only the rest."""
    src = tmp_path / "many"
    src.mkdir()
    for k in range(3):  # 57 inputs (3 of them not images)
        for f in photos["files"]:
            shutil.copy(f, src / f"{k}_{f.name}")
    args = ["predict", models["cls"], src, "--batch-size", 1]  # a resumed run batches the rest afresh: no batch
    # composition to change the last bits of a float (or int8's per-batch activation scales)
    assert py_cli(*args, "--out", tmp_path / "ref.jsonl") == 0
    ref = (tmp_path / "ref.jsonl").read_bytes()

    out, journal = tmp_path / "a.jsonl", tmp_path / ".a.jsonl.partial.jsonl"
    rc, _ = stopped_run("js", [*args, "--out", out], journal, 6, signal.SIGKILL)
    kept = journal.read_bytes().count(b"\n")
    assert rc == -signal.SIGKILL and not out.exists() and kept >= 6
    with open(journal, "ab") as f:
        f.write(b'{"index": 40, "source": "')  # a kill in the middle of a line
    capsys.readouterr()
    assert py_cli(*args, "--out", out) == 2  # a journal is there: --resume or delete it
    assert py_cli(*args, "--out", out, "--resume") == 0
    assert f", {kept} from the earlier output" in capsys.readouterr().out
    assert out.read_bytes() == ref and not journal.exists()

    out, journal = tmp_path / "b.jsonl", tmp_path / ".b.jsonl.partial.jsonl"
    rc, _ = stopped_run("py", [*args, "--out", out], journal, 6, signal.SIGKILL)
    first = journal.read_bytes().count(b"\n")
    refused = subprocess.run([NODE, CLI, *map(str, args), "--out", out], capture_output=True, text=True, cwd=JS)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    rc, err = stopped_run("js", [*args, "--out", out, "--resume"], journal, first + 6, signal.SIGINT)
    assert rc == 130 and "interrupted:" in err and "--resume" in err and not out.exists(), err
    kept = journal.read_bytes().count(b"\n")
    assert py_cli(*args, "--out", out, "--resume") == 0
    assert f", {kept} from the earlier output" in capsys.readouterr().out and out.read_bytes() == ref

    gt = _coco_annotations(photos["files"], tmp_path / "gt.json")
    coco = ["predict", models["det"], photos["dir"], "--batch-size", 1, "--format", "coco", "--annotations", gt]
    assert py_cli(*coco, "--out", tmp_path / "ref.json") == 0
    out, journal = tmp_path / "c.json", tmp_path / ".c.json.partial.jsonl"
    stopped_run("js", [*coco, "--out", out], journal, 4, signal.SIGKILL)
    assert py_cli(*coco, "--out", out, "--resume") == 0
    assert out.read_bytes() == (tmp_path / "ref.json").read_bytes()

    for first, then in (("js", "py"), ("py", "js")):  # a finished CSV read back: the same file again
        out = tmp_path / f"{first}.csv"
        if first == "js":
            node(CLI, *args, "--out", out)
        else:
            assert py_cli(*args, "--out", out) == 0
        before = out.read_bytes()
        if then == "js":
            assert ", 57 from the earlier output" in node(CLI, *args, "--out", out, "--resume").stdout
        else:
            assert py_cli(*args, "--out", out, "--resume") == 0
        assert out.read_bytes() == before


@pytest.mark.parametrize("backend", ["onnxruntime-node", "onnxruntime-web"])
@pytest.mark.parametrize("name", ["cls", "cls_int8"])
def test_node_on_identical_tensors_matches_onnxruntime_python(models, photos, backend, name, tmp_path):
    """onnxruntime-node and onnxruntime-web's wasm (what a page runs, here in Node) on vitlab_edge's input tensors:
    one call per image (as the page predicts) and one call on all of them."""
    if not (JS / "node_modules" / backend).is_dir() and not _REQUIRED:
        pytest.skip(f"needs export/js/node_modules/{backend} (cd export/js && npm ci)")
    edge = EdgeModel(models[name], providers=["CPUExecutionProvider"])
    batch = np.stack([edge.preprocess(str(f)) for f in photos["good"]])
    batch.tofile(tmp_path / "in.u8")
    code = ("import {ExportedModel} from './src/model.js'; import {nodePlatform} from './src/node.js';"
            "import fs from 'node:fs'; const [backend, file, input, n] = process.argv.slice(1);"
            "const ort = await import(backend); if (ort.env.wasm) ort.env.wasm.numThreads = 1;"
            "const m = await ExportedModel.open(ort, new Uint8Array(fs.readFileSync(file)), {platform: nodePlatform,"
            " executionProviders: [backend === 'onnxruntime-web' ? 'wasm' : 'cpu']});"
            "const x = new Uint8Array(fs.readFileSync(input)), per = x.length / n, one = [];"
            "for (let i = 0; i < n; i++)"
            "  one.push(...(await m.run(x.slice(i * per, (i + 1) * per), 1, ['probs'])).probs.data);"
            "const all = (await m.run(x, Number(n), ['probs'])).probs.data;"
            "console.log(JSON.stringify({one, all: Array.from(all)}));")
    out = json.loads(node("--input-type=module", "-e", code, backend, models[name], tmp_path / "in.u8",
                          len(batch)).stdout)
    py_one = np.concatenate([edge.run(x[None], ["probs"])["probs"] for x in batch])
    py_all = edge.run(batch, ["probs"])["probs"]
    # int8 in wasm, 18 images in one call: 2.3e-4 measured. Its activations are quantised per call (scale = range
    # / 255 of the whole batch), and fp32 kernels (the patch Conv, LayerNorm) differ from native ones in the last
    # bit (128-bit SIMD vs AVX2 sums), which moves a few activations of a large batch across a rounding step. One
    # image per call, as the page predicts: <= 1e-7 measured. (The integer products are exact: the test above.)
    tol_all = 1e-3 if name.endswith("int8") and backend == "onnxruntime-web" else 1e-4
    for js, py, tol in ((out["one"], py_one, 1e-4), (out["all"], py_all, tol_all)):
        js = np.array(js).reshape(py.shape)
        assert np.abs(js - py).max() <= tol and (js.argmax(1) == py.argmax(1)).all(), np.abs(js - py).max()


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
def server(models, formats, tmp_path_factory):
    """`python -m http.server` over a folder holding export/web (as web/) and the test's files (as data/)."""
    stale = [f.name for f in (JS / "src").glob("*.js") if (WEB / "vendor" / "vitlab-edge-js" / f.name).is_file()
             and (WEB / "vendor" / "vitlab-edge-js" / f.name).read_bytes() != f.read_bytes()]
    assert not stale, f"export/web/vendor holds old copies of {stale}: run `npm run vendor` in export/js"
    root = tmp_path_factory.mktemp("site")
    (root / "web").symlink_to(WEB)
    (root / "data").mkdir()
    (root / "data" / "formats").symlink_to(formats[0].parent)
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
    yield {"url": f"http://127.0.0.1:{port}/web/", "data": root / "data"}
    proc.terminate()
    proc.wait(10)


def run_browser(server, jobs: list[dict], tmp_path: Path, query: str = "?ep=wasm", args=()) -> list[dict]:
    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps({"url": server["url"] + query, "chromium": CHROMIUM, "args": list(args), "jobs": jobs}))
    res = node("scripts/browser-check.js", spec, timeout=600)
    out = json.loads(res.stdout)
    errors = [line for line in out["logs"] if "pageerror" in line]
    assert not errors, errors
    return out["answers"]


def identical_tensors(models, photos, server) -> np.ndarray:
    """vitlab_edge's inputs of the photos (every classifier here takes the same), served as /data/in.u8."""
    edge = EdgeModel(models["cls"], providers=["CPUExecutionProvider"])
    batch = np.stack([edge.preprocess(str(f)) for f in photos["good"]])
    batch.tofile(server["data"] / "in.u8")
    return batch


def check_runs(answers: list[dict], models, batch: np.ndarray) -> None:
    """The "run" jobs of RUNS: probabilities of the page's model on identical input tensors vs the Python kit."""
    for ans, (name, per_image, tol) in zip(answers, RUNS):
        edge = EdgeModel(models[name], providers=["CPUExecutionProvider"])
        py = np.concatenate([edge.run(x[None], ["probs"])["probs"] for x in batch]) if per_image \
            else edge.run(batch, ["probs"])["probs"]
        js = np.array(ans["values"]).reshape(py.shape)
        assert np.abs(js - py).max() <= tol and (js.argmax(1) == py.argmax(1)).all(), (name, np.abs(js - py).max())


# (model, one call per image, max |delta prob|): int8 in one call on 18 images, see the Node test's comment
RUNS = [("cls", False, 1e-4), ("cls_int8", True, 1e-4), ("cls_int8", False, 1e-3)]
SCREENSHOTS = Path(os.environ.get("VITLAB_JS_SCREENSHOTS", "")) if os.environ.get("VITLAB_JS_SCREENSHOTS") else None


@needs_browser
def test_page_in_chromium_answers_like_vitlab_edge(models, photos, formats, server, tmp_path):
    """The page, driven as a person would (pick the model file, then the images), in headless Chromium with
    onnxruntime-web's wasm back-end: the same records as the Python kit for each task in fp32 and int8, over the
    photos and GIF / WebP / BMP files (the browser decodes those: their model inputs are Pillow's too), the same
    probabilities on identical tensors, the same diffusion samples; screenshots saved."""
    shots = SCREENSHOTS or tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    batch = identical_tensors(models, photos, server)
    sampler = Sampler(models["gen"], providers=["CPUExecutionProvider"])
    labels = GEN_LABELS[::-1]
    initial_noise(len(labels), sampler.input_size, 3).tofile(server["data"] / "noise.f32")
    images = {m: [str(f) for f in [*photos["files"], *(formats if m in ("cls", "cls_int8", "det") else [])]]
              for m in TASKS}  # GIF / WebP / BMP: decoding, checked on fp32 and int8 classification and detection
    jobs = [{"kind": "predict", "model": str(models[m]), "images": images[m],
             "screenshot": str(shots / f"page_{m}.png")} for m in TASKS]
    urls = [f"/data/formats/{f.name}" for f in formats]
    inputs = [models["cls"], models["variants"]["center_crop_bicubic"], models["det"]]
    jobs += [{"kind": "inputs", "model": str(m), "urls": urls} for m in inputs]
    jobs += [{"kind": "run", "model": str(models[m]), "inputsUrl": "/data/in.u8", "n": len(batch), "output": "probs",
              "perImage": one} for m, one, _ in RUNS]
    jobs += [{"kind": "sample", "model": str(models["gen"]), "labels": labels, "noiseUrl": "/data/noise.f32",
              "screenshot": str(shots / "page_gen.png")}]
    answers = run_browser(server, jobs, tmp_path)
    for ans, name in zip(answers, TASKS):
        assert ans["provider"] == "wasm" and "ms per image" in ans["status"], ans["status"]
        edge = EdgeModel(models[name], providers=["CPUExecutionProvider"])
        py = edge.predict(images[name], batch_size=1)  # one image per call, as the page
        for rec in py:
            rec["source"] = Path(rec["source"]).name  # a browser sees file names only
        compare_records(ans["records"], py, TASKS[name], prob_tol=1e-2)
    for ans, model in zip(answers[len(TASKS):], inputs):
        edge = EdgeModel(model, providers=["CPUExecutionProvider"])
        bad = {f.name: js for f, js in zip(formats, ans["inputs"])
               if isinstance(js, str) or np.abs(np.array(js) - edge.preprocess(str(f)).ravel().astype(int)).max()}
        assert not bad, f"model inputs differ from Pillow's (or failed) for {list(bad)}"
    check_runs(answers[len(TASKS) + len(inputs):-1], models, batch)
    py_images = sampler.sample(labels, seed=3)
    js_images = np.array(answers[-1]["images"], np.uint8).reshape(py_images.shape)
    delta = np.abs(js_images.astype(int) - py_images.astype(int))
    assert delta.mean() <= 1.0, delta.mean()
    for m in ("cls", "det", "gen"):
        assert (shots / f"page_{m}.png").stat().st_size > 10_000


@needs_browser
def test_page_on_webgpu_answers_like_vitlab_edge(models, photos, server, tmp_path):
    """The page's default path (WebGPU where the browser has it) on Chromium's software adapter (SwiftShader,
    `--enable-unsafe-webgpu`; nodes onnxruntime-web's WebGPU back-end lacks run on its CPU): the same records and
    probabilities. Skips where this Chromium offers no WebGPU adapter."""
    batch = identical_tensors(models, photos, server)
    jobs = [{"kind": "predict", "model": str(models["cls"]), "images": [str(f) for f in photos["files"][::2]]}]
    jobs += [{"kind": "run", "model": str(models[m]), "inputsUrl": "/data/in.u8", "n": len(batch), "output": "probs",
              "perImage": one} for m, one, _ in RUNS[:2]]
    answers = run_browser(server, jobs, tmp_path, query="", args=["--enable-unsafe-webgpu"])
    if any(a["provider"] != "webgpu" for a in answers):
        pytest.skip(f"no WebGPU adapter in this Chromium ({answers[0]['provider']} ran)")
    py = EdgeModel(models["cls"], providers=["CPUExecutionProvider"]).predict(jobs[0]["images"], batch_size=1)
    for rec in py:
        rec["source"] = Path(rec["source"]).name
    compare_records(answers[0]["records"], py, "classification", prob_tol=1e-2)
    check_runs(answers[1:], models, batch)
