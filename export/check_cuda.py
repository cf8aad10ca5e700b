"""GPU check: every node of vitlab's exported graphs, attention (and a detector's NMS) included, runs on ONNX
Runtime's CUDA provider, and how fast, against PyTorch on the same GPU.

Each graph is first opened CUDA-only with ``session.disable_cpu_ep_fallback=1`` (``cuda_only`` in its rows).
ONNX Runtime places small int64 shape arithmetic on the CPU by design, which that setting refuses, so a refused
strict session is not by itself a defect: the graph is then timed with CPU fallback allowed, and the per-provider
node counts from ONNX Runtime's own profile split CPU nodes into ``cpu_shape`` (that arithmetic) and
``cpu_compute`` (anything else, attention included). Exit status 1 when any graph has a ``cpu_compute`` node or a
check raised; 2 without a CUDA device (except ``--dry-run``).

``--all`` runs every figure of issue 27 in one command, in priority order under a time budget (``--budget-s``; a
figure past it is recorded as skipped), and prints its estimated plan first: placement and parity of ViT-S's four
graphs; ONNX Runtime (CUDA provider with host inputs, with I/O binding, with CUDA graphs; TensorRT fp16) against
PyTorch eager and ``torch.compile`` (fp16 / bf16 autocast, SDPA) for ViT-S and ViT-B at batch 1 / 64 / 256 / 1024;
the Predictor over JPEG files against the model alone; the 640-px detector and the diffusion step against PyTorch.
Every sub-check fails soft (its error is a row; the rest go on). ``--json`` gets the document after every row:
``machine`` (``vitlab_edge.machine``), ``gpu`` (name, driver, CUDA, cuDNN, ONNX Runtime, TensorRT), ``command``,
``date``, ``plan`` and ``rows``. ``--dry-run`` runs the same plan on the CPU with tiny models (the structure, not
figures: CUDA and TensorRT fall back to the CPU provider, each in one log line).

    python export/check_cuda.py --all --json gpu.json      # everything; no job starts after --budget-s (480)
    python export/check_cuda.py --dry-run --json dry.json  # the same plan on the CPU, tiny models (2 min, 2 cores)
    python export/check_cuda.py                            # ViT-S/16 and the demo model at batch 1, 64, 256, 1024
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import cuda_timing  # noqa: E402
from cuda_checks import (  # noqa: E402, F401 - the checks, importable from here (tests/test_gpu.py)
    _emit,
    check_classifier,
    check_detector,
    check_generator,
    classifier_graphs,
    placement,
)
from cuda_timing import ORT_VARIANTS, TORCH_VARIANTS  # noqa: E402
from vitlab_edge.files import atomic_write  # noqa: E402


class Run:
    """One ``--all`` / ``--dry-run`` run: device, timing window, batches, deadline, the JSON document and the
    models exported so far (each once)."""

    def __init__(self, args: argparse.Namespace, out_dir: Path) -> None:
        from vitlab_edge.machine import machine_info, run_info

        self.dry, self.device = args.dry_run, "cpu" if args.dry_run else "cuda"
        self.seconds, self.batches, self.out_dir, self.json = args.seconds, args.batches, out_dir, args.json
        self.deadline = time.perf_counter() + args.budget_s
        self.doc: dict[str, Any] = {"machine": machine_info(), "gpu": gpu_info(), **run_info(),
                                    "budget_s": args.budget_s, "dry_run": self.dry, "plan": [], "rows": []}
        self.rows: list[dict] = self.doc["rows"]
        self._models: dict[str, Any] = {}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def emit(self, row: dict) -> None:
        _emit(self.rows, row, self.save)

    def save(self) -> None:
        if self.json:
            atomic_write(self.json, lambda p: p.write_text(json.dumps(self.doc, indent=2)))  # never a torn file

    def classifier(self, name: str) -> tuple[Any, dict[str, Path]]:
        if name not in self._models:
            self._models[name] = classifier_graphs(name, self.out_dir)
        return self._models[name]

    def session(self, path: Path, providers: list[Any], batch: int | None = None):
        """A session for a timed variant. On the GPU a strict one: the first provider asked for runs, or it raises
        (no silent fallback under a TensorRT or CUDA-graph label); on a dry run the edge kit's, falling back to
        the CPU provider with one log line."""
        import onnxruntime as ort
        from vitlab_edge.binding import fixed_batch_options
        from vitlab_edge.providers import expand, provider_name, unavailable
        from vitlab_edge.session import create_session

        options = fixed_batch_options(batch) if batch else None
        if self.dry:
            return create_session(path, providers, options)
        wanted = expand(providers)
        why = unavailable(provider_name(wanted[0]), ort.get_available_providers(), os.path.dirname(ort.__file__))
        if why:
            raise RuntimeError(why)
        sess = ort.InferenceSession(str(path), options, providers=wanted, enable_fallback=0)
        if sess.get_providers()[0] != provider_name(wanted[0]):
            raise RuntimeError(f"{provider_name(wanted[0])} not granted: {sess.get_providers()}")
        return sess


def gpu_info() -> dict[str, Any]:
    """The GPU and the software that ran on it: name, compute capability, memory, driver (``nvidia-smi``), CUDA
    and cuDNN of torch, ONNX Runtime and its providers, TensorRT (or why not)."""
    import shutil
    import subprocess

    import onnxruntime as ort
    import torch
    from vitlab_edge.providers import TENSORRT, unavailable

    info: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version(), "onnxruntime": ort.__version__,
                            "ort_providers": ort.get_available_providers()}
    info["tensorrt"] = unavailable(TENSORRT, info["ort_providers"], os.path.dirname(ort.__file__)) or "available"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    count=torch.cuda.device_count())
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=10).stdout
            info["nvidia_smi"] = [line.strip() for line in out.splitlines() if line.strip()]
            info["driver"] = info["nvidia_smi"][0].split(",")[1].strip() if info["nvidia_smi"] else None
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    return info


def plan(run: Run, args: argparse.Namespace) -> list[tuple[str, float, Any]]:
    """``(what, estimated seconds on one H100 / H200, job)`` in priority order: what matters most runs first, so a
    spent budget skips the least."""
    s, b, det, gen = args.small, args.base, args.detect_model, args.generate_model
    eager = [v for v in ORT_VARIANTS if "tensorrt" not in v] + [v for v in TORCH_VARIANTS if "eager" in v]
    compiled, trt = [v for v in TORCH_VARIANTS if "compile" in v], [v for v in ORT_VARIANTS if "tensorrt" in v]

    def speed(name: str, variants: list[str]):
        return lambda: cuda_timing.speed_rows(run, name, run.classifier(name)[0], run.classifier(name)[1], variants)

    def predictor():
        files = cuda_timing.write_jpegs(run.out_dir / "jpegs", args.jpegs, (500, 375) if not run.dry else (64, 48),
                                        os.cpu_count() or 1)
        cuda_timing.predictor_rows(run, s, predictor_backends(run, s), files, args.predict_batch, args.workers)

    return [
        (f"placement + parity, {s}: 4 graphs at batch 1 and {max(run.batches)}", 70,
         lambda: check_classifier(s, sorted({1, max(run.batches)}), run.out_dir, run.seconds, run.rows, run.save,
                                  run.device, run.classifier(s))),
        (f"speed {s}: ONNX Runtime (host I/O, I/O binding, CUDA graphs) + eager", 60, speed(s, eager)),
        (f"Predictor over {args.jpegs} JPEGs vs model only, {s}", 60, predictor),
        (f"speed {s}: torch.compile fp16 / bf16", 80, speed(s, compiled)),
        (f"speed {s}: TensorRT fp16 (engine build)", 70, speed(s, trt)),
        (f"speed {b}: ONNX Runtime + eager (export first)", 80, speed(b, eager)),
        (f"detector {det}: fp32 / fp16 vs eager", 60,
         lambda: check_detector(det, args.detect_batches, run.out_dir, run.seconds, run.rows, run.save, run.device)),
        (f"diffusion step {gen}: fp32 / fp16 vs eager", 40,
         lambda: check_generator(gen, args.generate_batches, run.out_dir, run.seconds, run.rows, run.save,
                                 run.device)),
        (f"speed {b}: torch.compile fp16 / bf16", 80, speed(b, compiled)),
        (f"speed {b}: TensorRT fp16 (engine build)", 90, speed(b, trt)),
    ]


def predictor_backends(run: Run, name: str) -> dict[str, Any]:
    """The Predictor's two backends for ``name``: torch (bf16 autocast on CUDA) and ONNX Runtime (the fp16
    ``ort-mha`` graph with vitlab metadata, CUDA provider)."""
    import onnx

    from vitlab.inference.backends import OrtBackend, TorchBackend
    from vitlab.onnx.graph import model_metadata, set_metadata

    model, paths = run.classifier(name)
    graph = onnx.load(paths["fp16/ort-mha"])
    set_metadata(graph, model_metadata(model, name, "ort-mha", 23, "fp16", labels=[str(i) for i in range(10)]))
    path = run.out_dir / f"{name}-served.onnx"
    onnx.save(graph, path)
    return {"torch": TorchBackend(model, run.device, autocast=None if run.dry else "bfloat16"),
            "onnxruntime": OrtBackend(path, providers=["cpu"] if run.dry else ["cuda"])}


def run_all(args: argparse.Namespace, tmp: Path) -> int:
    run = Run(args, tmp)
    jobs = plan(run, args)
    run.doc["plan"] = [{"job": what, "estimate_s": est} for what, est, _ in jobs]
    total = sum(est for _, est, _ in jobs)
    print(f"check_cuda: plan ({'dry run on the CPU; ' if run.dry else ''}estimates for one H100 / H200, "
          f"{total:.0f} s in all; budget {args.budget_s:.0f} s, a job past it is skipped):", flush=True)
    for what, est, _ in jobs:
        print(f"  ~{est:4.0f} s  {what}", flush=True)
    failed = 0
    for k, (what, est, job) in enumerate(jobs):
        if k and run.left() < est / 2:  # a job that cannot get half its estimate would only be cut short
            run.emit({"check": "job", "job": what, "skipped": f"time budget: {max(0, run.left()):.0f} s left"})
            continue
        t = time.perf_counter()
        try:
            job()
            run.emit({"check": "job", "job": what, "seconds": round(time.perf_counter() - t, 1)})
        except Exception:  # noqa: BLE001 - one job's failure must not hide the others' figures
            failed += 1
            traceback.print_exc()
            run.emit({"check": "job", "job": what, "seconds": round(time.perf_counter() - t, 1),
                      "error": traceback.format_exc(limit=3)[-800:]})
    for row in cuda_timing.summaries(run.rows):
        run.emit(row)
    failed += sum(bool(r.get("placement", {}).get("cpu_compute")) for r in run.rows)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="every figure of issue 27, in one run (see above)")
    ap.add_argument("--dry-run", action="store_true", help="--all on the CPU with tiny models: the JSON's structure")
    ap.add_argument("--budget-s", type=float, default=480, help="--all: wall-clock budget; later jobs are skipped")
    ap.add_argument("--models", nargs="*", default=["vit_small_patch16_224", "vitlab_fmnist"],
                    help="classifiers (registered names), exported here with random weights")
    ap.add_argument("--batches", nargs="+", type=int, default=None, help="default 1 64 256 1024 (dry run: 1 2)")
    ap.add_argument("--detect", nargs="*", default=[], help="detectors: exported fp32 .onnx files or registered names")
    ap.add_argument("--detect-batches", nargs="+", type=int, default=None, help="default 1 64 (dry run: 1)")
    ap.add_argument("--generate", nargs="*", default=[], help="diffusion denoisers: exported .onnx or registered names")
    ap.add_argument("--generate-batches", nargs="+", type=int, default=None, help="default 1 64 256 (dry run: 1)")
    ap.add_argument("--seconds", type=float, default=None, help="timing window per figure (default 1.5; --all "
                    "0.5; dry run 0.01)")
    ap.add_argument("--json", default=None, help="also write the rows here (after each row)")
    args = ap.parse_args(argv)
    dry, args.all = args.dry_run, args.all or args.dry_run
    args.batches = args.batches or ([1, 2] if dry else [1, 64, 256, 1024])
    args.detect_batches = args.detect_batches or ([1] if dry else [1, 64])
    args.generate_batches = args.generate_batches or ([1] if dry else [1, 64, 256])
    args.seconds = args.seconds if args.seconds is not None else (0.01 if dry else 0.5 if args.all else 1.5)
    args.small, args.base = ("vitlab_tiny", "vitlab_tiny") if dry else ("vit_small_patch16_224", "vit_base_patch16_224")
    args.detect_model, args.generate_model = ("vitdet_scenes", "dit_fmnist_tiny") if dry else \
        ("vitdet_small_640", "dit_fmnist")
    args.jpegs, args.predict_batch, args.workers = (16, 8, 0) if dry else (4096, 256, None)
    import torch

    if not dry and not torch.cuda.is_available():
        print("check_cuda: no CUDA device; nothing to check (--dry-run runs the plan on the CPU)", file=sys.stderr)
        return 2
    import onnxruntime as ort

    print(json.dumps({"gpu": torch.cuda.get_device_name(0) if not dry else None, "torch": torch.__version__,
                      "onnxruntime": ort.__version__, "providers": ort.get_available_providers()}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.all:
            return run_all(args, Path(tmp))
        rows: list[dict] = []
        failed = 0
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
