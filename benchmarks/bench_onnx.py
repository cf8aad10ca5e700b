"""Inference speed on this CPU: PyTorch eager vs ONNX Runtime fp32 / fp16 / int8, batch 1 and 8.

For each model (vit_small_patch16_224 with random weights, and the demo model from ``runs/demo`` when it was
trained, else its random-initialised architecture) every backend is timed in rounds whose order rotates, and the
ratio of medians to eager is reported (this machine is noisy). Achieved GFLOP/s = forward FLOPs per image (torch's
FlopCounterMode) x images/s, against an fp32 matmul peak measured in the same run. For a trained demo model the
int8 and fp32 accuracy on the full Fashion-MNIST test set is measured too.
Usage: ``python benchmarks/bench_onnx.py [--seconds 2] [--rounds 3] [--out runs/bench/onnx.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import vitlab  # noqa: E402
from vitlab._fs import atomic_write_json  # noqa: E402
from vitlab.onnx.graph import export_graph  # noqa: E402
from vitlab.onnx.precision import to_fp16, to_int8  # noqa: E402
from vitlab.onnx.report import load_eval_set, onnx_outputs, torch_outputs  # noqa: E402

DEMO_CKPT = Path("runs/demo/checkpoints/last.ckpt")


def matmul_peak_gflops(seconds: float = 2.0, n: int = 2048) -> float:
    """Best fp32 GFLOP/s of an n x n matmul over ``seconds`` (torch/MKL, all threads)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def flops_per_image(model: torch.nn.Module) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    c, h, w = model.preprocess.input_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, c, h, w, dtype=torch.uint8))
    return float(counter.get_total_flops())


def interleaved_rates(fns: dict, batch: int, rounds: int, seconds: float) -> dict[str, list[float]]:
    """img/s of each function per round; the order rotates every round, so that no backend always runs first."""
    rates: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            rates[k].append(images_per_second(fns[k], batch, seconds))
    return rates


def images_per_second(fn, batch: int, seconds: float) -> float:
    for _ in range(3):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def bench_model(name: str, model: torch.nn.Module, args, tmp: Path) -> dict:
    model.eval()
    fp32 = export_graph(model)
    graphs = {"ort_fp32": fp32, "ort_fp16": to_fp16(fp32), "ort_int8": to_int8(fp32)}
    sessions = {}
    for key, graph in graphs.items():
        path = tmp / f"{name}-{key}.onnx"
        onnx.save(graph, path)
        sessions[key] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    c, h, w = model.preprocess.input_size
    result = {"model": name, "gflop_per_image": flops_per_image(model) / 1e9, "batches": {}}
    for batch in args.batches:
        x = np.random.default_rng(0).integers(0, 256, (batch, c, h, w), dtype=np.uint8)
        xt = torch.from_numpy(x)

        def eager(xt=xt):
            with torch.inference_mode():
                model(xt)

        fns = {"eager": eager, **{k: (lambda s=s, x=x: s.run(["probs"], {"images": x})) for k, s in sessions.items()}}
        rates = interleaved_rates(fns, batch, args.rounds, args.seconds)
        med = {k: statistics.median(v) for k, v in rates.items()}
        result["batches"][batch] = {k: {"img_s": round(v, 1), "vs_eager": round(v / med["eager"], 3),
                                        "gflop_s": round(v * result["gflop_per_image"], 1)} for k, v in med.items()}
        print(json.dumps({"model": name, "batch": batch, **{k: v["img_s"] for k, v in
                                                           result["batches"][batch].items()}}), flush=True)
    return result, sessions


def demo_accuracy(task, sessions) -> dict:
    """fp32 / int8 accuracy on the full Fashion-MNIST test set (10k), torch vs ORT."""
    data = load_eval_set("fashion-mnist", task.preprocess)
    ref = torch_outputs(task.model, data.images).argmax(1)
    acc = {"torch": float((ref == data.labels).mean() * 100)}
    for key in ("ort_fp32", "ort_int8"):
        top1 = onnx_outputs(sessions[key], data.images)[0].argmax(1)
        acc[key] = float((top1 == data.labels).mean() * 100)
    return {k: round(v, 2) for k, v in acc.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--out", default="runs/bench/onnx.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    peak = matmul_peak_gflops()
    report = {"torch_threads": torch.get_num_threads(), "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        res, _ = bench_model("vit_small_patch16_224", vitlab.create_model("vit_small_patch16_224"), args, Path(tmp))
        report["models"].append(res)
        task = vitlab.load(DEMO_CKPT) if DEMO_CKPT.is_file() else None
        demo = task.model if task is not None else vitlab.create_model("vitlab_fmnist", num_classes=10)
        res, sessions = bench_model("vitlab_fmnist (demo)", demo, args, Path(tmp))
        if task is not None:
            res["fmnist_test_accuracy_pct"] = demo_accuracy(task, sessions)
        report["models"].append(res)
    report["matmul_peak_gflop_s"] = round(max(peak, matmul_peak_gflops()), 1)  # before and after: the better one
    for m in report["models"]:
        for b in m["batches"].values():
            for v in b.values():
                v["pct_of_peak"] = round(100 * v["gflop_s"] / report["matmul_peak_gflop_s"], 1)
    atomic_write_json(args.out, report)
    print(f"matmul peak {report['matmul_peak_gflop_s']} GFLOP/s ({report['torch_threads']} threads)")
    for m in report["models"]:
        print(f"{m['model']}: {m['gflop_per_image']:.3f} GFLOP/image")
        for batch, b in m["batches"].items():
            print(f"  batch {batch}: " + "  ".join(f"{k} {v['img_s']:.0f} img/s ({v['vs_eager']:.2f}x, "
                                                     f"{v['pct_of_peak']:.0f}% peak)" for k, v in b.items()))
        if "fmnist_test_accuracy_pct" in m:
            print(f"  Fashion-MNIST test accuracy: {m['fmnist_test_accuracy_pct']}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
