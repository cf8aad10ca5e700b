"""Where a detection training step spends its time (issue 26): a bare loop (AdamW) over the scenes' real training
loader, the step split into the next batch / forward / loss (target assignment included) / backward / optimiser,
then torch's profiler over a few steps (its top operators by self time). Needs the scenes under ``--root`` (any
``vitlab fit --config configs/detect/scenes_demo.yaml`` generates them). Prints one JSON line with the machine.

    python benchmarks/probe_detect_step.py                              # vitdet_scenes_cs, batch 16, all threads
    python benchmarks/probe_detect_step.py --model vitdet_scenes_fm --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from machine import machine_info  # noqa: E402  (benchmarks/machine.py: the machine block of every result)
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from vitlab.data.detection import ScenesDataModule  # noqa: E402
from vitlab.models.detect import create_detector  # noqa: E402

PARTS = ("data", "forward", "loss", "backward", "optimizer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vitdet_scenes_cs")
    ap.add_argument("--root", default="data/scenes")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile-steps", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = create_detector(args.model, num_classes=10, img_size=128)
    dm = ScenesDataModule(root=args.root, image_size=128, batch_size=args.batch_size, train_augment=None,
                          preprocess=model.preprocess)
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
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
        "machine": machine_info(), "model": args.model, "batch_size": args.batch_size, "threads":
        torch.get_num_threads(), "ms_per_step": {k: round(1000 * v / args.steps, 1) for k, v in spent.items()},
        "img_per_s": round(args.batch_size * args.steps / total, 1),
        "profile_self_pct": {e.key: round(100 * e.self_cpu_time_total / profiled, 1) for e in ops[:12]}}))


if __name__ == "__main__":
    main()
