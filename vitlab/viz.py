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


# --- detection -------------------------------------------------------------------------------------------------
def _palette(k: int) -> tuple[int, int, int]:
    """A colour per class id: tab20's ten strong colours first, then their light variants."""
    from matplotlib import colormaps

    r, g, b, _ = colormaps["tab20"]((2 * k) % 20 + (k // 10) % 2)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, boxes: np.ndarray, class_ids: np.ndarray, names: list[str],
                    scores: np.ndarray | None = None, gt_boxes: np.ndarray | None = None,
                    gt_class_ids: np.ndarray | None = None, title: str = "", min_side: int = 320):
    """A PIL image: ``image`` (HWC or HW uint8, upscaled by an integer factor to at least ``min_side``) with
    predicted boxes ``[M, 4]`` (x1, y1, x2, y2 in the image's pixels; one colour per class, "name score") and
    optional ground-truth boxes (white, thin, drawn first), and ``title`` in a bar at the top."""
    from PIL import Image, ImageDraw

    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb
    h, w = rgb.shape[:2]
    scale = max(1, -(-min_side // max(1, min(h, w))))
    canvas = Image.fromarray(np.ascontiguousarray(rgb)).resize((w * scale, h * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)

    def name(k: int) -> str:
        return names[k] if 0 <= k < len(names) else str(k)

    for box, k in zip(np.asarray(gt_boxes if gt_boxes is not None else np.zeros((0, 4))).reshape(-1, 4),
                      np.asarray(gt_class_ids if gt_class_ids is not None else np.zeros(0, int)).reshape(-1)):
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=(255, 255, 255), width=1)
        draw.text((x1 + 2, y2 - 11), name(int(k)), fill=(255, 255, 255))
    scores = np.ones(len(boxes)) if scores is None else np.asarray(scores).reshape(-1)
    for box, k, s in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(class_ids).reshape(-1), scores):
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        colour = _palette(int(k))
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        tag = f"{name(int(k))} {float(s):.2f}"
        draw.rectangle((x1, y1, x1 + 6 * len(tag) + 4, y1 + 11), fill=colour)
        draw.text((x1 + 2, y1), tag, fill=(0, 0, 0))
    if title:
        draw.rectangle((0, 0, canvas.size[0], 14), fill=(0, 0, 0))
        draw.text((3, 1), title, fill=(255, 255, 255))
    return canvas


def save_detection_overlay(image: np.ndarray, path: str | os.PathLike, boxes: np.ndarray, class_ids: np.ndarray,
                           names: list[str], scores: np.ndarray | None = None, gt_boxes: np.ndarray | None = None,
                           gt_class_ids: np.ndarray | None = None, title: str = "", min_side: int = 320) -> Path:
    """``draw_detections`` written as PNG (atomically): the test report's overlays and ``--overlays`` of the
    Predictor (boxes in the coordinates of the image passed, e.g. the original image with the letterbox undone)."""
    canvas = draw_detections(image, boxes, class_ids, names, scores, gt_boxes, gt_class_ids, title, min_side)
    return atomic_write(path, lambda p: canvas.save(p, format="PNG"))


def _flat(value) -> np.ndarray:
    """A mAP result's entry as a 1-D float64 array: torchmetrics gives per-class entries (``classes`` too) as 0-d
    tensors when one class was seen, possibly on the GPU, so they are flattened, never iterated as they are."""
    return torch.as_tensor(value).detach().cpu().double().reshape(-1).numpy()


def _class_ids(result: dict) -> list[int]:
    """The class ids along the K axis of a mAP result's per-class entries."""
    return [int(c) for c in _flat(result.get("classes", []))]


def detection_class_table(result: dict, names: list[str], gt_counts: list[int],
                          iou_thresholds: list[float]) -> list[dict[str, float | int | str | None]]:
    """Per class: AP (IoU 0.50:0.95), AP50, AP75, AR@100 and the number of ground-truth boxes, from a COCO mAP
    result with per-class entries (``vitlab.tasks.detection.coco_evaluate``, or torchmetrics'
    ``MeanAveragePrecision(class_metrics=True, extended_summary=True).compute()``: the same layout). ``None`` where
    a class has no ground truth in the split (COCO's -1), or was never seen; ``num_gt`` is 0 then."""
    classes = _class_ids(result)
    precision = result.get("precision")  # [T, R, K, A, M]: IoU thr., recall thr., class, area range, max dets

    def ap_at(k: int, iou: float) -> float | None:
        if precision is None or iou not in iou_thresholds:
            return None
        p = torch.as_tensor(precision)[iou_thresholds.index(iou), :, k, 0, -1]
        return round(float(p[p > -1].mean()), 4) if bool((p > -1).any()) else None

    def value(key: str, k: int) -> float | None:
        v = result.get(key)
        v = None if v is None else _flat(v)
        if v is None or v.size != len(classes) or float(v[k]) < 0:
            return None
        return round(float(v[k]), 4)

    rows = []
    for c, cname in enumerate(names):
        k = classes.index(c) if c in classes else None
        present = k is not None and c < len(gt_counts) and gt_counts[c] > 0
        rows.append({"class": cname, "class_id": c,
                     "ap": value("map_per_class", k) if present else None,
                     "ap50": ap_at(k, 0.5) if present else None, "ap75": ap_at(k, 0.75) if present else None,
                     "ar100": value("mar_100_per_class", k) if present else None,
                     "num_gt": int(gt_counts[c]) if c < len(gt_counts) else 0})
    return rows


def plot_pr_curves(result: dict, names: list[str], path: Path, iou: float = 0.5,
                   iou_thresholds: list[float] | None = None) -> Path:
    """Precision-recall curves at IoU ``iou`` (all areas, 100 detections per image), one line per class with
    ground truth and their mean in black, from torchmetrics' extended summary (COCO's 101 recall points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    precision = result.get("precision")
    thresholds = iou_thresholds or [round(0.5 + 0.05 * i, 2) for i in range(10)]
    if precision is not None and iou in thresholds:
        p = torch.as_tensor(precision)[thresholds.index(iou), :, :, 0, -1].double()  # [R, K]
        recall = np.linspace(0, 1, p.shape[0])
        classes = _class_ids(result)
        valid = [k for k in range(p.shape[1]) if bool((p[:, k] > -1).all())]
        for k in valid:
            c = classes[k]
            ap = float(p[:, k].mean())
            ax.plot(recall, p[:, k].numpy(), lw=1, color=[v / 255 for v in _palette(c)],
                    label=f"{names[c] if c < len(names) else c} ({ap:.3f})")
        if valid:
            mean = p[:, valid].mean(1)
            label = f"mean (AP{round(iou * 100)} {float(mean.mean()):.3f})"
            ax.plot(recall, mean.numpy(), lw=2.5, color="black", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"precision-recall at IoU {iou:.2f}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left", ncol=2 if len(names) > 10 else 1)
    fig.tight_layout()
    atomic_write(path, lambda p_: fig.savefig(p_, format="png"))
    plt.close(fig)
    return path


def write_detection_report(result: dict, names: list[str], gt_counts: list[int], out_dir: Path,
                           iou_thresholds: list[float], summary: dict[str, float] | None = None) -> dict[str, Path]:
    """per_class_ap.csv, per_class_ap.json (per-class rows + the overall figures) and pr_curve.png under
    ``out_dir``."""
    rows = detection_class_table(result, names, gt_counts, iou_thresholds)
    cols = ("class", "class_id", "ap", "ap50", "ap75", "ar100", "num_gt")
    csv = ",".join(cols) + "\n" + "".join(
        f"\"{r['class']}\"," + ",".join("" if r[c] is None else str(r[c]) for c in cols[1:]) + "\n" for r in rows)
    return {
        "per_class_csv": atomic_write_text(out_dir / "per_class_ap.csv", csv),
        "per_class_json": atomic_write_json(out_dir / "per_class_ap.json",
                                            {"classes": rows, "summary": summary or {}}),
        "pr_curve": plot_pr_curves(result, names, out_dir / "pr_curve.png", 0.5, iou_thresholds),
    }


# --- image grids (MAE reconstructions, generated samples): the edge kit's grid writer ----------------------------
def save_image_grid(rows: dict[str, np.ndarray], path: str | os.PathLike, min_side: int = 64) -> Path:
    """One row per image, one column per entry of ``rows`` (e.g. original | masked | reconstruction | pasted),
    each uint8 ``[N, C, H, W]``, upscaled to at least ``min_side``, 2-px gaps, as PNG (written atomically)."""
    from vitlab_edge.sampler import save_grid

    columns = np.stack([np.asarray(v) for v in rows.values()], axis=1)  # [N, cols, C, H, W]
    return save_grid(columns.transpose(0, 1, 3, 4, 2), path, min_side)


def save_sample_grid(images: np.ndarray, path: str | os.PathLike, min_side: int = 56) -> Path:
    """Generated images ``[rows, cols, H, W, C]`` (one row per class) as one PNG with 2-px gaps (atomic)."""
    from vitlab_edge.sampler import save_grid

    return save_grid(images, path, min_side)
