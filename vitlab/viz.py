"""Pictures and tables for people: confusion matrix PNG and per-class report (written atomically)."""

from __future__ import annotations

from pathlib import Path

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
