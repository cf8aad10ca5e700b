"""Probe: ONNX Runtime's OpenVINO execution provider as a faster CPU GEMM than MLAS for ViT-S/16's fp32 graph.

The OpenVINO provider comes in its own wheel, ``onnxruntime-openvino``, which replaces ``onnxruntime`` (it cannot sit
beside the project's ``onnxruntime-gpu``), so the probe runs in two steps and two environments:

    python benchmarks/probe_openvino.py export runs/bench/openvino    # project venv: random ViT-S, both paths
    python -m venv /tmp/ovenv && /tmp/ovenv/bin/pip install onnxruntime-openvino numpy
    /tmp/ovenv/bin/python benchmarks/probe_openvino.py measure runs/bench/openvino

``export`` writes ``vits.onnx`` (the standard ``Attention`` op) and ``vits_mha.onnx`` (``--attention ort-mha``).
``measure`` (numpy and onnxruntime only) opens each graph on the CPU provider (MLAS) and on OpenVINO (fp32, 2
threads, CPU provider as fallback), prints the largest output difference from MLAS on the standard-``Attention``
graph, then images/s at batch 1 and 8 in 7 interleaved rounds of 1.5 s whose order rotates: medians, and each
variant's ratio to MLAS per round (median, min, max).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

OPENVINO = ("OpenVINOExecutionProvider", {"device_type": "CPU", "precision": "FP32", "num_of_threads": "2"})


def export(out: Path) -> None:
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import onnx
    import torch

    import vitlab
    from vitlab.onnx.graph import export_graph, rewrite_to_ort_mha

    torch.manual_seed(0)
    graph = export_graph(vitlab.create_model("vit_small_patch16_224", num_classes=10).eval())
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, out / "vits.onnx")
    onnx.save(rewrite_to_ort_mha(graph), out / "vits_mha.onnx")
    print(f"-> {out}/vits.onnx, {out}/vits_mha.onnx")


def measure(folder: Path, rounds: int = 7, seconds: float = 1.5) -> None:
    import numpy as np
    import onnxruntime as ort

    def session(name: str, providers: list):
        try:
            return ort.InferenceSession(str(folder / name), providers=providers)
        except Exception as e:  # noqa: BLE001 - a provider that refuses the graph is a finding, not a crash
            last = [line.strip() for line in str(e).splitlines() if line.strip()][-1:]  # the provider's reason
            print(f"{name} on {providers[0] if isinstance(providers[0], str) else providers[0][0]}: refused: "
                  f"{last[0] if last else type(e).__name__}")
            return None

    candidates = {"mlas attention": session("vits.onnx", ["CPUExecutionProvider"]),
                  "openvino attention": session("vits.onnx", [OPENVINO, "CPUExecutionProvider"]),
                  "mlas mha": session("vits_mha.onnx", ["CPUExecutionProvider"]),
                  "openvino mha": session("vits_mha.onnx", [OPENVINO, "CPUExecutionProvider"])}
    variants = {k: s for k, s in candidates.items() if s is not None}
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        x = {"images": rng.integers(0, 256, (batch, 3, 224, 224), dtype=np.uint8)}
        ref = variants["mlas attention"].run(None, x)[0]
        diffs = {k: float(np.abs(s.run(None, x)[0] - ref).max()) for k, s in variants.items()}
        rates: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                n, t = 0, time.perf_counter()
                while time.perf_counter() - t < seconds:
                    variants[k].run(None, x)
                    n += batch
                rates[k].append(n / (time.perf_counter() - t))
        for k, v in rates.items():
            ratio = [a / m for a, m in zip(v, rates["mlas attention"])]
            print(f"batch {batch} {k}: {statistics.median(v):.2f} img/s, {statistics.median(ratio):.2f}x MLAS "
                  f"[{min(ratio):.2f}, {max(ratio):.2f}], max |diff| {diffs[k]:.1e}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("export", "measure"):
        sys.exit("usage: probe_openvino.py export|measure FOLDER")
    if sys.argv[1] == "measure":  # the figures' machine (stdlib only: runs in the OpenVINO venv too)
        import json

        from machine import machine_info, run_info

        print(json.dumps({"machine": machine_info(), **run_info()}), flush=True)
    (export if sys.argv[1] == "export" else measure)(Path(sys.argv[2]))
