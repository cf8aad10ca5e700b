"""Probe: ONNX Runtime's transformer optimizer (``onnxruntime.transformers.optimizer``, model type ``vit``) run after
``vitlab export`` on ViT-S/16's fp32 graph: which fusions it adds, whether the fused attention count and the
outputs stay, and its speed against the plain export (interleaved rounds, 2 s each, batch 1 and 8).
Usage: ``python benchmarks/probe_ort_optimizer.py`` (a few minutes; prints one line per finding).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from bench_onnx import cpu_session, interleaved_rates  # noqa: E402  (benchmarks/ is on sys.path when run)
from machine import machine_info, run_info  # noqa: E402  (benchmarks/machine.py: the machine block of every result)
from onnxruntime.transformers.optimizer import optimize_model  # noqa: E402

import vitlab  # noqa: E402
from vitlab.onnx.graph import count_fused_attention, export_graph, op_counts  # noqa: E402


def main() -> None:
    print(json.dumps({"machine": machine_info(), **run_info()}), flush=True)
    torch.manual_seed(0)
    model = vitlab.create_model("vit_small_patch16_224").eval()
    tmp = Path(tempfile.mkdtemp(prefix="vitlab-ortopt-"))
    src = tmp / "fp32.onnx"
    onnx.save(export_graph(model), src)
    paths = {"plain": src}
    for level in (0, 1):
        opt = optimize_model(str(src), model_type="vit", num_heads=6, hidden_size=384, opt_level=level, use_gpu=False)
        paths[f"opt_level_{level}"] = tmp / f"opt{level}.onnx"
        opt.save_model_to_file(str(paths[f"opt_level_{level}"]))
    x8 = np.random.default_rng(0).integers(0, 256, (8, 3, 224, 224), dtype=np.uint8)
    sessions = {k: cpu_session(p) for k, p in paths.items()}
    ref = sessions["plain"].run(["probs"], {"images": x8})[0]
    for k, p in paths.items():
        graph = onnx.load(p)
        probs = sessions[k].run(["probs"], {"images": x8})[0]
        top = dict(sorted(op_counts(graph).items(), key=lambda kv: -kv[1])[:10])
        print(json.dumps({"graph": k, "fused_attention": count_fused_attention(graph), "ops": top,
                          "max_abs_diff_probs": float(np.abs(probs - ref).max())}), flush=True)
    for batch in (1, 8):
        x = x8[:batch]
        fns = {k: (lambda s=s, x=x: s.run(["probs"], {"images": x})) for k, s in sessions.items()}
        med = {k: statistics.median(v) for k, v in interleaved_rates(fns, batch, 3, 2.0).items()}
        print(json.dumps({"batch": batch, "plain_img_s": round(med["plain"], 1),
                          **{f"{k}_vs_plain": round(v / med["plain"], 3) for k, v in med.items()}}), flush=True)


if __name__ == "__main__":
    main()
