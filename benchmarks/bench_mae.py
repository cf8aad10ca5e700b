"""MAE: what a pretraining step costs against a classification step of the same model, and how linearly separable
the encoder's features are (the linear probe).

Step cost: the same encoder (``--model``), batch of real Fashion-MNIST training images and AdamW; an MAE step
(75 % of the patches hidden: the encoder sees a quarter of the tokens, the decoder all of them) and a
classification step are timed in interleaved rounds whose order alternates; the ratio of medians is reported.
Linear probe (``--ckpt``): the frozen encoder's pooled features of the labeled training images
(``--label-fraction`` of them, the same class-balanced draw as ``FashionMNISTDataModule``) and of the official test
set, a multinomial logistic regression (L-BFGS on the standardised features) on the first, accuracy on the second;
``--ckpt random`` gives the same for a randomly initialised encoder.
Usage: ``python benchmarks/bench_mae.py [--rounds 5] [--ckpt runs/fmnist_mae/checkpoints/last.ckpt]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import vitlab  # noqa: E402
from vitlab.data.datamodules import balanced_subset  # noqa: E402
from vitlab.data.datasets import fashion_mnist_arrays  # noqa: E402
from vitlab.tasks import ClassificationTask, MAETask  # noqa: E402


def step_ratio(args) -> dict:
    torch.manual_seed(0)
    images, labels = fashion_mnist_arrays("train")
    x, y = torch.from_numpy(images[: args.batch])[:, None], torch.from_numpy(labels[: args.batch]).long()
    mae, clf = MAETask(args.model, decoder_dim=64), ClassificationTask(args.model, 10)
    opts = {"mae": torch.optim.AdamW(mae.parameters()), "classification": torch.optim.AdamW(clf.parameters())}
    losses = {"mae": lambda: mae._losses(x)["loss"],
              "classification": lambda: F.cross_entropy(clf(x), y, label_smoothing=0.1)}

    def steps(name: str) -> float:
        t = time.perf_counter()
        for _ in range(args.steps):
            loss = losses[name]()
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
        return (time.perf_counter() - t) / args.steps

    for name in losses:
        steps(name)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in losses}
    for r in range(args.rounds):
        for name in (list(losses) if r % 2 == 0 else list(losses)[::-1]):
            times[name].append(steps(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": args.model, "batch": args.batch, "ms_per_step": {k: round(v * 1e3, 2) for k, v in med.items()},
            "spread_ms": {k: [round(min(v) * 1e3, 2), round(max(v) * 1e3, 2)] for k, v in times.items()},
            "mae_over_classification": round(med["mae"] / med["classification"], 3)}


@torch.no_grad()
def features(backbone, images: np.ndarray) -> np.ndarray:
    backbone.eval()
    return torch.cat([backbone(torch.from_numpy(images[i:i + 1000])[:, None])["pooled"]
                      for i in range(0, len(images), 1000)]).numpy()


def linear_probe(args) -> dict:
    if args.ckpt == "random":
        torch.manual_seed(0)
        backbone = vitlab.create_backbone(args.model)
    else:
        backbone = vitlab.load(args.ckpt).model.backbone
    images, labels = fashion_mnist_arrays("train")
    keep = balanced_subset(labels, args.label_fraction, 0) if args.label_fraction < 1 else np.arange(len(labels))
    test_images, test_labels = fashion_mnist_arrays("test")
    train_f, test_f = features(backbone, images[keep]), features(backbone, test_images)
    mean, std = train_f.mean(0), train_f.std(0) + 1e-6
    xtr, xte = torch.from_numpy((train_f - mean) / std), torch.from_numpy((test_f - mean) / std)
    ytr = torch.from_numpy(labels[keep]).long()
    head = torch.nn.Linear(xtr.shape[1], 10)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=500, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(xtr), ytr) + args.l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    acc = (head(xte).argmax(1).numpy() == test_labels).mean()
    return {"ckpt": args.ckpt, "train_images": len(keep), "test_images": len(test_labels),
            "linear_probe_test_acc_pct": round(float(acc) * 100, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vitlab_fmnist")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ckpt", nargs="*", default=[], help="MAE checkpoints (or 'random') for the linear probe")
    ap.add_argument("--label-fraction", type=float, default=0.1)
    ap.add_argument("--l2", type=float, default=1e-4)
    ap.add_argument("--out", default=None, help="also write the results as JSON")
    args = ap.parse_args()
    results = {"step_cost": step_ratio(args)} if args.rounds > 0 else {}
    print(json.dumps(results.get("step_cost")), flush=True)
    for ckpt in args.ckpt:
        args.ckpt = ckpt
        results.setdefault("linear_probe", []).append(linear_probe(args))
        print(json.dumps(results["linear_probe"][-1]), flush=True)
    if args.out:
        from machine import machine_info, run_info

        from vitlab._fs import atomic_write_json

        atomic_write_json(args.out, {"machine": machine_info(), **run_info(), **results})


if __name__ == "__main__":
    main()
