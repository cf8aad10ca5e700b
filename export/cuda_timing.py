"""The timed variants of ``export/check_cuda.py``: ONNX Runtime (CUDA provider with host inputs, with I/O binding,
with CUDA graphs; TensorRT fp16) against PyTorch (eager and ``torch.compile``, fp16 / bf16 autocast, SDPA), and the
Predictor over JPEG files against the model alone. Every function takes the check's ``Run`` (device, timing window,
deadline, row sink) and returns or emits JSON-ready rows; on ``--dry-run`` the same code runs on the CPU (CUDA and
TensorRT then fall back to the CPU provider, in one log line each, and the rows say what ran).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TORCH_VARIANTS = ("torch/eager/fp16", "torch/eager/bf16", "torch/compile/fp16", "torch/compile/bf16")
ORT_VARIANTS = ("ort/cuda/fp16-mha/host-io", "ort/cuda/fp16-mha/iobinding", "ort/cuda/fp16-onnx/iobinding",
                "ort/cuda-graph/fp16-mha", "ort/tensorrt/fp16")


def median_seconds(fn: Callable[[], Any], seconds: float, warmup: int = 2, min_calls: int = 5) -> float:
    """Median seconds per call over ~``seconds`` of calls (at least ``min_calls``), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < min_calls:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def first_call(fn: Callable[[], Any]) -> float:
    """Seconds of one call (a compile, an engine build, a CUDA graph capture)."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def torch_runner(model: Any, x: Any, variant: str, run: Any, compiled: dict) -> Callable[[], None]:
    """``model(x)`` under ``torch.inference_mode`` and autocast (``fp16`` / ``bf16``), eager or through one
    ``torch.compile`` of the model per check (``dynamic=True``: one compile for every batch size; the ``eager``
    backend on a dry run), synchronised."""
    import torch

    _, mode, prec = variant.split("/")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[prec]
    if mode == "compile":
        if id(model) not in compiled:
            compiled[id(model)] = torch.compile(model, dynamic=True, backend="eager" if run.dry else "inductor")
        model = compiled[id(model)]

    def call() -> None:
        with torch.inference_mode(), torch.autocast(run.device, dtype=dtype, enabled=dtype is not None):
            model(x)
        sync(run.device)

    return call


def sdpa_in_use(model: Any) -> bool | None:
    """Whether the backbone's attention calls ``F.scaled_dot_product_attention`` (timm's ``fused_attn``)."""
    flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    return all(flags) if flags else None


def ort_runner(variant: str, graphs: dict[str, Path], x: np.ndarray, run: Any, cache: dict
               ) -> tuple[Callable[[], None], dict[str, Any]]:
    """A callable for one ONNX Runtime variant at ``x``'s batch, and what ran (``providers``). Sessions are kept in
    ``cache`` across batches (a CUDA-graph session is per batch: its shapes are fixed); inputs bound once, outputs
    left on the device except for ``host-io`` (what ``session.run`` with numpy costs: both copies)."""
    from vitlab_edge.binding import BoundRunner
    from vitlab_edge.providers import CudaOptions, TensorRTOptions, batch_profile

    kind = variant.split("/")
    n, chw = len(x), tuple(x.shape[1:])
    if kind[1] == "cuda-graph":
        key = (variant, n)
        if key not in cache:
            cache[key] = BoundRunner(run.session(graphs["fp16/ort-mha"], [CudaOptions(enable_cuda_graph=True)],
                                                 batch=n), ["logits"], batch=n)
        runner = cache[key]
        runner.put(x)
        runner.run()  # the first run captures the graph
        return runner.run, {"providers": runner.session.get_providers(), "cuda_graph": True}
    if kind[1] == "tensorrt":
        if variant not in cache:
            opts = TensorRTOptions(fp16=True, cache_dir=str(run.out_dir / "trt"),
                                   profile=batch_profile("images", chw, max(run.batches), min(256, max(run.batches))))
            cache[variant] = BoundRunner(run.session(graphs["fp32/unfused"], [opts, CudaOptions()]), ["logits"])
        runner = cache[variant]
        runner.put(x)
        return runner.run, {"providers": runner.session.get_providers(),
                            "first_run_s": round(first_call(runner.run), 2),
                            "graph": "fp32, attention as MatMul/Softmax (TensorRT fuses it), trt_fp16_enable"}
    graph = {"fp16-mha": "fp16/ort-mha", "fp16-onnx": "fp16/onnx"}[kind[2]]
    if graph not in cache:
        cache[graph] = run.session(graphs[graph], [CudaOptions()])
    session = cache[graph]
    if kind[3] == "host-io":
        return (lambda: session.run(["logits"], {"images": x})), {"providers": session.get_providers()}
    runner = BoundRunner(session, ["logits"])
    runner.put(x)
    return runner.run, {"providers": session.get_providers()}


def unfused_graph(model: Any, path: Path) -> Path:
    """``model``'s fp32 graph with attention left as MatMul / Softmax (timm's ``fused_attn`` off while exporting),
    for TensorRT, which fuses attention itself and may not parse the ``Attention`` op of opset 23."""
    import onnx

    from vitlab.onnx.graph import export_graph

    if not path.is_file():
        attn = [m for m in model.modules() if hasattr(m, "fused_attn")]
        flags = [m.fused_attn for m in attn]
        try:
            for m in attn:
                m.fused_attn = False
            onnx.save(export_graph(model.cpu()), path)
        finally:
            for m, flag in zip(attn, flags):
                m.fused_attn = flag
    return path


def speed_rows(run: Any, name: str, model: Any, graphs: dict[str, Path], variants: list[str]) -> None:
    """One ``speed`` row per (batch, variant) with ``img_s`` (or the error, or ``skipped`` past the deadline)."""
    import torch

    if any("tensorrt" in v for v in variants):
        graphs = {**graphs, "fp32/unfused": unfused_graph(model, run.out_dir / f"{name}-fp32-unfused.onnx")}

    c, h, w = model.preprocess.input_size
    compiled: dict = {}
    sessions: dict = {}
    model = model.to(run.device).eval()
    for n in run.batches:
        x = np.random.default_rng(n).integers(0, 256, (n, c, h, w), dtype=np.uint8)
        xt = torch.from_numpy(x).to(run.device)
        for variant in variants:
            row: dict[str, Any] = {"check": "speed", "model": name, "batch": n, "variant": variant}
            if run.left() <= 0:
                run.emit({**row, "skipped": "time budget spent"})
                continue
            try:
                if variant.startswith("torch/"):
                    fn = torch_runner(model, xt, variant, run, compiled)
                    info = {"sdpa": sdpa_in_use(model), "first_call_s": round(first_call(fn), 2)}
                else:
                    fn, info = ort_runner(variant, graphs, x, run, sessions)
                t = median_seconds(fn, run.seconds)
            except Exception as e:  # noqa: BLE001 - one variant's failure must not hide the others' figures
                run.emit({**row, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"})
                continue
            run.emit({**row, **info, "img_s": round(n / t, 1)})
    sessions.clear()
    if run.device == "cuda":
        torch.cuda.empty_cache()


def summaries(rows: list[dict]) -> list[dict]:
    """Per (model, batch) of the ``speed`` rows: the best ONNX Runtime and the best PyTorch figure, which variant
    gave each, and their ratio (the issue's goal: >= 1.0 at every batch)."""
    best: dict[tuple[str, int], dict[str, tuple[float, str]]] = {}
    for r in rows:
        if r.get("check") == "speed" and r.get("img_s"):
            side = best.setdefault((r["model"], r["batch"]), {})
            kind = r["variant"].split("/")[0]
            if r["img_s"] > side.get(kind, (0.0, ""))[0]:
                side[kind] = (r["img_s"], r["variant"])
    ran = {(r["model"], r["batch"], r["variant"]): r.get("providers", [None])[0] for r in rows
           if r.get("check") == "speed"}
    return [{"check": "summary", "model": model, "batch": n, "best_ort": b["ort"][1], "best_ort_img_s": b["ort"][0],
             "best_ort_ran_on": ran.get((model, n, b["ort"][1])),
             "best_torch": b["torch"][1], "best_torch_img_s": b["torch"][0],
             "ort_vs_torch": round(b["ort"][0] / b["torch"][0], 3)}
            for (model, n), b in best.items() if "ort" in b and "torch" in b]


def write_jpegs(folder: Path, count: int, size: tuple[int, int], workers: int) -> list[str]:
    """``count`` JPEG files (quality 90) of smooth random content plus grain, ``size`` = (width, height)."""
    from multiprocessing import get_context

    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder / f"{i:06d}.jpg"), size, i) for i in range(count)]
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            pool.map(_write_jpeg, jobs, chunksize=max(1, count // (4 * workers)))
    else:
        for job in jobs:
            _write_jpeg(job)
    return [j[0] for j in jobs]


def _write_jpeg(job: tuple[str, tuple[int, int], int]) -> None:
    from PIL import Image

    path, (w, h), seed = job
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (max(1, h // 32), max(1, w // 32), 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((w, h), Image.BILINEAR), dtype=np.int16)
    grain = rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
    Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(path, quality=90)


def predictor_rows(run: Any, name: str, backends: dict[str, Any], files: list[str], batch: int,
                   workers: int | None) -> None:
    """The Predictor over ``files`` (JPEG) against the model alone, per backend: ``predictor_img_s`` (end to end,
    and ``steady_img_s`` after the first batch), the model's ``busy_share`` (``Predictor.throughput``),
    ``model_only_img_s`` (the backend called on a decoded batch: host in, host out) and ``decode_only_img_s`` (the
    DataLoader alone, same workers: the most decoding allows)."""
    from vitlab.inference.predictor import Predictor, decode_loader, default_workers

    first = next(iter(backends.values()))
    workers = default_workers(run.device == "cuda") if workers is None else workers
    t = time.perf_counter()
    decoded = 0
    ready = None
    for b in decode_loader(files, first.preprocess, batch, workers, gpu=run.device == "cuda"):
        decoded += len(b["index"])
        ready = b["image"] if ready is None else ready
    decode_img_s = round(decoded / (time.perf_counter() - t), 1)
    for label, backend in backends.items():
        row = {"check": "predictor", "model": name, "backend": label, "name": backend.name, "batch": batch,
               "workers": workers, "images": len(files), "decode_only_img_s": decode_img_s}
        if run.left() <= 0:
            run.emit({**row, "skipped": "time budget spent"})
            continue
        try:
            model_s = median_seconds(lambda b=backend: b(ready), run.seconds)
            predictor = Predictor(backend)
            predictor.predict(files[:batch * 2], batch_size=batch, num_workers=workers)  # warm: workers, kernels
            results = predictor.predict(files, batch_size=batch, num_workers=workers)
            report = predictor.throughput or {}
            model_img_s = len(ready) / model_s
            run.emit({**row, "model_only_img_s": round(model_img_s, 1), "errors": sum(r.error is not None
                                                                                     for r in results),
                      "predictor_img_s": report.get("img_s"), "steady_img_s": report.get("steady_img_s"),
                      "busy_share": report.get("busy_share"), "pipelined": report.get("pipelined"),
                      "vs_model_only": round((report.get("steady_img_s") or report["img_s"]) / model_img_s, 3)})
        except Exception as e:  # noqa: BLE001
            run.emit({**row, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"})
