"""Recipe probes behind configs/classify/fmnist_demo.yaml: a bare loop on the full Fashion-MNIST train set,
test accuracy after every epoch, one JSON line per epoch. Each probe takes minutes; run two side by side with
``--threads 1`` to compare recipes under the same load.

    python benchmarks/probe_recipes.py --epochs 6 --embed-dim 96 --no-flip
    python benchmarks/probe_recipes.py --epochs 4 --embed-dim 128 --stem 16:1,32,64,128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from machine import machine_info, run_info  # noqa: E402  (benchmarks/machine.py: the machine block of every result)

import vitlab  # noqa: E402
from vitlab.data.datasets import fashion_mnist_arrays  # noqa: E402
from vitlab.models.stem import conv_stem  # noqa: E402
from vitlab.registry import ModelSpec, register_model, resolve  # noqa: E402


def _probe_variant(stem: str | None) -> str:
    """vitlab_fmnist, or a variant of it registered on the fly with the ``--stem`` conv stem."""
    if not stem:
        return "vitlab_fmnist"
    layers = [(int(c), int(s or 2)) for c, _, s in (part.partition(":") for part in stem.split(","))]
    base = resolve("vitlab_fmnist")
    spec = ModelSpec(base.arch, {**base.kwargs, "embed_layer": conv_stem(*zip(*layers))}, base.preprocess)

    def probe_stem() -> ModelSpec:
        return spec

    register_model(probe_stem)
    return "probe_stem"


def _shift_erase(x: torch.Tensor, shift: int, erase: float) -> torch.Tensor:
    """Per-image random shift (zero padding + random crop) and random erasing of an [N, 1, H, W] batch."""
    n, _, h, w = x.shape
    if shift:
        padded = F.pad(x, (shift,) * 4)
        offsets = torch.randint(0, 2 * shift + 1, (n, 2)).tolist()
        x = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    for i in (torch.rand(n) < erase).nonzero().flatten().tolist():
        area = h * w * torch.empty(1).uniform_(0.02, 0.33).item()
        aspect = math.exp(torch.empty(1).uniform_(math.log(0.3), math.log(3.3)).item())
        eh, ew = min(h, round(math.sqrt(area * aspect))), min(w, round(math.sqrt(area / aspect)))
        top, left = torch.randint(0, h - eh + 1, (1,)).item(), torch.randint(0, w - ew + 1, (1,)).item()
        x[i, :, top:top + eh, left:left + ew] = 0
    return x


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, flip: bool) -> float:
    """Test accuracy in %; ``flip``: softmax averaged over each image and its mirror image (test-time flip)."""
    model.eval()
    correct = 0
    for i in range(0, len(y), 1000):
        xb = x[i:i + 1000].float()
        prob = model(xb).softmax(1)
        if flip:
            prob = prob + model(xb.flip(-1)).softmax(1)
        correct += int((prob.argmax(1) == y[i:i + 1000]).sum())
    model.train()
    return round(100 * correct / len(y), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--warmup-epochs", type=float, default=0.3)
    ap.add_argument("--patch-size", type=int, default=7)
    ap.add_argument("--embed-dim", type=int, default=96)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=float, default=2.0)
    ap.add_argument("--stem", default=None, help="conv stem instead of patchify: channels[:stride],... "
                    "(stride 2 unless given), e.g. 32,64,128 or 16:1,32,64,128")
    ap.add_argument("--drop-path", type=float, default=0.0)
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--shift", type=int, default=0, help="random shifts of up to this many pixels (zero padding, "
                    "then a random crop back: fmnist_shift.yaml's PadIfNeeded + RandomCrop)")
    ap.add_argument("--erase", type=float, default=0.0, help="probability of erasing one random rectangle "
                    "(2-33 %% of the area, aspect 0.3-3.3, filled with 0: Albumentations' Erasing)")
    ap.add_argument("--ema", type=float, default=0.0, help="also evaluate an exponential moving average of the "
                    "weights with this decay (ClassificationTask's ema_decay), e.g. 0.9998")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    print(json.dumps({"machine": machine_info(), **run_info()}), flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    xtr, ytr = (torch.from_numpy(a) for a in fashion_mnist_arrays("train"))
    xte, yte = (torch.from_numpy(a) for a in fashion_mnist_arrays("test"))
    xtr, xte = xtr.unsqueeze(1), xte.unsqueeze(1)  # [N, 1, 28, 28] uint8
    model = vitlab.create_model(_probe_variant(args.stem), num_classes=10, patch_size=args.patch_size,
                                embed_dim=args.embed_dim, depth=args.depth, mlp_ratio=args.mlp_ratio,
                                drop_path_rate=args.drop_path)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=args.lr)
    swa = torch.optim.swa_utils
    ema = None if not args.ema else swa.AveragedModel(model, multi_avg_fn=swa.get_ema_multi_avg_fn(args.ema),
                                                      use_buffers=True)
    per_epoch = len(ytr) // args.batch
    total, warm = args.epochs * per_epoch, int(args.warmup_epochs * per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(ytr))
        for i in range(per_epoch):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            x = xtr[idx].float()
            if not args.no_flip:
                flip = torch.rand(len(idx)) < 0.5
                x[flip] = x[flip].flip(-1)
            x = _shift_erase(x, args.shift, args.erase)
            loss = F.cross_entropy(model(x), ytr[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
        accs = {"test_acc": _accuracy(model, xte, yte, flip=False),
                "test_acc_flip_tta": _accuracy(model, xte, yte, flip=True)}  # mean of the image's and its mirror's
        if ema is not None:
            accs.update(ema_test_acc=_accuracy(ema, xte, yte, flip=False),
                        ema_test_acc_flip_tta=_accuracy(ema, xte, yte, flip=True))
        print(json.dumps({**vars(args), "epoch": epoch + 1, "seconds": round(time.perf_counter() - t0), **accs}),
              flush=True)


if __name__ == "__main__":
    main()
