"""FCOS: a dense anchor-free head, its targets and losses, and the post-processing (Tian et al., 2019, "FCOS: Fully
Convolutional One-Stage Object Detection"; the 2020 journal version for GIoU and centerness on the regression branch).

Every feature-map cell is a *point* ``(x, y)`` (its centre in input pixels) with the *stride* of its level. Per point
the head predicts K class logits (sigmoid focal loss), the distances from the point to the box's four sides in units
of the stride (``l, t, r, b``, GIoU loss on the decoded box) and a centerness logit (BCE). Levels are flattened and
concatenated, so every tensor is ``[N, P, ...]`` with ``P`` the points of all levels, and ``points [P, 2]`` /
``strides [P]`` describe them. The conv towers are torchvision's FCOS heads, shared over the levels.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSRegressionHead
from torchvision.ops import batched_nms, box_iou, generalized_box_iou_loss, sigmoid_focal_loss


class FCOSHead(nn.Module):
    """torchvision's FCOS classification and regression towers (``num_convs`` 3x3 conv + GroupNorm + ReLU each) on
    every level; outputs flattened over levels in level order."""

    def __init__(self, in_channels: int, num_classes: int, num_convs: int = 4, prior_prob: float = 0.01) -> None:
        super().__init__()
        norm = partial(nn.GroupNorm, math.gcd(32, in_channels))
        self.classification_head = FCOSClassificationHead(in_channels, 1, num_classes, num_convs, prior_prob, norm)
        self.regression_head = FCOSRegressionHead(in_channels, 1, num_convs, norm)
        # torchvision starts the four distances at 0 (bias 0, weights ~0) behind a ReLU: a side whose output turns
        # negative at every point stops learning for good (measured: a scenes detector with fpn_channels 128 ended
        # its 680 steps with the top side at 0 for 100 % of points, its box loss stuck at 0.62-0.72 from step 180).
        # Starting each at one stride keeps the gradient flowing while the towers settle.
        nn.init.constant_(self.regression_head.bbox_reg.bias, 1.0)

    @property
    def num_classes(self) -> int:
        return self.classification_head.num_classes

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        cls_logits = self.classification_head(features)  # [N, P, K]
        box_regression, centerness = self.regression_head(features)  # [N, P, 4] (ltrb / stride, >= 0), [N, P, 1]
        return {"cls_logits": cls_logits, "box_regression": box_regression, "centerness": centerness.squeeze(-1)}


def make_points(sizes: list[tuple[int, int]], strides: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres ``points [P, 2]`` (x, y in input pixels) and ``strides [P]`` of levels with ``sizes`` (h, w),
    row-major per level, levels in order: the layout of the head's outputs."""
    points, point_strides = [], []
    for (h, w), s in zip(sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        points.append((torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * s)  # [h*w, 2]
        point_strides.append(torch.full((h * w,), float(s)))
    return torch.cat(points), torch.cat(point_strides)


def decode_boxes(box_regression: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """``[..., P, 4]`` distances (l, t, r, b) in strides -> boxes x1, y1, x2, y2 in input pixels ``[..., P, 4]``."""
    ltrb = box_regression * strides[..., None]
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)


def level_ranges(strides: torch.Tensor, range_per_stride: float = 8.0) -> torch.Tensor:
    """Per point ``[P, 2]`` the (lower, upper] range of the largest point-to-side distance its level is responsible
    for: up to ``range_per_stride * stride``, from where the finer level's range ends (0 for the finest level, no
    upper bound for the coarsest). FCOS's (0, 64], (64, 128], ... is ``range_per_stride=8`` on strides 8, 16, ..."""
    levels = torch.unique(strides)  # sorted ascending
    uppers = levels * range_per_stride
    uppers[-1] = float("inf")
    lowers = torch.cat([uppers.new_zeros(1), uppers[:-1]])
    idx = torch.searchsorted(levels, strides)
    return torch.stack([lowers[idx], uppers[idx]], dim=-1)


def point_to_sides(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``[P, M, 4]`` distances (l, t, r, b) in pixels from each point to the four sides of each box; all positive
    exactly when the point lies inside the box."""
    x, y = points[:, 0:1], points[:, 1:2]  # [P, 1]
    return torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], dim=-1)


def assign_targets(points: torch.Tensor, strides: torch.Tensor, ranges: torch.Tensor, boxes: torch.Tensor,
                   center_radius: float = 1.5) -> torch.Tensor:
    """The ground-truth index each point learns from, ``[P]`` (-1: background). A point is positive for a box when
    it lies inside the box, within ``center_radius`` strides of its centre (center sampling), and the box's largest
    point-to-side distance is in the point's level range; ties go to the smallest box, as in FCOS."""
    if boxes.numel() == 0:
        return torch.full((len(points),), -1, dtype=torch.long, device=points.device)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [M, 2]
    near = ((points[:, None] - centres[None]).abs().amax(-1) < center_radius * strides[:, None])  # [P, M]
    ltrb = point_to_sides(points, boxes)  # [P, M, 4]
    reach = ltrb.amax(-1)  # [P, M]
    match = near & (ltrb.amin(-1) > 0) & (reach > ranges[:, :1]) & (reach <= ranges[:, 1:])  # [P, M]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # [M]
    cost = torch.where(match, area[None], torch.full_like(reach, float("inf")))  # [P, M]
    best, idx = cost.min(-1)  # [P]
    return torch.where(torch.isfinite(best), idx, torch.full_like(idx, -1))


def assign_atss(points: torch.Tensor, strides: torch.Tensor, boxes: torch.Tensor, topk: int = 9,
                anchor_scale: float = 8.0) -> torch.Tensor:
    """ATSS's adaptive assignment (Zhang et al., 2020, "Bridging the Gap Between Anchor-based and Anchor-free
    Detection via Adaptive Training Sample Selection"), anchor-free form: each point stands for a square of side
    ``anchor_scale * stride`` centred on it. Per box, the ``topk`` points of each level nearest its centre are the
    candidates; those whose square's IoU with the box reaches the mean + standard deviation of the candidates' IoUs,
    and that lie inside the box, are positive; a point positive for several boxes takes the one of highest IoU.
    No level ranges or radius to tune: the threshold adapts to each box's size and shape. Returns ``[P]`` (-1:
    background)."""
    if boxes.numel() == 0:
        return torch.full((len(points),), -1, dtype=torch.long, device=points.device)
    half = strides[:, None] * anchor_scale / 2  # [P, 1]
    iou = box_iou(torch.cat([points - half, points + half], -1), boxes)  # [P, M]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [M, 2]
    dist = torch.cdist(points, centres)  # [P, M]
    candidate = torch.zeros_like(iou, dtype=torch.bool)
    start = 0
    for size in points_per_level(strides):  # a few levels: a static loop
        near = dist[start:start + size].topk(min(topk, size), dim=0, largest=False).indices + start  # [k, M]
        candidate.scatter_(0, near, True)
        start += size
    cand_iou = torch.where(candidate, iou, torch.nan)  # [P, M]
    mean = cand_iou.nanmean(0)  # [M]
    std = torch.sqrt(torch.nanmean((cand_iou - mean) ** 2, 0))  # [M]
    inside = point_to_sides(points, boxes).amin(-1) > 0  # [P, M]
    positive = candidate & inside & (iou >= mean + std)  # [P, M]
    best, idx = torch.where(positive, iou, torch.full_like(iou, -1.0)).max(-1)  # [P]
    return torch.where(best >= 0, idx, torch.full_like(idx, -1))


def fcos_loss(outputs: dict[str, torch.Tensor], points: torch.Tensor, strides: torch.Tensor,
              boxes: list[torch.Tensor], labels: list[torch.Tensor], center_radius: float = 1.5,
              range_per_stride: float = 8.0, assigner: str = "fcos", atss_topk: int = 9) -> dict[str, torch.Tensor]:
    """Focal loss over all points and classes, GIoU and centerness BCE over the positives, each summed and divided
    by the number of positives in the batch (at least 1). ``boxes``: per image ``[M, 4]`` x1, y1, x2, y2 in input
    pixels; ``labels``: per image ``[M]`` in 0..K-1. ``assigner``: ``"fcos"`` (center sampling within
    ``center_radius`` strides, level ranges of ``range_per_stride``; ``assign_targets``) or ``"atss"``
    (``assign_atss`` with ``atss_topk`` candidates per level and squares of ``range_per_stride`` strides)."""
    cls_logits = outputs["cls_logits"]  # [N, P, K]
    box_regression = outputs["box_regression"]  # [N, P, 4]
    centerness = outputs["centerness"]  # [N, P]
    ranges = level_ranges(strides, range_per_stride)  # [P, 2]
    dev = cls_logits.device
    gt_boxes, gt_cls = [], []
    for b, lab in zip(boxes, labels):
        b, lab = b.to(dev, torch.float32).reshape(-1, 4), lab.to(dev, torch.long).reshape(-1)
        matched = (assign_atss(points, strides, b, atss_topk, range_per_stride) if assigner == "atss"
                   else assign_targets(points, strides, ranges, b, center_radius))  # [P]
        safe = matched.clamp(min=0)
        gt_boxes.append(b[safe] if len(b) else points.new_zeros(len(points), 4))  # [P, 4]
        gt_cls.append(torch.where(matched >= 0, lab[safe] if len(lab) else matched, -1))  # [P]
    gt_boxes_t, gt_cls_t = torch.stack(gt_boxes), torch.stack(gt_cls)  # [N, P, 4], [N, P]
    fg = gt_cls_t >= 0  # [N, P]
    num_fg = max(1.0, float(fg.sum()))

    cls_target = F.one_hot(gt_cls_t.clamp(min=0), cls_logits.shape[-1]).to(cls_logits.dtype) * fg[..., None]
    loss_cls = sigmoid_focal_loss(cls_logits, cls_target, reduction="sum") / num_fg

    pts = points.expand(len(fg), -1, -1)[fg]  # [F, 2]
    st = strides.expand(len(fg), -1)[fg]  # [F]
    pred = decode_boxes(box_regression[fg].float(), pts, st)  # [F, 4]
    target = gt_boxes_t[fg]  # [F, 4]
    loss_box = generalized_box_iou_loss(pred, target, reduction="sum") / num_fg

    lt = pts - target[:, :2]  # [F, 2]
    rb = target[:, 2:] - pts  # [F, 2]
    ctr_target = torch.sqrt((torch.minimum(lt, rb) / torch.maximum(lt, rb)).prod(-1).clamp(min=0))  # [F]
    loss_ctr = F.binary_cross_entropy_with_logits(centerness[fg], ctr_target, reduction="sum") / num_fg
    return {"cls": loss_cls, "box": loss_box, "ctr": loss_ctr, "loss": loss_cls + loss_box + loss_ctr}


def postprocess(outputs: dict[str, torch.Tensor], points: torch.Tensor, strides: torch.Tensor,
                score_thresh: float = 0.05, nms_thresh: float = 0.6, topk: int = 1000, max_det: int = 100,
                class_agnostic: bool = False, image_size: tuple[int, int] | None = None,
                level_sizes: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Raw head outputs -> fixed-shape detections: the ONE function for torch inference, metrics and export.

    score = sqrt(sigmoid(cls) * sigmoid(centerness)) per point and class (FCOS); the ``topk`` best (point, class)
    pairs of each level; those above ``score_thresh`` decoded and clipped to the input (``image_size`` (h, w),
    default the extent of the points); NMS per class (or over all classes with ``class_agnostic``); the best
    ``max_det`` per image. Returns ``boxes [N, max_det, 4]`` (x1, y1, x2, y2 in input pixels), ``scores
    [N, max_det]``, ``labels`` int64 ``[N, max_det]``, ``num_dets`` int64 ``[N]``; rows past ``num_dets`` are
    zeros, sorted by score within an image. ``level_sizes``: the points per level, default read from ``strides``
    (the exported graph passes them, since a traced ``strides`` has no values to read).
    """
    cls_logits = outputs["cls_logits"].float()  # [N, P, K]
    n, p, k = cls_logits.shape
    scores = torch.sqrt(cls_logits.sigmoid() * outputs["centerness"].float().sigmoid()[..., None])  # [N, P, K]
    levels = level_sizes or points_per_level(strides)
    cand_scores, cand_idx = _topk_per_level(scores, levels, topk)  # [N, C], [N, C] flat point*K + class
    point_idx, cand_labels = cand_idx // k, cand_idx % k  # [N, C]
    reg = torch.gather(outputs["box_regression"].float(), 1, point_idx[..., None].expand(-1, -1, 4))  # [N, C, 4]
    cand_boxes = decode_boxes(reg, points[point_idx], strides[point_idx])  # [N, C, 4]
    if image_size is None:
        wh = (points + strides[:, None] / 2).amax(0)  # [2] the input's (w, h): cells tile it
    else:
        wh = torch.tensor(image_size[::-1], dtype=cand_boxes.dtype, device=cand_boxes.device)
    cand_boxes = torch.minimum(cand_boxes.clamp(min=0), wh.repeat(2))  # [N, C, 4] clipped to the input
    nms_labels = torch.zeros_like(cand_labels) if class_agnostic else cand_labels
    img, keep = nms_select(cand_boxes, cand_scores, nms_labels, cand_scores > score_thresh, nms_thresh,
                           max_det)  # [S], [S]
    return pad_detections(img, keep, cand_boxes, cand_scores, cand_labels, max_det)


def points_per_level(strides: torch.Tensor) -> list[int]:
    """How many points each level has, in level order, from ``strides [P]``."""
    return torch.unique_consecutive(strides, return_counts=True)[1].tolist()


def _topk_per_level(scores: torch.Tensor, level_sizes: list[int], topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``topk`` best (point, class) scores of each level: ``[N, C]`` scores and flat indices into P*K."""
    n, p, k = scores.shape
    out_s, out_i, start = [], [], 0
    for size in level_sizes:  # levels: a static loop
        s, i = scores[:, start:start + size].reshape(n, -1).topk(min(topk, size * k), dim=1)  # [N, c]
        out_s.append(s)
        out_i.append(i + start * k)
        start += size
    return torch.cat(out_s, 1), torch.cat(out_i, 1)


def nms_select(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
               iou_thresh: float, max_keep: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-label greedy NMS over the ``valid`` candidates of ``boxes [N, C, 4]``: the kept
    ``(image, candidate)`` index pairs ``[S]``, ``[S]``, grouped by image, best score first, at most ``max_keep``
    per image (the exported graph stops selecting there: NMS is most of the post-processing's time). The one
    data-dependent step: under ``torch.onnx.export`` it becomes one ONNX ``NonMaxSuppression`` node
    (``_onnx_nms``)."""
    if torch.onnx.is_in_onnx_export():
        return _onnx_nms(boxes, scores, labels, valid, iou_thresh, max_keep)
    imgs, keeps = [], []
    for i in range(len(boxes)):  # a loop over the batch (torchvision's NMS takes one image)
        cand = valid[i].nonzero().squeeze(1)  # [c]
        kept = cand[batched_nms(boxes[i, cand], scores[i, cand], labels[i, cand], iou_thresh)][:max_keep]  # [s]
        imgs.append(torch.full_like(kept, i))
        keeps.append(kept)
    return torch.cat(imgs), torch.cat(keeps)


def _onnx_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
              iou_thresh: float, max_keep: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``nms_select`` as ONNX ``NonMaxSuppression`` (emitted with ``torch.onnx.ops.symbolic``; ONNX Runtime runs it
    on CPU and CUDA). Labels become box offsets as in torchvision's ``batched_nms`` (boxes of different labels
    never overlap), so one "class" holds every candidate and the op's ``selected_indices [S, 3]`` (image, 0,
    candidate) come grouped by image, best score first, as from the torch path; invalid candidates get score -1,
    below the op's ``score_threshold`` of -0.5 (scores are in [0, 1]). ``max_keep`` is the op's
    ``max_output_boxes_per_class``: with one "class" per image, the op stops after that many selections."""
    offsets = labels.to(boxes.dtype) * (boxes.max() + 1)  # [N, C]
    masked = torch.where(valid, scores, torch.full_like(scores, -1.0))[:, None]  # [N, 1, C]
    max_per_class = torch.tensor([min(boxes.shape[1], max_keep or boxes.shape[1])], dtype=torch.int64)
    count = valid.sum().item()  # a symbolic size for tracing only: never use the output's size downstream
    torch._check(count >= 0)
    selected = torch.onnx.ops.symbolic(
        "NonMaxSuppression", (boxes + offsets[..., None], masked, max_per_class, torch.tensor([float(iou_thresh)]),
                              torch.tensor([-0.5])), dtype=torch.int64, shape=(count, 3), version=11)  # [S, 3]
    return selected[:, 0], selected[:, 2]


def pad_detections(img: torch.Tensor, keep: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
                   labels: torch.Tensor, max_det: int) -> dict[str, torch.Tensor]:
    """Scatter kept ``(img, keep)`` pairs (grouped by image, best first) into zero-padded ``[N, max_det, ...]``
    outputs, with tensor ops only (no loop over the data): each pair's rank in its image is its position minus the
    position of the image's first pair; ranks past ``max_det`` are dropped."""
    n = boxes.shape[0]
    counts = (img[:, None] == torch.arange(n, device=img.device)).sum(0)  # [N]
    first = torch.cumsum(counts, 0) - counts  # [N]
    # [S]; positions by cumsum, not arange(S): a traced S is the exporter's symbol, which the graph may compute
    # from the symbol's definition (in _onnx_nms) rather than from the NMS output
    rank = torch.cumsum(torch.ones_like(img), 0) - 1 - first[img]
    ok = rank < max_det
    slot = (img * max_det + rank)[ok]  # [S'] rows of the flattened [N * max_det] outputs
    img, keep = img[ok], keep[ok]
    out_boxes = boxes.new_zeros(n * max_det, 4).index_copy(0, slot, boxes[img, keep])
    out_scores = scores.new_zeros(n * max_det).index_copy(0, slot, scores[img, keep])
    out_labels = labels.new_zeros(n * max_det).index_copy(0, slot, labels[img, keep])
    return {"boxes": out_boxes.view(n, max_det, 4), "scores": out_scores.view(n, max_det),
            "labels": out_labels.view(n, max_det).long(), "num_dets": counts.clamp(max=max_det).long()}
