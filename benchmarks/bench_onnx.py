"""Inference speed on this CPU: PyTorch eager vs ONNX Runtime fp32 (standard ``Attention`` and ``ort-mha``), fp16,
int8 dynamic and int8 static (QDQ), at batch 1, 8 and 32.

For each model (``--models``, random weights: vit_tiny / vit_small / vit_base at 224 by default, and the demo model
from ``runs/demo`` when it was trained (``--demo-ckpt``), else its random-initialised architecture) every backend
is timed in rounds whose order rotates, and the ratio of medians to eager is reported (this machine is noisy).
Achieved GFLOP/s = forward FLOPs per image (torch's FlopCounterMode) x images/s, against an fp32 matmul peak
measured in the same run.
For a trained demo model the accuracy of each ONNX variant on the full Fashion-MNIST test set is measured too (the
static int8 variant calibrated on 512 training images, as ``vitlab export --calib-data fashion-mnist`` does).
``--compile``: ``torch.compile(model)`` (inductor) beside eager. ``--edge``: ``vitlab_edge.EdgeModel.run`` on the
fp32 graph beside the bare ``InferenceSession.run`` (``ort_fp32``): the edge kit's own cost. ``--session-options``:
the fp32 graph of the first model under ONNX Runtime session settings (spinning off, basic / extended graph
optimisation, denormals as zero, one thread), interleaved against the defaults. ``--int8-variants``: dynamic int8
with weights per tensor and with 8-bit weights (``reduce_range=False``) beside the default (per channel, 7 bits).
``--attention-4d``:
fp32 and int8 graphs whose attention keeps the exporter's 4-D head layout (vitlab's export before
``attention_to_3d``) beside the default 3-D ones. ``--backends``: only the named ONNX Runtime backends beside eager
(a focused comparison with more rounds). Besides the ratio of medians, every backend gets the median, min and max of
its per-round ratios to eager (``vs_eager_paired``), which a slow drift of the machine disturbs less. ``--demo-ckpt``:
another 28x28 Fashion-MNIST classifier in the demo's place (e.g. the 30-minute one).
Usage: ``python benchmarks/bench_onnx.py [--seconds 2] [--rounds 3] [--models ...] [--batches 1 8 32]
[--session-options] [--compile] [--edge] [--int8-variants] [--attention-4d] [--backends ...] [--demo-ckpt CKPT]
[--out runs/bench/onnx.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from machine import machine_info, run_info  # noqa: E402  (benchmarks/machine.py: the machine block of every result)

import vitlab  # noqa: E402
from vitlab._fs import atomic_write_json  # noqa: E402
from vitlab.onnx.graph import export_graph, model_metadata, rewrite_to_ort_mha, set_metadata  # noqa: E402
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


def profiled_kernel_events(sess: ort.InferenceSession, feed: dict, runs: int, warmup: int = 3) -> list[dict]:
    """Run ``sess`` (opened with ``enable_profiling``) ``warmup + runs`` times and end its profile: the ``Node``
    kernel-time events of the last ``runs`` runs only (each with ``name``, ``dur`` in us and ``args.op_name``);
    warm-up runs and any earlier runs of the session are left out."""
    for _ in range(warmup + runs):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    cutoff = starts[-runs] if runs and len(starts) >= runs else 0
    return [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
            and e["ts"] >= cutoff]


def images_per_second(fn, batch: int, seconds: float) -> float:
    t = time.perf_counter()
    fn()
    for _ in range(2 if time.perf_counter() - t < seconds / 4 else 0):  # warm-up: 1 to 3 calls
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * batch / (time.perf_counter() - t0)


SESSION_VARIANTS = {  # name -> (graph optimisation level, config entries, intra-op threads)
    "default": (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, {}, 0),
    "no_spinning": (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, {"session.intra_op.allow_spinning": "0"}, 0),
    "opt_extended": (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, {}, 0),
    "opt_basic": (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, {}, 0),
    "denormal_zero": (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, {"session.set_denormal_as_zero": "1"}, 0),
    "one_thread": (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, {}, 1),
}


def cpu_session(path: Path, variant: str = "default") -> ort.InferenceSession:
    level, entries, threads = SESSION_VARIANTS[variant]
    so = ort.SessionOptions()
    so.graph_optimization_level, so.intra_op_num_threads = level, threads
    for k, v in entries.items():
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def calibration_images(model: torch.nn.Module, n: int = 512) -> np.ndarray:
    """Fashion-MNIST training images for a 28x28 grey model, else random pixels (speed only)."""
    c, h, w = model.preprocess.input_size
    if (c, h, w) == (1, 28, 28):
        return load_eval_set("fashion-mnist", model.preprocess, split="train", limit=n).images
    return np.random.default_rng(1).integers(0, 256, (64, c, h, w), dtype=np.uint8)


def bench_model(name: str, model: torch.nn.Module, args, tmp: Path) -> dict:
    model.eval()
    fp32 = export_graph(model)
    graphs = {"ort_fp32": fp32, "ort_fp32_mha": rewrite_to_ort_mha(fp32), "ort_fp16": to_fp16(fp32),
              "ort_int8": to_int8(fp32), "ort_int8_static": to_int8(fp32, calibration_images(model))}
    if args.attention_4d:  # the exporter's own 4-D attention (head Transposes around it), as before attention_to_3d
        with mock.patch("vitlab.onnx.graph.attention_to_3d", lambda graph: graph):
            graphs["ort_fp32_4d"] = four_d = export_graph(model)
        graphs["ort_int8_4d"] = to_int8(four_d)
    if args.int8_variants:  # the dynamic default's (7-bit weights) neighbours: weights per tensor, 8-bit weights
        graphs.update(ort_int8_per_tensor=to_int8(fp32, per_channel=False),
                      ort_int8_full_range=to_int8(fp32, reduce_range=False))
    if args.backends:  # a focused comparison: fewer backends, so more rounds fit and neighbours run back to back
        graphs = {k: g for k, g in graphs.items() if k in args.backends}
    sessions = {}
    for key, graph in graphs.items():
        path = tmp / f"{name}-{key}.onnx"
        onnx.save(graph, path)
        sessions[key] = cpu_session(path)
    edge = None
    if args.edge:  # the fp32 graph with its vitlab metadata, served by the edge kit's EdgeModel
        from vitlab_edge import EdgeModel

        set_metadata(fp32, model_metadata(model, name))
        onnx.save(fp32, tmp / f"{name}-edge.onnx")
        edge = EdgeModel(tmp / f"{name}-edge.onnx", providers=["CPUExecutionProvider"])
    c, h, w = model.preprocess.input_size
    result = {"model": name, "gflop_per_image": flops_per_image(model) / 1e9, "batches": {}}
    for batch in args.batches:
        x = np.random.default_rng(0).integers(0, 256, (batch, c, h, w), dtype=np.uint8)
        xt = torch.from_numpy(x)

        def eager(xt=xt, m=model):
            with torch.inference_mode():
                m(xt)

        fns = {"eager": eager, **{k: (lambda s=s, x=x: s.run(["probs"], {"images": x})) for k, s in sessions.items()}}
        if edge is not None:  # EdgeModel.run: its checks and output naming around the same session.run
            fns["edge_fp32"] = lambda x=x: edge.run(x, ["probs"])
        if args.compile:  # torch.compile (inductor, default mode), one graph per batch size
            compiled = torch.compile(model, dynamic=False)
            fns["torch_compile"] = lambda xt=xt, m=compiled: eager(xt, m)
        rates = interleaved_rates(fns, batch, args.rounds, args.seconds)
        med = {k: statistics.median(v) for k, v in rates.items()}
        paired = {k: sorted(a / e for a, e in zip(rates[k], rates["eager"])) for k in rates}  # per round
        result["batches"][batch] = {k: {"img_s": round(v, 1), "vs_eager": round(v / med["eager"], 3),
                                        "vs_eager_paired": [round(statistics.median(paired[k]), 3),
                                                            round(paired[k][0], 3), round(paired[k][-1], 3)],
                                        "gflop_s": round(v * result["gflop_per_image"], 1),
                                        "rounds": [round(x, 1) for x in rates[k]]} for k, v in med.items()}
        print(json.dumps({"model": name, "batch": batch, **{k: v["img_s"] for k, v in
                                                           result["batches"][batch].items()}}), flush=True)
    return result, sessions


def bench_session_options(name: str, args, tmp: Path) -> dict:
    """img/s of ``name``'s fp32 graph under each of SESSION_VARIANTS, interleaved, as a ratio to the defaults."""
    path = tmp / f"{name}-ort_fp32.onnx"
    sessions = {k: cpu_session(path, k) for k in SESSION_VARIANTS}
    c, h, w = (int(d.dim_value) for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim[1:])
    out = {}
    for batch in args.batches[:2]:
        x = np.random.default_rng(0).integers(0, 256, (batch, c, h, w), dtype=np.uint8)
        fns = {k: (lambda s=s, x=x: s.run(["probs"], {"images": x})) for k, s in sessions.items()}
        med = {k: statistics.median(v) for k, v in interleaved_rates(fns, batch, args.rounds, args.seconds).items()}
        out[batch] = {k: {"img_s": round(v, 1), "vs_default": round(v / med["default"], 3)} for k, v in med.items()}
        print(json.dumps({"session_options": name, "batch": batch, **out[batch]}), flush=True)
    return out


