"""Where a detection training step spends its time (issue 26): a bare loop (AdamW) over the scenes' real training
loader, the step split into the next batch / forward / loss (target assignment included) / backward / optimiser,
then torch's profiler over a few steps (its top operators by self time). ``--levers``: instead, whole steps of
models built alike with each lever (``fp32``, ``bf16`` autocast, ``channels_last``, ``compile``: ``torch.compile``
of the model, its compilation timed apart), the levers taking turns step by step over the same batches, medians.
Needs the scenes under ``--root`` (any ``vitlab fit --config configs/detect/scenes_demo.yaml`` generates them).
Prints one JSON line with the machine.

    python benchmarks/probe_detect_step.py                              # vitdet_scenes_cs, batch 16, all threads
    python benchmarks/probe_detect_step.py --model vitdet_scenes_fm --threads 1
    python benchmarks/probe_detect_step.py --model-options '{"fpn_channels": 128}'
    python benchmarks/probe_detect_step.py --levers fp32 bf16 channels_last compile --steps 12
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from machine import machine_info  # noqa: E402  (benchmarks/machine.py: the machine block of every result)
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from vitlab.data.detection import ScenesDataModule  # noqa: E402
from vitlab.models.detect import create_detector  # noqa: E402

PARTS = ("data", "forward", "loss", "backward", "optimizer")


def _detector(args):
    return create_detector(args.model, num_classes=10, **{"img_size": 128, **args.model_options})


def _train_batches(args, preprocess):
    """An iterator over the scenes' training batches, without augmentation."""
    dm = ScenesDataModule(root=args.root, image_size=128, batch_size=args.batch_size, train_augment=None,
                          preprocess=preprocess)
    dm.setup("fit")
    return iter(dm.train_dataloader())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vitdet_scenes_cs")
    ap.add_argument("--model-options", type=json.loads, default={}, help='JSON, e.g. \'{"fpn_channels": 128}\'')
    ap.add_argument("--root", default="data/scenes")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--levers", nargs="+", choices=["fp32", "bf16", "channels_last", "compile"], default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.levers:
        return levers(args)
    model = _detector(args)
    batches = _train_batches(args, model.preprocess)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    spent = dict.fromkeys(PARTS, 0.0)

    def step(timed: bool) -> None:
        t = [time.perf_counter()]
        batch = next(batches)
        t.append(time.perf_counter())
        out = model(batch["image"])
        t.append(time.perf_counter())
        loss = model.loss(out, batch["boxes"], batch["labels"])["loss"]
        t.append(time.perf_counter())
        opt.zero_grad()
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        if timed:
            for part, a, b in zip(PARTS, t, t[1:]):
                spent[part] += b - a

    for i in range(args.warmup + args.steps):
        step(i >= args.warmup)
    total = sum(spent.values())
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.profile_steps):
            step(False)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    profiled = sum(e.self_cpu_time_total for e in ops)
    print(json.dumps({
        "machine": machine_info(), "model": args.model, "model_options": args.model_options,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "ms_per_step": {k: round(1000 * v / args.steps, 1) for k, v in spent.items()},
        "img_per_s": round(args.batch_size * args.steps / total, 1),
        "profile_self_pct": {e.key: round(100 * e.self_cpu_time_total / profiled, 1) for e in ops[:12]}}))


def levers(args) -> None:
    """Whole training steps (forward, loss, backward, AdamW) per lever, taking turns over the same 8 batches."""
    def build(lever: str):
        torch.manual_seed(0)
        model = _detector(args)
        if lever == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        return model, torch.compile(model) if lever == "compile" else model, torch.optim.AdamW(model.parameters())

    built = {lever: build(lever) for lever in args.levers}
    loader = _train_batches(args, built[args.levers[0]][0].preprocess)
    batches = [next(loader) for _ in range(8)]

    def step(lever: str, batch: dict) -> float:
        model, forward, opt = built[lever]
        t = time.perf_counter()
        x = batch["image"].contiguous(memory_format=torch.channels_last) if lever == "channels_last" else batch["image"]
        with torch.autocast("cpu", dtype=torch.bfloat16) if lever == "bf16" else contextlib.nullcontext():
            out = forward(x)
        out = {k: v.float() for k, v in out.items()}
        loss = model.loss(out, batch["boxes"], batch["labels"])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    warmup = {lever: round(sum(step(lever, batches[i]) for i in range(3)), 1) for lever in args.levers}
    times: dict[str, list[float]] = {lever: [] for lever in args.levers}
    for r in range(args.steps):
        for k in range(len(args.levers)):
            lever = args.levers[(r + k) % len(args.levers)]  # the order rotates every round
            times[lever].append(step(lever, batches[r % len(batches)]))
    ms = {lever: 1000 * statistics.median(v) for lever, v in times.items()}
    print(json.dumps({
        "machine": machine_info(), "model": args.model, "model_options": args.model_options,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(), "steps_each": args.steps,
        "ms_per_step": {k: round(v, 1) for k, v in ms.items()},
        f"speed_vs_{args.levers[0]}": {k: round(ms[args.levers[0]] / v, 3) for k, v in ms.items()},
        "first_3_steps_s (compilation included)": warmup}))


if __name__ == "__main__":
    main()
