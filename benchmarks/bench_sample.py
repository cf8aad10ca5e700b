"""Sampling speed of a diffusion model: the checkpoint (torch eager, EMA weights) vs its exported denoiser step
(ONNX Runtime), both through the same numpy loop (``vitlab_edge.sampling``), at batch 1 and 64.

Each figure is images per second of whole sampling (``--steps`` Euler steps, guidance inside the step), the
median over ``--rounds`` interleaved rounds whose order alternates; the ratio is ORT over torch from the same run.
torch and ONNX Runtime use the same thread count.
Usage: ``python benchmarks/bench_sample.py [--ckpt runs/fmnist_diffusion/checkpoints/last.ckpt] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import vitlab  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="runs/fmnist_diffusion/checkpoints/last.ckpt")
    ap.add_argument("--onnx", default=None, help="the exported model.onnx (default: export the ckpt to a temp dir)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=None, help="also write the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx or str(vitlab.export_onnx(args.ckpt, tmp, "fp32")["fp32"].path)
        import onnxruntime as ort
        from vitlab_edge.sampler import Sampler as EdgeSampler

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        edge = EdgeSampler(path, ["CPUExecutionProvider"], opts)
        samplers = {"torch": vitlab.Sampler.load(args.ckpt, device="cpu"),
                    "onnxruntime": vitlab.Sampler.from_edge(edge)}
        results = []
        for n in args.batches:
            labels = list(np.arange(n) % len(samplers["torch"].labels))
            times: dict[str, list[float]] = {k: [] for k in samplers}
            for s in samplers.values():  # warm-up
                s.sample(labels, steps=2)
            for r in range(args.rounds):
                for name in (list(samplers) if r % 2 == 0 else list(samplers)[::-1]):
                    t = time.perf_counter()
                    samplers[name].sample(labels, steps=args.steps, seed=r)
                    times[name].append(time.perf_counter() - t)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"batch": n, "steps": args.steps, "threads": args.threads,
                   "img_s": {k: round(n / v, 2) for k, v in med.items()},
                   "spread_s": {k: [round(min(v), 3), round(max(v), 3)] for k, v in times.items()},
                   "onnxruntime_vs_torch": round(med["torch"] / med["onnxruntime"], 3)}
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        from machine import machine_info, run_info

        from vitlab._fs import atomic_write_json

        atomic_write_json(args.out, {"machine": machine_info(), **run_info(), "rows": results})


if __name__ == "__main__":
    main()
