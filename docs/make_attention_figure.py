"""Regenerate docs/attention_rollout.png: attention-rollout overlays of the demo model on six Fashion-MNIST test
images. Run after `make demo`:  python docs/make_attention_figure.py"""

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import vitlab  # noqa: E402
from vitlab.data.datasets import fashion_mnist_arrays  # noqa: E402

images = fashion_mnist_arrays("test")[0]
predictor = vitlab.Predictor.load("runs/demo/checkpoints/last.ckpt")
with tempfile.TemporaryDirectory() as tmp:
    results = predictor.explain([images[i] for i in (0, 1, 2, 12, 23, 42)], tmp, num_workers=0)
    tiles = [np.asarray(Image.open(r.overlay).convert("RGB").resize((160, 160))) for r in results]
out = Path(__file__).parent / "attention_rollout.png"
Image.fromarray(np.concatenate(tiles, axis=1)).save(out, optimize=True)
print(out)
