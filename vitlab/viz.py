"""Pictures and tables for people: confusion matrix PNG, per-class report, prediction / attention overlays
(all written atomically)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vitlab._fs import atomic_write, atomic_write_json, atomic_write_text


def per_class_table(cm: torch.Tensor, names: list[str]) -> list[dict[str, float | int | str]]:
    """Precision / recall / F1 / support per class from a confusion matrix (rows = true, cols = predicted)."""
    cm = cm.double()
    tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)
    rows = []
    for i, name in enumerate(names):
        p = float(tp[i] / predicted[i]) if predicted[i] else 0.0
        r = float(tp[i] / support[i]) if support[i] else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        rows.append({"class": name, "precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4),
                     "support": int(support[i])})
    return rows


def plot_confusion_matrix(cm: torch.Tensor, names: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = cm.double() / cm.sum(1, keepdim=True).clamp(min=1)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n), dpi=110)
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(f"confusion matrix (accuracy {float(cm.diag().sum() / cm.sum().clamp(min=1)):.2%})")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return path


def write_classification_report(cm: torch.Tensor, names: list[str], out_dir: Path) -> dict[str, Path]:
    """confusion_matrix.png, per_class.csv and per_class.json under ``out_dir``."""
    rows = per_class_table(cm, names)
    csv = "class,precision,recall,f1,support\n" + "".join(
        f"\"{r['class']}\",{r['precision']},{r['recall']},{r['f1']},{r['support']}\n" for r in rows)
    return {
        "confusion_matrix": plot_confusion_matrix(cm, names, out_dir / "confusion_matrix.png"),
        "per_class_csv": atomic_write_text(out_dir / "per_class.csv", csv),
        "per_class_json": atomic_write_json(out_dir / "per_class.json",
                                            {"classes": rows, "confusion_matrix": cm.tolist()}),
    }


def save_overlay(image_chw: np.ndarray, text: str, path: str | os.PathLike, heatmap: np.ndarray | None = None,
                 min_side: int = 224) -> Path:
    """The model's input image (upscaled to at least ``min_side``), an optional 0..1 heatmap blended over it
    (jet colours, e.g. attention rollout) and ``text`` in a bar at the top, as PNG (written atomically)."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    img = image_chw.transpose(1, 2, 0)
    rgb = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
    h, w = rgb.shape[:2]
    scale = max(1, -(-min_side // min(h, w)))
    canvas = Image.fromarray(rgb).resize((w * scale, h * scale), Image.Resampling.NEAREST)
    if heatmap is not None:
        colours = (colormaps["jet"](heatmap)[:, :, :3] * 255).astype(np.uint8)
        heat = Image.fromarray(colours).resize(canvas.size, Image.Resampling.BILINEAR)
        canvas = Image.blend(canvas, heat, 0.45)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, canvas.size[0], 14), fill=(0, 0, 0))
    draw.text((3, 1), text, fill=(255, 255, 255))
    return atomic_write(path, lambda p: canvas.save(p, format="PNG"))