def demo_accuracy(task, sessions) -> dict:
    """Accuracy of torch and of every ONNX variant on the full Fashion-MNIST test set (10k)."""
    data = load_eval_set("fashion-mnist", task.preprocess)
    ref = torch_outputs(task.model, data.images).argmax(1)
    acc = {"torch": float((ref == data.labels).mean() * 100)}
    for key in sessions:
        top1 = onnx_outputs(sessions[key], data.images)[0].argmax(1)
        acc[key] = float((top1 == data.labels).mean() * 100)
    return {k: round(v, 2) for k, v in acc.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--models", nargs="+", default=["vit_tiny_patch16_224", "vit_small_patch16_224",
                                                    "vit_base_patch16_224"])
    ap.add_argument("--session-options", action="store_true", help="also time session settings (first model)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(model) beside eager")
    ap.add_argument("--edge", action="store_true", help="also time the edge kit's EdgeModel.run on the fp32 graph")
    ap.add_argument("--attention-4d", action="store_true",
                    help="also the fp32 and int8 graphs with the exporter's 4-D attention (before attention_to_3d)")
    ap.add_argument("--int8-variants", action="store_true", help="also dynamic int8 per tensor and with 8-bit weights")
    ap.add_argument("--backends", nargs="+", help="only these ONNX Runtime backends beside eager, e.g. ort_fp32 "
                    "ort_fp32_4d (with --attention-4d)")
    ap.add_argument("--demo-ckpt", default=str(DEMO_CKPT), help="the 28x28 classifier timed last (its test accuracy "
                    "per variant too); e.g. runs/fmnist_best/checkpoints/last.ckpt")
    ap.add_argument("--out", default="runs/bench/onnx.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    peak = matmul_peak_gflops()
    report = {"machine": machine_info(), **run_info(), "torch_threads": torch.get_num_threads(),
              "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            res, _ = bench_model(name, vitlab.create_model(name), args, Path(tmp))
            report["models"].append(res)
        if args.session_options:
            report["session_options"] = bench_session_options(args.models[0], args, Path(tmp))
        task = vitlab.load(args.demo_ckpt) if Path(args.demo_ckpt).is_file() else None
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
            print(f"  batch {batch}: " + "  ".join(
                f"{k} {v['img_s']:.0f} img/s ({v['vs_eager']:.2f}x, per round {v['vs_eager_paired'][0]:.2f}x "
                f"[{v['vs_eager_paired'][1]:.2f}-{v['vs_eager_paired'][2]:.2f}], {v['pct_of_peak']:.0f}% peak)"
                for k, v in b.items()))
        if "fmnist_test_accuracy_pct" in m:
            print(f"  Fashion-MNIST test accuracy: {m['fmnist_test_accuracy_pct']}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
