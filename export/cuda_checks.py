"""The placement and parity checks of ``export/check_cuda.py`` (its docstring says what they check): each exported
graph opened CUDA-only, its nodes per provider from ONNX Runtime's profile, its outputs against PyTorch and the CPU
provider, and its speed with inputs and outputs bound on the device. A classifier's four graphs, a detector's two
(NMS included), a diffusion denoiser's step. ``device="cpu"`` (a dry run) skips the placement and runs on the CPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cuda_timing
from cuda_timing import median_seconds
from vitlab_edge.files import atomic_write

CUDA = ["CUDAExecutionProvider"]


def cuda_session(path: Path):
    """A CUDA-only session with CPU fallback disabled: raises if ONNX Runtime would place any node on the CPU,
    shape arithmetic included."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    sess = ort.InferenceSession(str(path), opts, providers=CUDA)
    assert sess.get_providers()[0] == CUDA[0], sess.get_providers()
    return sess


def placement(path: Path, feeds: dict, device: str = "cuda") -> dict[str, Any]:
    """Nodes per provider, read from one profiled run with CPU fallback allowed (so that a failing strict session
    still says what went to the CPU). CPU nodes are split into ``cpu_shape`` (every output int64 with at most 8
    values: shape arithmetic such as ``Shape -> Gather -> Concat -> Reshape``, which ONNX Runtime places on the CPU
    by design, ``GetCpuPreferredNodes``, and which ``disable_cpu_ep_fallback`` then refuses) and ``cpu_compute``
    (anything else: a node without a CUDA kernel, the real defect). Without CUDA (a dry run): ``skipped``."""
    import math

    import onnxruntime as ort

    if device != "cuda":
        return {"skipped": "no CUDA (dry run)"}
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


def open_session(path: Path, device: str = "cuda"):
    """``(session, cuda_only, error)``: the strict CUDA-only session, else (to still time the graph) one that lets
    ONNX Runtime put what it will on the CPU; on a dry run a CPU session."""
    import onnxruntime as ort

    if device != "cuda":
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), False, "dry run: CPU"
    try:
        return cuda_session(path), True, None
    except Exception as e:  # noqa: BLE001 - reported with the figures
        sess = ort.InferenceSession(str(path), providers=[*CUDA, "CPUExecutionProvider"])
        return sess, False, str(e).splitlines()[0][:200]


def _emit(rows: list[dict], row: dict, out: Any) -> None:
    """Keep ``row``, print it, and save: ``out`` a path (the rows as a list), a callable (``Run.save``) or None."""
    rows.append(row)
    print(json.dumps(row), flush=True)
    if callable(out):
        out()
    elif out:  # rewritten after every row: a run cut short still leaves what it measured
        atomic_write(out, lambda p: p.write_text(json.dumps(rows, indent=2)))


def _bound_time(sess, feeds: dict, outputs: list[str], seconds: float) -> float:
    """Median seconds of a run with ``feeds`` and ``outputs`` bound on the session's device (I/O binding)."""
    from vitlab_edge.binding import BoundRunner

    runner = BoundRunner(sess, outputs)
    runner.put(feeds)
    return median_seconds(runner.run, seconds)


def classifier_graphs(name: str, out_dir: Path) -> tuple[Any, dict[str, Path]]:
    """A registered classifier (random weights, 10 classes) and its four graphs saved in ``out_dir``: fp32 / fp16
    with the standard ``Attention`` op (``onnx``) and with ``com.microsoft.MultiHeadAttention`` (``ort-mha``)."""
    import onnx

    import vitlab
    from vitlab.onnx.graph import export_graph, rewrite_to_ort_mha
    from vitlab.onnx.precision import to_fp16

    model = vitlab.create_model(name, num_classes=10).eval()
    fp32 = export_graph(model)
    graphs = {"fp32/onnx": fp32, "fp32/ort-mha": rewrite_to_ort_mha(fp32)}
    graphs["fp16/onnx"], graphs["fp16/ort-mha"] = to_fp16(graphs["fp32/onnx"]), to_fp16(graphs["fp32/ort-mha"])
    paths = {}
    for key, graph in graphs.items():
        paths[key] = out_dir / f"{name}-{key.replace('/', '-')}.onnx"
        onnx.save(graph, paths[key])
    return model, paths


