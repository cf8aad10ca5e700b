"""Speed of the JavaScript client against the Python edge kit on the same model file and photos, batch 1:
images/s of predict (decode + preprocess + run) and of the bare model call, in Node (onnxruntime-node), in the
page in headless Chromium (onnxruntime-web wasm, the threads the page sets) and in Python (vitlab_edge), plus the
page's first-prediction latency including model load. One JSON line with the machine (lscpu).

    python export/js/bench/bench_js.py MODEL.onnx PHOTOS_DIR [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
JS = HERE.parent
WEB = JS.parent / "web"


def lscpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    return (f"{info.get('Model name', '?').strip()}, {info.get('CPU(s)', '?').strip()} CPUs, "
            f"{'avx512f' if 'avx512f' in flags else 'avx2' if 'avx2' in flags else 'no avx2'}")


def python_side(model: str, files: list[str], repeat: int) -> dict:
    from vitlab_edge import EdgeModel

    m = EdgeModel(model, providers=["CPUExecutionProvider"])
    m.predict(files[:2], batch_size=1)
    t = time.perf_counter()
    for _ in range(repeat):
        m.predict(files, batch_size=1)
    per_image = (time.perf_counter() - t) / (repeat * len(files))
    x = np.stack([m.preprocess(files[0])])
    m.run(x)
    t = time.perf_counter()
    for _ in range(50):
        m.run(x)
    return {"predict_images_per_s": 1 / per_image, "run_ms": (time.perf_counter() - t) / 50 * 1000}


NODE_BENCH = """
import {openModel, fileInputs} from './src/node.js';
const [model, repeat, ...files] = process.argv.slice(1);
const m = await openModel(model);
const inputs = fileInputs(files);
await m.predict(inputs.slice(0, 2), {batchSize: 1});
let t = performance.now();
for (let r = 0; r < Number(repeat); r++) await m.predict(inputs, {batchSize: 1});
const perImage = (performance.now() - t) / (Number(repeat) * files.length);
const [c, h, w] = m.inputSize, x = new Uint8Array(c * h * w).fill(128);
await m.run(x, 1);
t = performance.now();
for (let i = 0; i < 50; i++) await m.run(x, 1);
console.log(JSON.stringify({predict_images_per_s: 1000 / perImage, run_ms: (performance.now() - t) / 50}));
"""


def node_side(model: str, files: list[str], repeat: int) -> dict:
    out = subprocess.run(["node", "--input-type=module", "-e", NODE_BENCH, model, str(repeat), *files], cwd=JS,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def browser_side(model: str, files: list[str]) -> dict:
    import socket

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "web").symlink_to(WEB)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        srv = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                                tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1)
            spec = root / "jobs.json"
            spec.write_text(json.dumps({"url": f"http://127.0.0.1:{port}/web/?ep=wasm", "jobs": [
                {"kind": "predict", "model": model, "images": files},
                {"kind": "run", "model": model, "inputsUrl": "/web/index.html", "n": 0, "output": "probs",
                 "repeat": 50}]}))
            res = subprocess.run(["node", "scripts/browser-check.js", str(spec)], cwd=JS, capture_output=True,
                                 text=True)
        finally:
            srv.terminate()
    if res.returncode:
        raise SystemExit(res.stderr[-2000:])
    pred, run = json.loads(res.stdout)["answers"]
    return {"predict_images_per_s": 1000 / pred["perCallMs"], "first_prediction_ms_incl_model_load":
            pred["firstLatencyMs"], "model_load_ms": pred["loadMs"], "run_ms": run.get("runMs"),
            "wasm_threads": pred["numThreads"], "cross_origin_isolated": pred["crossOriginIsolated"],
            "browser": pred["userAgent"].split(") ")[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("photos")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    files = sorted(str(p) for p in Path(a.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    model = str(Path(a.model).resolve())
    result = {"model": model, "images": len(files), "batch": 1, "machine": lscpu(), "python": platform.python_version(),
              "vitlab_edge": python_side(model, files, a.repeat), "node": node_side(model, files, a.repeat),
              "browser_wasm": browser_side(model, files)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
