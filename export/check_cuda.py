"""GPU check: every node of vitlab's exported graphs, attention included, runs on ONNX Runtime's CUDA provider,
and how fast, against PyTorch's SDPA under autocast on the same GPU.

Sessions are created with ``session.disable_cpu_ep_fallback=1`` and the CUDA provider only, so session creation
fails when any node would fall back to the CPU. Needs vitlab + torch (for the export and the PyTorch baseline):

    python export/check_cuda.py                       # vit_small_patch16_224 and the demo model, batch 1 and 32
    python export/check_cuda.py --models vitlab_fmnist --batches 1 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _time(fn, seconds: float = 2.0) -> float:
    """Median seconds per call over ~``seconds`` of calls, after warm-up."""
    for _ in range(5):
        fn()
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 10:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def check_model(name: str, batches: list[int], out_dir: Path) -> list[dict]:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    import vitlab
    from vitlab.onnx.graph import count_fused_attention, export_graph, rewrite_to_ort_mha, set_metadata
    from vitlab.onnx.precision import to_fp16

    model = vitlab.create_model(name, num_classes=10).eval()
    fp32 = export_graph(model)
    graphs = {"fp32/onnx": fp32, "fp32/ort-mha": rewrite_to_ort_mha(fp32)}
    graphs["fp16/onnx"], graphs["fp16/ort-mha"] = to_fp16(graphs["fp32/onnx"]), to_fp16(graphs["fp32/ort-mha"])
    cuda = model.cuda()
    c, h, w = model.preprocess.input_size
    rows = []
    for key, graph in graphs.items():
        set_metadata(graph, {"note": "check_cuda"})
        path = out_dir / f"{name}-{key.replace('/', '-')}.onnx"
        onnx.save(graph, path)
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        sess = ort.InferenceSession(str(path), opts, providers=["CUDAExecutionProvider"])  # raises on any CPU node
        assert sess.get_providers()[0] == "CUDAExecutionProvider", sess.get_providers()
        for n in batches:
            x = np.random.default_rng(0).integers(0, 256, (n, c, h, w), dtype=np.uint8)
            xt = torch.from_numpy(x).cuda()
            with torch.no_grad():
                ref = cuda(xt).float().cpu().numpy()
            logits = sess.run(["logits"], {"images": x})[0]
            binding = sess.io_binding()  # inputs on the GPU, as a serving app would keep them
            binding.bind_ortvalue_input("images", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            binding.bind_output("logits", "cuda")
            t_ort = _time(lambda b=binding, s=sess: s.run_with_iobinding(b))
            dtype = torch.float16 if key.startswith("fp16") else torch.float32

            def eager(xt=xt, dtype=dtype):
                with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype == torch.float16):
                    cuda(xt)
                torch.cuda.synchronize()

            t_torch = _time(eager)
            rows.append({"model": name, "graph": key, "batch": n, "fused_attention": count_fused_attention(graph),
                         "max_abs_diff_logits": float(np.abs(logits - ref).max()),
                         "ort_img_s": round(n / t_ort, 1), "torch_img_s": round(n / t_torch, 1),
                         "ort_vs_torch": round(t_torch / t_ort, 3)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vitlab_fmnist"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("check_cuda: no CUDA device; nothing to check", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += check_model(name, args.batches, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
