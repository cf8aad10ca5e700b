"""Detection inference on this CPU: the trained scenes detector in PyTorch eager vs ONNX Runtime fp32 / int8.

Usage: ``python benchmarks/bench_detect.py [--ckpt runs/scenes_demo/checkpoints/last.ckpt] [--onnx-dir DIR]
[--seconds 2] [--rounds 3] [--batches 1 8] [--limit 1000] [--threads N] [--out runs/bench/detect.json]``

Inputs: the scenes' test split (``load_detection_eval_set("scenes", ...)``, at most ``--limit`` images), fed in
order and cycled, uint8 as the exported graph takes them. ``--onnx-dir``: a folder with ``model.onnx`` and
``model.int8.onnx``; default the checkpoint's run folder ``export/`` when it holds both, else the checkpoint is
exported (fp32 + int8 dynamic, ``vitlab.export_onnx``) to a temporary folder. torch and ONNX Runtime use the same
thread count (``--threads``, default ``torch.get_num_threads()``; ORT ``intra_op_num_threads``). Run it alone on
the machine: with the cores busy, torch's OpenMP threads can slow down ~80x (seen: 860 ms vs 11 ms per image).

Figures, per batch size:
- ``eager``: ``DetectEndToEnd`` in torch (the detector forward + ``vitlab.models.fcos.postprocess`` with the
  task's options: exactly what the exported graph computes) under ``inference_mode``; ``ort_fp32`` / ``ort_int8``:
  the exported files in ONNX Runtime (CPU). Each is img/s, the median over ``--rounds`` interleaved rounds of
  ``--seconds`` each whose order rotates (this machine is noisy), and ``vs_eager`` the ratio of medians.
- ``postprocess_share_pct``: ONNX Runtime's profiler (``enable_profiling``) over ``--profile-runs`` runs (after 3
  warm-up runs): the kernel time of the post-processing nodes (``vitlab.onnx.detect.postprocess_nodes``: nodes
  outside the ``detector`` module, i.e. decoding, top-k, NMS, padding; ORT fusions named ``<node>/<Fusion>`` count
  as their first node) as a percentage of all nodes' kernel time. Goal: <= 10 %. ``post_nodes_profiled`` says how
  many of the graph's post-processing nodes appeared in the profile (the others were folded or fused away);
  ``post_ops_pct`` the largest operator types among them, as shares of the same total. The profiler adds a fixed
  cost to every node it times, which weighs most on the ~100 small post-processing nodes, so also:
- ``postprocess_wall_pct``: wall time, no profiler: the exported graph against the same graph cut where the
  post-processing starts (its nodes removed, the head's outputs made the outputs), called in turn for ``--rounds x
  --seconds``; the share is ``1 - median call time (cut) / median call time (full)``, with the same from each half
  of the calls beside it (their spread).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from bench_onnx import interleaved_rates, profiled_kernel_events  # noqa: E402  (the benchmarks' folder is on sys.path when run)
from machine import machine_info, run_info  # noqa: E402  (benchmarks/machine.py: the machine block of every result)

from vitlab._fs import atomic_write_json  # noqa: E402
from vitlab.onnx import export_onnx  # noqa: E402
from vitlab.onnx.detect import DetectEndToEnd, load_detection_eval_set, postprocess_nodes  # noqa: E402
from vitlab.onnx.export import file_name, load_exportable  # noqa: E402

CKPT = "runs/scenes_demo/checkpoints/last.ckpt"
PRECISIONS = ("fp32", "int8")
WARMUP = 3


def cycler(batches: list):
    """A function returning the next batch of ``batches`` on each call, round and round."""
    state = {"i": -1}

    def nxt():
        state["i"] = (state["i"] + 1) % len(batches)
        return batches[state["i"]]
    return nxt


def session(path: Path, threads: int, profile: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    if profile:
        so.enable_profiling, so.profile_file_prefix = True, profile
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_files(args, tmp: str) -> Path:
    if args.onnx_dir:
        return Path(args.onnx_dir)
    beside = Path(args.ckpt).resolve().parent.parent / "export"
    if all((beside / file_name(p)).is_file() for p in PRECISIONS):
        return beside
    print(f"exporting {args.ckpt} (fp32 + int8) to {tmp}", flush=True)
    export_onnx(args.ckpt, tmp, list(PRECISIONS), eval_data="scenes", num_eval=min(args.limit, 200))
    return Path(tmp)


def throughput(eager: torch.nn.Module, sessions: dict, images: torch.Tensor, args) -> dict:
    result = {}
    for b in args.batches:
        batches = [images[i:i + b] for i in range(0, len(images) - b + 1, b)] or [images[:b]]
        as_numpy = [x.numpy() for x in batches]
        next_t, next_np = cycler(batches), cycler(as_numpy)

        def run_eager(next_t=next_t):
            with torch.inference_mode():
                eager(next_t())

        fns = {"eager": run_eager,
               **{k: (lambda s=s, nxt=next_np: s.run(None, {"images": nxt()})) for k, s in sessions.items()}}
        rates = interleaved_rates(fns, b, args.rounds, args.seconds)
        med = {k: statistics.median(v) for k, v in rates.items()}
        result[b] = {k: {"img_s": round(v, 1), "vs_eager": round(v / med["eager"], 3), "rounds": [round(x, 1) for x
                                                                                                    in rates[k]]}
                     for k, v in med.items()}
        print(json.dumps({"batch": b, **{k: v["img_s"] for k, v in result[b].items()}}), flush=True)
    return result


def postprocess_share(path: Path, images: torch.Tensor, batch: int, threads: int, runs: int, tmp: str) -> dict:
    """Share (%) of the profiled kernel time spent in the post-processing nodes, at ``batch``."""
    post = set(postprocess_nodes(onnx.load(str(path), load_external_data=False)))
    sess = session(path, threads, profile=str(Path(tmp) / f"profile_{path.stem}_b{batch}"))
    x = np.resize(images.numpy(), (batch, *images.shape[1:]))  # the first images, repeated if too few
    total = in_post = 0.0
    seen, post_ops = set(), {}
    for e in profiled_kernel_events(sess, {"images": x}, runs, WARMUP):
        name = e["name"][: -len("_kernel_time")]
        total += e["dur"]
        owner = name if name in post else name.split("/")[0]
        if owner in post:
            in_post += e["dur"]
            seen.add(owner)
            op = e["args"].get("op_name", "?")
            post_ops[op] = post_ops.get(op, 0.0) + e["dur"]
    return {"share_pct": round(100 * in_post / total, 2) if total else None,
            "node_ms_per_image": round(total / 1000 / runs / batch, 3), "post_nodes_profiled": len(seen),
            "post_nodes": len(post), "runs": runs,
            "post_ops_pct": {k: round(100 * v / total, 2)
                             for k, v in sorted(post_ops.items(), key=lambda kv: -kv[1])[:6]}}


def cut_before_postprocess(path: Path, out: Path) -> Path:
    """``path``'s graph up to where the post-processing starts: the post-processing nodes removed, the tensors they
    read from the detector (the head's float outputs) made the graph's outputs."""
    model = onnx.load(str(path))
    post = set(postprocess_nodes(model))
    made_after = {o for n in model.graph.node if n.name in post for o in n.output}
    given = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
    heads = list(dict.fromkeys(i for n in model.graph.node if n.name in post for i in n.input
                               if i and i not in made_after and i not in given))
    kept = [n for n in model.graph.node if n.name not in post]
    used = {i for n in kept for i in n.input}
    weights = [w for w in model.graph.initializer if w.name in used]  # the post-processing's constants go too
    del model.graph.node[:], model.graph.output[:], model.graph.initializer[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(weights)
    model.graph.output.extend(onnx.helper.make_tensor_value_info(h, onnx.TensorProto.FLOAT, None) for h in heads)
    onnx.save(model, str(out))
    return out


def postprocess_wall(path: Path, images: torch.Tensor, batch: int, threads: int, args, tmp: str) -> dict:
    """The post-processing's share of the graph's wall time at ``batch``: the full graph and the graph cut before
    it, called in turn (which goes first alternates) for ``rounds x seconds`` in all; the share from the medians of
    the single calls' times, which noise bursts of a few calls do not move (rounds of seconds each moved +-15 %)."""
    sessions = {"full": session(path, threads),
                "cut": session(cut_before_postprocess(path, Path(tmp) / f"cut_{path.stem}.onnx"), threads)}
    feed = {"images": np.resize(images.numpy(), (batch, *images.shape[1:]))}  # first images, repeated if too few
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, feed)
    end, i = time.perf_counter() + args.rounds * args.seconds, 0
    while time.perf_counter() < end or i < 20:
        for k in (("full", "cut") if i % 2 else ("cut", "full")):
            t = time.perf_counter()
            sessions[k].run(None, feed)
            times[k].append(time.perf_counter() - t)
        i += 1
    med = {k: statistics.median(v) for k, v in times.items()}
    half = len(times["full"]) // 2  # the same share from each half of the run: how stable it is
    halves = [100 * (1 - statistics.median(times["cut"][a:b]) / statistics.median(times["full"][a:b]))
              for a, b in ((0, half), (half, None))]
    return {"share_pct": round(100 * (1 - med["cut"] / med["full"]), 2), "halves_pct": [round(h, 2) for h in halves],
            "calls": len(times["full"]), "ms_per_call": {k: round(1000 * v, 3) for k, v in med.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=CKPT)
    ap.add_argument("--onnx-dir", default=None, help="folder with model.onnx + model.int8.onnx (default: see above)")
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--limit", type=int, default=1000, help="test images used (the scenes' test split has 1,000)")
    ap.add_argument("--profile-runs", type=int, default=50, help="profiled runs per precision and batch size")
    ap.add_argument("--threads", type=int, default=None, help="torch and ORT threads (default torch's own count)")
    ap.add_argument("--out", default="runs/bench/detect.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, name, hparams = load_exportable(args.ckpt)
    eager = DetectEndToEnd(model, hparams).eval()
    threads = torch.get_num_threads()
    images = load_detection_eval_set("scenes", model.preprocess, args.limit).batch["image"]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = onnx_files(args, tmp)
        sessions = {f"ort_{p}": session(onnx_dir / file_name(p), threads) for p in PRECISIONS}
        report = {"machine": machine_info(), **run_info(),
                  "model": name, "ckpt": args.ckpt, "onnx_dir": str(onnx_dir), "threads": threads,
                  "images": len(images), "input_size": list(model.preprocess.input_size),
                  "seconds": args.seconds, "rounds": args.rounds,
                  "throughput": throughput(eager, sessions, images, args), "postprocess_share": {}}
        for p in PRECISIONS:
            report["postprocess_share"][f"ort_{p}"] = {
                b: postprocess_share(onnx_dir / file_name(p), images, b, threads, args.profile_runs, tmp)
                for b in args.batches}
            report["postprocess_wall_pct"] = {f"ort_{p}": {
                b: postprocess_wall(onnx_dir / file_name(p), images, b, threads, args, tmp) for b in args.batches}
                for p in PRECISIONS}
    atomic_write_json(args.out, report)
    print(f"{name}, {len(images)} scenes test images, {threads} threads (torch and ORT)")
    for b, rows in report["throughput"].items():
        print(f"  batch {b}: " + "  ".join(f"{k} {v['img_s']:.0f} img/s ({v['vs_eager']:.2f}x)"
                                           for k, v in rows.items()))
    for k, per_batch in report["postprocess_share"].items():
        print(f"  {k} post-processing share of node time (goal <= 10 %): " + "  ".join(
            f"batch {b} {v['share_pct']}% ({v['post_nodes_profiled']}/{v['post_nodes']} nodes profiled)"
            for b, v in per_batch.items()))
    for k, per_batch in report["postprocess_wall_pct"].items():
        print(f"  {k} post-processing share of wall time (full vs cut graph): " + "  ".join(
            f"batch {b} {v['share_pct']}% (halves {v['halves_pct']}, {v['calls']} calls)"
            for b, v in per_batch.items()))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
