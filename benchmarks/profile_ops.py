"""Where the time goes: per-operator totals of one model on this CPU, ONNX Runtime (its profiler) beside PyTorch
eager (``torch.profiler``), at each batch size.

ONNX Runtime: ``SessionOptions.enable_profiling`` over ``--runs`` runs after the warm-up runs; every ``Node`` event's
kernel time summed by operator type (after ONNX Runtime's own fusions: what actually ran). PyTorch: the self CPU
time of each aten operator under ``torch.inference_mode``. Shares are of the summed operator time, so they add to
100 % (the framework's own overhead between operators is the gap to wall time, reported as ``wall_ms``).
Usage: ``python benchmarks/profile_ops.py [--model vit_small_patch16_224] [--batches 1 8] [--attention onnx] [--int8]
[--runs 20] [--out runs/bench/ops.json]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from bench_onnx import profiled_kernel_events  # noqa: E402  (benchmarks/ is on sys.path when run)
from machine import machine_info, run_info  # noqa: E402  (benchmarks/machine.py: the machine block of every result)

import vitlab  # noqa: E402
from vitlab._fs import atomic_write_json  # noqa: E402
from vitlab.onnx.graph import export_graph, rewrite_to_ort_mha  # noqa: E402
from vitlab.onnx.precision import to_int8  # noqa: E402


def shares(totals: dict[str, float], top: int = 10) -> dict[str, float]:
    """Operator -> % of the summed time, the ``top`` largest, the rest as "other"."""
    total = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    out = {k: round(100 * v / total, 1) for k, v in ranked[:top]}
    if len(ranked) > top:
        out["other"] = round(100 * sum(v for _, v in ranked[top:]) / total, 1)
    return out


def ort_ops(path: Path, x: np.ndarray, runs: int, tmp: str) -> dict:
    so = ort.SessionOptions()
    so.enable_profiling, so.profile_file_prefix = True, str(Path(tmp) / f"ort_b{len(x)}")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(3):
        sess.run(None, feed)
    t = time.perf_counter()
    for _ in range(runs):
        sess.run(None, feed)
    wall = (time.perf_counter() - t) / runs
    totals: dict[str, float] = defaultdict(float)
    for e in profiled_kernel_events(sess, feed, runs, warmup=0):  # already warm: the timed runs above
        totals[e["args"]["op_name"]] += e["dur"]
    return {"wall_ms": round(1000 * wall, 2), "op_ms": round(sum(totals.values()) / runs / 1000, 2),
            "shares_pct": shares(totals)}


def torch_ops(model: torch.nn.Module, x: torch.Tensor, runs: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(3):
            model(x)
        t = time.perf_counter()
        for _ in range(runs):
            model(x)
        wall = (time.perf_counter() - t) / runs
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(x)
    totals = {e.key: e.self_cpu_time_total for e in prof.key_averages() if e.self_cpu_time_total > 0}
    return {"wall_ms": round(1000 * wall, 2), "op_ms": round(sum(totals.values()) / runs / 1000, 2),
            "shares_pct": shares(totals)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--attention", choices=("onnx", "ort-mha"), default="onnx")
    ap.add_argument("--int8", action="store_true", help="profile the dynamic int8 graph (vitlab export's default "
                    "int8) on the ONNX Runtime side")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", default="runs/bench/ops.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = vitlab.create_model(args.model).eval()
    graph = export_graph(model)
    if args.attention == "ort-mha":
        graph = rewrite_to_ort_mha(graph)
    if args.int8:
        graph = to_int8(graph)
    report = {"machine": machine_info(), **run_info(),
              "model": args.model, "attention": args.attention, "int8": args.int8,
              "torch_threads": torch.get_num_threads(), "batches": {}}
    c, h, w = model.preprocess.input_size
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(graph, path)
        for batch in args.batches:
            x = np.random.default_rng(0).integers(0, 256, (batch, c, h, w), dtype=np.uint8)
            row = {"onnxruntime": ort_ops(path, x, args.runs, tmp),
                   "torch_eager": torch_ops(model, torch.from_numpy(x), args.runs)}
            report["batches"][batch] = row
            for k, v in row.items():
                print(f"batch {batch} {k}: wall {v['wall_ms']} ms, operators {v['op_ms']} ms: "
                      + ", ".join(f"{op} {p}%" for op, p in v["shares_pct"].items()), flush=True)
    atomic_write_json(args.out, report)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