def check_classifier(name: str, batches: list[int], out_dir: Path, seconds: float, rows: list, out: Any,
                     device: str = "cuda", exported: tuple[Any, dict[str, Path]] | None = None):
    """Per graph: fused attention nodes, placement, strict CUDA-only session or not; per batch: logits against
    PyTorch eager (fp16 graphs against autocast fp16), ORT (I/O binding) and eager img/s."""
    import numpy as np
    import onnx
    import torch

    from vitlab.onnx.graph import count_fused_attention

    model, paths = exported or classifier_graphs(name, out_dir)
    dev = model.to(device)
    c, h, w = model.preprocess.input_size
    for key, path in paths.items():
        graph = onnx.load(path)
        x1 = np.random.default_rng(0).integers(0, 256, (1, c, h, w), dtype=np.uint8)
        base = {"check": "placement", "model": name, "graph": key, "fused_attention": count_fused_attention(graph),
                "depth": model.backbone.depth, "placement": placement(path, {"images": x1}, device)}
        sess, base["cuda_only"], base["error"] = open_session(path, device)
        fp16 = key.startswith("fp16")
        for n in batches:
            x = np.random.default_rng(n).integers(0, 256, (n, c, h, w), dtype=np.uint8)
            xt = torch.from_numpy(x).to(device)

            def eager(xt=xt, fp16=fp16):
                with torch.no_grad(), torch.autocast(device, dtype=torch.float16, enabled=fp16 and device == "cuda"):
                    out_ = dev(xt)
                cuda_timing.sync(device)
                return out_

            ref = eager().float().cpu().numpy()
            logits = sess.run(["logits"], {"images": x})[0]
            t_ort = _bound_time(sess, {"images": x}, ["logits"], seconds)
            t_torch = median_seconds(eager, seconds)
            _emit(rows, {**base, "batch": n,
                         "max_abs_diff_logits": float(np.abs(logits - ref).max()),
                         "top1_agree_pct": float((logits.argmax(1) == ref.argmax(1)).mean() * 100),
                         "ort_img_s": round(n / t_ort, 1), "torch_img_s": round(n / t_torch, 1),
                         "ort_vs_torch": round(t_torch / t_ort, 3)}, out)
        del sess


def detection_graphs(spec: str, out_dir: Path) -> tuple[Any, dict[str, Path]]:
    """The detector (None for an ``.onnx`` spec) and its fp32 and fp16 graphs: ``spec`` an exported fp32 ``.onnx``
    or a registered variant (random weights, exported here with ``score_thresh=0``, so that NMS gets the full top-k
    of every image: its worst case)."""
    import onnx

    from vitlab.onnx.detect import postprocess_nodes
    from vitlab.onnx.precision import to_fp16

    model = None
    if spec.endswith(".onnx"):
        fp32, name = onnx.load(spec), Path(spec).parent.parent.name or Path(spec).stem
    else:
        from vitlab.models.detect import create_detector
        from vitlab.onnx.detect import DetectionExport

        model = create_detector(spec, num_classes=10).eval()
        fp32, name = DetectionExport(model, {"score_thresh": 0.0}).graph(23), spec
    paths = {}
    for prec, graph in {"fp32": fp32, "fp16": to_fp16(fp32, postprocess_nodes(fp32))}.items():
        paths[prec] = out_dir / f"{name}-{prec}.onnx"
        onnx.save(graph, paths[prec])
    return model, paths


