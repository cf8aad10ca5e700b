"""``vitlab demo``: train the demo ViT on Fashion-MNIST within a time budget, test it on the official 10k test
set, and print where the checkpoint, metrics, confusion matrix and logs went.

Training runs as ``vitlab fit`` in a child process (its DDP ranks re-launch that command, as with any
Lightning script); testing runs here on one process, so every test image is counted exactly once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from vitlab._fs import atomic_write_json
from vitlab.cli import REPO_CONFIGS, run_cli
from vitlab.errors import VitlabError


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="vitlab demo", description=__doc__)
    ap.add_argument("--config", default=str(REPO_CONFIGS / "classify" / "fmnist_demo.yaml"))
    ap.add_argument("--out", default="runs/demo", help="output folder (checkpoints, logs, reports)")
    ap.add_argument("--minutes", type=float, default=5.0, help="training time budget (Trainer.max_time)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images of each split (smoke runs)")
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--devices", type=int, default=None, help="override trainer.devices (DDP processes)")
    args = ap.parse_args(argv)
    if not Path(args.config).is_file():
        raise VitlabError(f"demo config {args.config} not found (run from a vitlab checkout or pass --config)")
    out = Path(args.out)
    common = ["--config", args.config, f"--trainer.default_root_dir={out}"]
    if args.limit:
        common.append(f"--data.init_args.limit={args.limit}")
    budget = time.strftime("%H:%M:%S", time.gmtime(int(args.minutes * 60)))
    fit = ["fit", *common, f"--trainer.max_time=00:{budget}"]
    fit += [f"--trainer.max_epochs={args.max_epochs}"] if args.max_epochs else []
    fit += [f"--trainer.devices={args.devices}"] if args.devices else []

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vitlab", *fit])
    if proc.returncode != 0:
        raise VitlabError(f"training failed (exit {proc.returncode}); see the messages above")
    wall = time.perf_counter() - t0
    ckpt = out / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    train_s = state.get("callbacks", {}).get("Timer", {}).get("time_elapsed", {}).get("train", wall)

    test = run_cli(["test", *common, "--trainer.devices=1", "--trainer.strategy=auto", f"--ckpt_path={ckpt}"])
    metrics = {k: float(v) for k, v in test.trainer.callback_metrics.items() if k.startswith("test/")}
    log_dir = Path(test.trainer.log_dir)
    summary = {"train_seconds": round(train_s, 1), "wall_seconds_fit": round(wall, 1), "epochs": state["epoch"] + 1,
               "steps": state["global_step"], "checkpoint": str(ckpt), "log_dir": str(log_dir), **metrics}
    atomic_write_json(out / "demo_metrics.json", summary)
    nan = float("nan")
    print("\n== vitlab demo ==")
    print(f"trained {summary['epochs']} epochs / {summary['steps']} steps in {train_s / 60:.1f} min "
          f"({wall / 60:.1f} min with start-up)")
    print(f"test accuracy {metrics.get('test/acc', nan):.2%}  macro-F1 {metrics.get('test/f1', nan):.4f}"
          f"  top-5 {metrics.get('test/top5', nan):.2%}  (official Fashion-MNIST test set)")
    for name, path in [("checkpoint", ckpt), ("metrics", out / "demo_metrics.json"),
                       ("confusion matrix", log_dir / "confusion_matrix.png"),
                       ("per-class table", log_dir / "per_class.csv"), ("logs (CSV + TensorBoard)", log_dir)]:
        print(f"{name:>26}: {path}")
    print(json.dumps(summary))
    return summary
