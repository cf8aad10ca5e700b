"""GPU check: every node of vitlab's exported graphs, attention (and a detector's NMS) included, runs on ONNX
Runtime's CUDA provider, and how fast, against PyTorch on the same GPU.

Each graph is first opened CUDA-only with ``session.disable_cpu_ep_fallback=1`` (``cuda_only`` in its rows).
ONNX Runtime places small int64 shape arithmetic on the CPU by design, which that setting refuses, so a refused
strict session is not by itself a defect: the graph is then timed with CPU fallback allowed, and the per-provider
node counts from ONNX Runtime's own profile split CPU nodes into ``cpu_shape`` (that arithmetic) and
``cpu_compute`` (anything else, attention included). Exit status 1 when any graph has a ``cpu_compute`` node or a
check raised.
Classifiers: fp32/fp16 graphs with the standard ``Attention`` op and with ``com.microsoft.MultiHeadAttention``,
against PyTorch eager (SDPA; fp16 under ``torch.autocast``). Detectors (an exported ``.onnx`` or a registered
variant, exported here): fp32 vs fp16 throughput, and the CUDA detections against the CPU provider's. Diffusion
denoisers (an exported step): fp32 vs fp16 step and sampling throughput. Needs vitlab + torch (for the export and
the PyTorch baseline):

    python export/check_cuda.py                       # ViT-S/16 and the demo model at batch 1, 64, 256, 1024
    python export/check_cuda.py --models vitlab_fmnist --batches 1 8 --detect vitdet_scenes --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
CUDA = ["CUDAExecutionProvider"]


def _time(fn, seconds: float) -> float:
    """Median seconds per call over ~``seconds`` of calls, after warm-up."""
    for _ in range(3):
        fn()
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 5:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def cuda_session(path: Path):
    """A CUDA-only session with CPU fallback disabled: raises if ONNX Runtime would place any node on the CPU,
    shape arithmetic included."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    sess = ort.InferenceSession(str(path), opts, providers=CUDA)
    assert sess.get_providers()[0] == CUDA[0], sess.get_providers()
    return sess


def placement(path: Path, feeds: dict) -> dict[str, Any]:
    """Nodes per provider, read from one profiled run with CPU fallback allowed (so that a failing strict session
    still says what went to the CPU). CPU nodes are split into ``cpu_shape`` (every output int64 with at most 8
    values: shape arithmetic such as ``Shape -> Gather -> Concat -> Reshape``, which ONNX Runtime places on the CPU
    by design, ``GetCpuPreferredNodes``, and which ``disable_cpu_ep_fallback`` then refuses) and ``cpu_compute``
    (anything else: a node without a CUDA kernel, the real defect)."""
    import math

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), opts, providers=[*CUDA, "CPUExecutionProvider"])
    sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    nodes = {e["name"]: e["args"] for e in events if e.get("cat") == "Node" and "provider" in e.get("args", {})}
    out: dict[str, Any] = {"cuda_nodes": 0, "cpu_shape": {}, "cpu_compute": {}}
    for args in nodes.values():
        if args["provider"] == CUDA[0]:
            out["cuda_nodes"] += 1
            continue
        outputs = [(dtype, math.prod(shape)) for o in args.get("output_type_shape", []) for dtype, shape in o.items()]
        kind = "cpu_shape" if outputs and all(t == "int64" and n <= 8 for t, n in outputs) else "cpu_compute"
        out[kind][args["op_name"]] = out[kind].get(args["op_name"], 0) + 1
    return out


def open_session(path: Path):
    """``(session, cuda_only, error)``: the strict CUDA-only session, else (to still time the graph) one that lets
    ONNX Runtime put what it will on the CPU."""
    import onnxruntime as ort

    try:
        return cuda_session(path), True, None
    except Exception as e:  # noqa: BLE001 - reported with the figures
        sess = ort.InferenceSession(str(path), providers=[*CUDA, "CPUExecutionProvider"])
        return sess, False, str(e).splitlines()[0][:200]


def _emit(rows: list[dict], row: dict, out: str | None) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)
    if out:  # rewritten after every row: a run cut short still leaves what it measured
        Path(out).write_text(json.dumps(rows, indent=2))


