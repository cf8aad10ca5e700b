"""Training throughput: ClassificationTask under Lightning vs a bare PyTorch loop, and the loader's own rate.

Same model, batch, optimiser, schedule and DataLoader (Albumentations pipeline + collate) in both; the four
measurements are interleaved and their order rotates every repeat (so none always runs first), and the ratio of
medians is reported, because this machine is noisy. The Lightning run also updates the task's train metrics,
which the bare loop skips, so the overhead figure is an upper bound.
Usage: ``python benchmarks/bench_training.py [--steps 100] [--repeats 5] [--out runs/bench/training.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from machine import machine_info, run_info  # noqa: E402  (benchmarks/machine.py: the machine block of every result)

from vitlab._fs import atomic_write_json  # noqa: E402
from vitlab.data import FashionMNISTDataModule  # noqa: E402
from vitlab.tasks import ClassificationTask  # noqa: E402

AUGMENT = "configs/augment/fmnist_flip.yaml"


def make(args):
    L.seed_everything(0, verbose=False)
    task = ClassificationTask(model_name=args.model, num_classes=10, optim={"lr": 2e-3})
    dm = FashionMNISTDataModule(batch_size=args.batch, train_augment=AUGMENT, num_workers=args.workers,
                                preprocess=task.preprocess, val_fraction=0.0)
    dm.setup("fit")
    return task, dm


def bare_loop(args) -> float:
    """The loop a user would write by hand: same task.forward, loss, AdamW + LambdaLR as the task configures."""
    task, dm = make(args)
    opt, sched = task.build_optimizer(total_steps=args.steps, steps_per_epoch=args.steps)
    task.train()
    n, t0 = 0, None
    for step, batch in enumerate(dm.train_dataloader()):
        if step == args.warmup:
            t0, n = time.perf_counter(), 0
        logits = task(batch["image"].float())
        loss = torch.nn.functional.cross_entropy(logits, batch["target"], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        n += len(batch["target"])
        if step + 1 >= args.steps:
            break
    return n / (time.perf_counter() - t0)


class _Clock(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.n = warmup, None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.t0 is None:
            self.t0, self.n = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.t0 is not None:
            self.n += len(batch["target"])
            self.t1 = time.perf_counter()


def lightning_fit(args, progress: bool) -> float:
    task, dm = make(args)
    clock = _Clock(args.warmup)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=args.steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=progress, enable_model_summary=False, callbacks=[clock],
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(task, train_dataloaders=dm.train_dataloader())
    return clock.n / (clock.t1 - clock.t0)


def loader_rate(args) -> float:
    _, dm = make(args)
    n, t0 = 0, None
    for step, batch in enumerate(dm.train_dataloader()):
        if step == args.warmup:
            t0, n = time.perf_counter(), 0
        n += len(batch["target"])
        if step + 1 >= args.steps:
            break
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="vitlab_fmnist")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out", default="runs/bench/training.json")
    args = ap.parse_args()
    rates: dict[str, list[float]] = {"bare": [], "lightning": [], "lightning_progress_bar": [], "loader": []}
    runs = {"bare": lambda: bare_loop(args), "lightning": lambda: lightning_fit(args, progress=False),
            "lightning_progress_bar": lambda: lightning_fit(args, progress=True), "loader": lambda: loader_rate(args)}
    names = list(runs)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(runs[name]())
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in rates.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    report = {
        "machine": machine_info(),
        **run_info(),
        "model": args.model, "batch": args.batch, "steps": args.steps, "workers": args.workers,
        "threads": torch.get_num_threads(), "median_img_per_s": {k: round(v, 1) for k, v in med.items()},
        "lightning_overhead_pct": round(100 * (1 - med["lightning"] / med["bare"]), 2),
        "lightning_progress_bar_overhead_pct": round(100 * (1 - med["lightning_progress_bar"] / med["bare"]), 2),
        "loader_over_training_rate": round(med["loader"] / med["lightning"], 2),
        "raw": rates,
    }
    atomic_write_json(args.out, report)
    print(json.dumps({k: v for k, v in report.items() if k != "raw"}, indent=2))


if __name__ == "__main__":
    main()