def check_detector(spec: str, batches: list[int], out_dir: Path, seconds: float, rows: list, out: Any,
                   device: str = "cuda"):
    """Per precision: placement, NMS nodes; per batch: ORT img/s (I/O binding), the CUDA detections against the CPU
    provider's, and PyTorch eager (fp16 under autocast) for a registered variant."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from vitlab.inference.backends import model_outputs
    from vitlab.onnx.detect import OUTPUTS, detection_parity
    from vitlab.onnx.graph import count_fused_attention

    model, paths = detection_graphs(spec, out_dir)
    for prec, path in paths.items():
        graph = onnx.load(path)
        shape = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim[1:]]
        x1 = np.random.default_rng(0).integers(0, 256, (1, *shape), dtype=np.uint8)
        base = {"check": "detector", "model": spec, "graph": f"detect/{prec}",
                "fused_attention": count_fused_attention(graph),
                "nms_nodes": sum(n.op_type == "NonMaxSuppression" for n in graph.graph.node),
                "placement": placement(path, {"images": x1}, device)}
        sess, base["cuda_only"], base["error"] = open_session(path, device)
        cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for n in batches:
            x = np.random.default_rng(n).integers(0, 256, (n, *shape), dtype=np.uint8)
            got = dict(zip(OUTPUTS, sess.run(OUTPUTS, {"images": x}), strict=True))
            ref = dict(zip(OUTPUTS, cpu.run(OUTPUTS, {"images": x[:8]}), strict=True))
            t = _bound_time(sess, {"images": x}, OUTPUTS, seconds)
            parity = detection_parity(ref, {k: v[:8] for k, v in got.items()})
            row = {**base, "batch": n, "ort_img_s": round(n / t, 1), "mean_num_dets": float(got["num_dets"].mean()),
                   "vs_cpu_provider": {k: parity[k] for k in ("matched_detections_pct", "min_matched_iou",
                                                              "max_abs_diff_matched_scores") if k in parity}}
            if model is not None:
                xt, m = torch.from_numpy(x).to(device), model.to(device)
                cast = "float16" if prec == "fp16" and device == "cuda" else None

                def eager(xt=xt, m=m, cast=cast):
                    model_outputs(m, xt, {"score_thresh": 0.0}, cast, to_host=False)
                    cuda_timing.sync(device)

                t_torch = median_seconds(eager, seconds)
                row.update(torch_img_s=round(n / t_torch, 1), ort_vs_torch=round(t_torch / t, 3),
                           torch=f"eager {'fp16 autocast' if cast else 'fp32'}")
            _emit(rows, row, out)
        del sess, cpu


def generator_graph(spec: str, out_dir: Path) -> tuple[Any, Path]:
    """``(torch step module or None, fp32 step graph path)``: ``spec`` an exported denoiser (``vitlab export`` of a
    DiffusionTask) or a registered denoiser variant (random weights, its guided step exported here)."""
    if spec.endswith(".onnx"):
        return None, Path(spec)
    import onnx

    from vitlab.models.diffusion import Denoiser, denoiser_cfg
    from vitlab.onnx.generate import OUTPUTS, GuidedStep, step_examples
    from vitlab.onnx.graph import export_module

    denoiser = Denoiser(denoiser_cfg(spec)).eval()
    size = (denoiser.cfg.in_chans, denoiser.cfg.img_size, denoiser.cfg.img_size)
    step = GuidedStep(denoiser).eval()
    path = out_dir / f"{spec}-step.onnx"
    onnx.save(export_module(step, size, OUTPUTS, 23, "Denoiser", examples=step_examples(size, denoiser.null_class)),
              path)
    return step, path


def check_generator(spec: str, batches: list[int], out_dir: Path, seconds: float, rows: list, out: Any,
                    device: str = "cuda"):
    """A denoiser step (an exported ``.onnx`` or a registered variant): fp32 and fp16 on CUDA, step throughput per
    batch (inputs bound on the GPU), whole-sampling throughput through the edge kit's numpy loop (20 Euler steps,
    guidance 2), the CUDA step against the CPU provider's, and PyTorch eager (fp16 under autocast) for a variant."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from vitlab_edge.sampler import session_step
    from vitlab_edge.sampling import sample

    from vitlab.onnx.graph import count_fused_attention
    from vitlab.onnx.precision import to_fp16

    step, fp32_path = generator_graph(spec, out_dir)
    fp32 = onnx.load(fp32_path)
    names = [i.name for i in fp32.graph.input]
    shape = [d.dim_value for d in fp32.graph.input[0].type.tensor_type.shape.dim[1:]]
    for prec, graph in {"fp32": fp32, "fp16": to_fp16(fp32)}.items():
        path = out_dir / f"generator-{prec}.onnx"
        onnx.save(graph, path)

        def feeds(n: int, seed: int = 0) -> dict:
            rng = np.random.default_rng(seed)
            values = (rng.standard_normal((n, *shape), dtype=np.float32), rng.random(n, dtype=np.float32),
                      rng.integers(0, 10, n), np.full(n, 2.0, np.float32))
            return dict(zip(names, values))

        base = {"check": "generator", "model": spec, "graph": f"generate/{prec}",
                "fused_attention": count_fused_attention(graph), "placement": placement(path, feeds(1), device)}
        sess, base["cuda_only"], base["error"] = open_session(path, device)
        cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for n in batches:
            f = feeds(n)
            diff = float(np.abs(sess.run(["v"], f)[0][:8] - cpu.run(["v"], {k: v[:8] for k, v in f.items()})[0]).max())
            t = _bound_time(sess, f, ["v"], seconds)
            t0 = time.perf_counter()
            sample(session_step(sess), np.arange(n) % 10, shape, steps=20, guidance=2.0, seed=0)
            row = {**base, "batch": n, "step_img_s": round(n / t, 1), "max_abs_diff_v_vs_cpu": diff,
                   "sampling_img_s_20_steps": round(n / (time.perf_counter() - t0), 1)}
            if step is not None:
                m, args = step.to(device), [torch.from_numpy(v).to(device) for v in f.values()]
                fp16 = prec == "fp16" and device == "cuda"

                def eager(m=m, args=args, fp16=fp16):
                    with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=fp16):
                        m(*args)
                    cuda_timing.sync(device)

                t_torch = median_seconds(eager, seconds)
                row.update(torch_step_img_s=round(n / t_torch, 1), ort_vs_torch=round(t_torch / t, 3))
            _emit(rows, row, out)
        del sess, cpu