def check_classifier(name: str, batches: list[int], out_dir: Path, seconds: float, rows: list, out: str | None):
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    import vitlab
    from vitlab.onnx.graph import count_fused_attention, export_graph, rewrite_to_ort_mha
    from vitlab.onnx.precision import to_fp16

    model = vitlab.create_model(name, num_classes=10).eval()
    fp32 = export_graph(model)
    graphs = {"fp32/onnx": fp32, "fp32/ort-mha": rewrite_to_ort_mha(fp32)}
    graphs["fp16/onnx"], graphs["fp16/ort-mha"] = to_fp16(graphs["fp32/onnx"]), to_fp16(graphs["fp32/ort-mha"])
    cuda = model.cuda()
    c, h, w = model.preprocess.input_size
    for key, graph in graphs.items():
        path = out_dir / f"{name}-{key.replace('/', '-')}.onnx"
        onnx.save(graph, path)
        x1 = np.random.default_rng(0).integers(0, 256, (1, c, h, w), dtype=np.uint8)
        base = {"model": name, "graph": key, "fused_attention": count_fused_attention(graph),
                "depth": model.backbone.depth, "placement": placement(path, {"images": x1})}
        sess, base["cuda_only"], base["error"] = open_session(path)
        for n in batches:
            x = np.random.default_rng(n).integers(0, 256, (n, c, h, w), dtype=np.uint8)
            xt = torch.from_numpy(x).cuda()
            fp16 = key.startswith("fp16")
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
                ref = cuda(xt).float().cpu().numpy()
            logits = sess.run(["logits"], {"images": x})[0]
            binding = sess.io_binding()  # inputs and outputs on the GPU, as a serving app would keep them
            binding.bind_ortvalue_input("images", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            binding.bind_output("logits", "cuda")
            t_ort = _time(lambda b=binding, s=sess: s.run_with_iobinding(b), seconds)

            def eager(xt=xt, fp16=fp16):
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
                    cuda(xt)
                torch.cuda.synchronize()

            t_torch = _time(eager, seconds)
            _emit(rows, {**base, "batch": n,
                         "max_abs_diff_logits": float(np.abs(logits - ref).max()),
                         "top1_agree_pct": float((logits.argmax(1) == ref.argmax(1)).mean() * 100),
                         "ort_img_s": round(n / t_ort, 1), "torch_img_s": round(n / t_torch, 1),
                         "ort_vs_torch": round(t_torch / t_ort, 3)}, out)
        del sess


def detection_graphs(spec: str, out_dir: Path) -> dict[str, Path]:
    """fp32 and fp16 graphs of a detector: ``spec`` an exported fp32 ``.onnx`` or a registered variant (random
    weights, exported here with ``score_thresh=0``, so that NMS gets the full top-k of every image: its worst case)."""
    import onnx

    from vitlab.onnx.detect import postprocess_nodes
    from vitlab.onnx.precision import to_fp16

    if spec.endswith(".onnx"):
        fp32, name = onnx.load(spec), Path(spec).parent.parent.name or Path(spec).stem
    else:
        from vitlab.models.detect import create_detector
        from vitlab.onnx.detect import DetectionExport

        fp32, name = DetectionExport(create_detector(spec, num_classes=10), {"score_thresh": 0.0}).graph(23), spec
    paths = {}
    for prec, graph in {"fp32": fp32, "fp16": to_fp16(fp32, postprocess_nodes(fp32))}.items():
        paths[prec] = out_dir / f"{name}-{prec}.onnx"
        onnx.save(graph, paths[prec])
    return paths


def check_detector(spec: str, batches: list[int], out_dir: Path, seconds: float, rows: list, out: str | None):
    import numpy as np
    import onnx
    import onnxruntime as ort

    from vitlab.onnx.detect import OUTPUTS, detection_parity
    from vitlab.onnx.graph import count_fused_attention

    for prec, path in detection_graphs(spec, out_dir).items():
        graph = onnx.load(path)
        shape = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim[1:]]
        x1 = np.random.default_rng(0).integers(0, 256, (1, *shape), dtype=np.uint8)
        base = {"model": spec, "graph": f"detect/{prec}", "fused_attention": count_fused_attention(graph),
                "nms_nodes": sum(n.op_type == "NonMaxSuppression" for n in graph.graph.node),
                "placement": placement(path, {"images": x1})}
        sess, base["cuda_only"], base["error"] = open_session(path)
        cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for n in batches:
            x = np.random.default_rng(n).integers(0, 256, (n, *shape), dtype=np.uint8)
            got = dict(zip(OUTPUTS, sess.run(OUTPUTS, {"images": x}), strict=True))
            ref = dict(zip(OUTPUTS, cpu.run(OUTPUTS, {"images": x[:8]}), strict=True))
            binding = sess.io_binding()
            binding.bind_ortvalue_input("images", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            for k in OUTPUTS:
                binding.bind_output(k, "cuda")
            t = _time(lambda b=binding, s=sess: s.run_with_iobinding(b), seconds)
            parity = detection_parity(ref, {k: v[:8] for k, v in got.items()})
            _emit(rows, {**base, "batch": n, "ort_img_s": round(n / t, 1),
                         "mean_num_dets": float(got["num_dets"].mean()),
                         "vs_cpu_provider": {k: parity[k] for k in ("matched_detections_pct", "min_matched_iou",
                                                                    "max_abs_diff_matched_scores") if k in parity}},
                  out)
        del sess, cpu


def check_generator(spec: str, batches: list[int], out_dir: Path, seconds: float, rows: list, out: str | None):
    """An exported denoiser step (``vitlab export`` of a DiffusionTask): fp32 and fp16 on CUDA only, step
    throughput per batch (inputs bound on the GPU), whole-sampling throughput through the edge kit's numpy loop
    (20 Euler steps, guidance 2), and the CUDA step against the CPU provider's."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from vitlab_edge.metadata import GENERATION_INPUTS
    from vitlab_edge.sampler import session_step
    from vitlab_edge.sampling import sample

    from vitlab.onnx.graph import count_fused_attention
    from vitlab.onnx.precision import to_fp16

    fp32 = onnx.load(spec)
    shape = [d.dim_value for d in fp32.graph.input[0].type.tensor_type.shape.dim[1:]]
    for prec, graph in {"fp32": fp32, "fp16": to_fp16(fp32)}.items():
        path = out_dir / f"generator-{prec}.onnx"
        onnx.save(graph, path)

        def feeds(n: int, seed: int = 0) -> dict:
            rng = np.random.default_rng(seed)
            values = (rng.standard_normal((n, *shape), dtype=np.float32), rng.random(n, dtype=np.float32),
                      rng.integers(0, 10, n), np.full(n, 2.0, np.float32))
            return dict(zip(GENERATION_INPUTS, values))

        base = {"model": spec, "graph": f"generate/{prec}", "fused_attention": count_fused_attention(graph),
                "placement": placement(path, feeds(1))}
        sess, base["cuda_only"], base["error"] = open_session(path)
        cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for n in batches:
            f = feeds(n)
            diff = float(np.abs(sess.run(["v"], f)[0][:8] - cpu.run(["v"], {k: v[:8] for k, v in f.items()})[0]).max())
            binding = sess.io_binding()
            for k, v in f.items():
                binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0))
            binding.bind_output("v", "cuda")
            t = _time(lambda b=binding, s=sess: s.run_with_iobinding(b), seconds)
            t0 = time.perf_counter()
            sample(session_step(sess), np.arange(n) % 10, shape, steps=20, guidance=2.0, seed=0)
            _emit(rows, {**base, "batch": n, "step_img_s": round(n / t, 1), "max_abs_diff_v_vs_cpu": diff,
                         "sampling_img_s_20_steps": round(n / (time.perf_counter() - t0), 1)}, out)
        del sess, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["vit_small_patch16_224", "vitlab_fmnist"],
                    help="classifiers (registered names), exported here with random weights")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64, 256, 1024])
    ap.add_argument("--detect", nargs="*", default=[], help="detectors: exported fp32 .onnx files or registered names")
    ap.add_argument("--detect-batches", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--generate", nargs="*", default=[], help="exported diffusion denoisers (.onnx)")
    ap.add_argument("--generate-batches", nargs="+", type=int, default=[1, 64, 256])
    ap.add_argument("--seconds", type=float, default=1.5, help="timing window per figure")
    ap.add_argument("--json", default=None, help="also write the rows here (after each row)")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("check_cuda: no CUDA device; nothing to check", file=sys.stderr)
        return 2
    import onnxruntime as ort

    print(json.dumps({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "onnxruntime": ort.__version__,
                      "providers": ort.get_available_providers()}), flush=True)
    rows: list[dict] = []
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(check_classifier, m, args.batches) for m in args.models]
        jobs += [(check_detector, d, args.detect_batches) for d in args.detect]
        jobs += [(check_generator, g, args.generate_batches) for g in args.generate]
        for check, name, batches in jobs:
            try:
                check(name, batches, Path(tmp), args.seconds, rows, args.json)
            except Exception:  # noqa: BLE001 - one model's failure must not hide the others' figures
                failed += 1
                traceback.print_exc()
                _emit(rows, {"model": name, "error": traceback.format_exc(limit=3)[-600:]}, args.json)
    failed += sum(bool(r.get("placement", {}).get("cpu_compute")) for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
