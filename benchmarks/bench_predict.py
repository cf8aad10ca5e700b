"""Predictor throughput and memory on this machine.

1. Over a folder of >= 2,000 JPEGs of mixed sizes cut from real photographs (scikit-image's bundled photos), the
   Predictor's images/s (decode + resize in worker processes, overlapped with inference) against the model-only
   images/s on already-decoded batches of the same size, for the checkpoint (torch) and ONNX backends, measured
   side by side in one run. Model: vit_small_patch16_224 (random weights: speed does not depend on them); the
   demo model is reported too, where decoding, not the model, sets the pace.
2. ``stream`` over 20,000 image files: the main process's RSS after 2,000 and after 20,000 results.
Usage: ``python benchmarks/bench_predict.py [--images 2000] [--stream 20000] [--out runs/bench/predict.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

import vitlab  # noqa: E402
from vitlab._fs import atomic_write_json  # noqa: E402
from vitlab.data.datasets import fashion_mnist_arrays, make_photo_folder  # noqa: E402
from vitlab.inference import Predictor  # noqa: E402
from vitlab.inference.backends import OrtBackend, TorchBackend  # noqa: E402
from vitlab.inference.io import read_image  # noqa: E402
from vitlab.onnx.graph import export_graph, model_metadata, set_metadata  # noqa: E402

CACHE = Path("runs/bench")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def onnx_backend(model: torch.nn.Module, path: Path) -> OrtBackend:
    graph = export_graph(model)
    set_metadata(graph, model_metadata(model, path.stem))
    onnx.save(graph, path)
    return OrtBackend(path, providers=["CPUExecutionProvider"])


def throughput(predictor: Predictor, files: list[str], batch: int, workers: int) -> dict:
    """Predictor over the files vs the same backend on pre-decoded batches, back to back."""
    pre = predictor.preprocess
    decoded = np.stack([pre.prepare(read_image(f)) for f in files[: batch * 8]])
    predictor.backend(decoded[:batch])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(decoded), batch):
        predictor.backend(decoded[i:i + batch])
    model_rate = len(decoded) / (time.perf_counter() - t)
    t = time.perf_counter()
    n = sum(1 for r in predictor.stream(files, batch_size=batch, num_workers=workers) if r.error is None)
    pred_rate = n / (time.perf_counter() - t)
    return {"backend": predictor.backend.name, "images": n, "batch": batch, "workers": workers,
            "model_only_img_s": round(model_rate, 1), "predictor_img_s": round(pred_rate, 1),
            "ratio": round(pred_rate / model_rate, 3)}


def stream_memory(predictor: Predictor, folder: Path, n: int, batch: int, workers: int) -> dict:
    images = fashion_mnist_arrays("test")[0]
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        f = folder / f"{i:05d}.png"
        if not f.exists():
            Image.fromarray(images[i % len(images)]).save(f)
        files.append(str(f))
    marks, t = {}, time.perf_counter()
    for k, _ in enumerate(predictor.stream(files, batch_size=batch, num_workers=workers), 1):
        if k in (2000, n):
            marks[k] = round(rss_mb(), 1)
    return {"inputs": n, "rss_mb_at": marks, "seconds": round(time.perf_counter() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--stream", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=str(CACHE / "predict.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    files = make_photo_folder(CACHE / "photos", n=args.images)
    report = {"torch_threads": torch.get_num_threads(), "throughput": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("vit_small_patch16_224", "vitlab_fmnist"):
            model = vitlab.create_model(name, num_classes=10).eval()
            for backend in (TorchBackend(model, "cpu"), onnx_backend(model, Path(tmp) / f"{name}.onnx")):
                row = {"model": name, **throughput(Predictor(backend), files, args.batch, args.workers)}
                report["throughput"].append(row)
                print(json.dumps(row), flush=True)
        demo = vitlab.create_model("vitlab_fmnist", num_classes=10).eval()
        report["stream"] = stream_memory(Predictor(onnx_backend(demo, Path(tmp) / "demo.onnx")),
                                         CACHE / "stream_files", args.stream, 256, args.workers)
    print(json.dumps(report["stream"]))
    atomic_write_json(args.out, report)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
