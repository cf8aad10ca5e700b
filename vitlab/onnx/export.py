"""``export_onnx``: checkpoint -> self-describing ONNX files (fp32 / fp16 / int8) + ``report.json``, gated by
accuracy measured on real held-out images. Files appear only when complete (temp file, then rename)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import vitlab
from vitlab._fs import atomic_write, atomic_write_json
from vitlab.errors import VitlabError
from vitlab.onnx.graph import (
    ATTENTION_PATHS,
    count_fused_attention,
    export_graph,
    model_metadata,
    op_counts,
    rewrite_to_ort_mha,
    set_metadata,
)
from vitlab.onnx.precision import PRECISIONS, to_fp16, to_int8
from vitlab.onnx.report import load_eval_set, onnx_outputs, parity_report, torch_outputs

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """One written variant: its file and its entry in ``report.json``."""

    path: Path
    report: dict[str, Any]


def file_name(precision: str) -> str:
    return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"


def load_classifier(source: Any) -> tuple[torch.nn.Module, str]:
    """(classifier, model name) from a checkpoint path, a ClassificationTask or a ViTClassifier."""
    from vitlab.models.classify import ViTClassifier
    from vitlab.tasks import ClassificationTask

    if isinstance(source, (str, os.PathLike)):
        source = vitlab.load(source)
    if isinstance(source, ClassificationTask):
        return source.model.eval(), source.hparams.model_name
    if isinstance(source, ViTClassifier):
        return source.eval(), source.backbone.arch
    raise VitlabError(f"cannot export a {type(source).__name__}: pass a vitlab checkpoint, ClassificationTask or "
                      "ViTClassifier (detection and generation export are not supported yet)")


def export_onnx(source: Any, out_dir: str | os.PathLike, precision: str | Sequence[str] = "fp32", opset: int = 23,
                attention: str = "onnx", eval_data: str | os.PathLike | None = None, num_eval: int = 10000,
                calib_data: str | os.PathLike | None = None, num_calib: int = 512,
                allow_degraded: bool = False) -> dict[str, ExportResult]:
    """Export a trained classifier to ``out_dir/model[.PRECISION].onnx`` and record ``report.json``.

    ``eval_data``: held-out images for the report (``fashion-mnist`` or a folder; default Fashion-MNIST's test
    split for models trained on it). ``calib_data``: training images for static int8 (``fashion-mnist`` or a
    folder); without it int8 is dynamic. A variant whose accuracy drops more than 0.1 / 0.3 / 1.0 pp (fp32 /
    fp16 / int8) is not written and raises, unless ``allow_degraded``.
    """
    precisions = [precision] if isinstance(precision, str) else list(precision)
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise VitlabError(f"precision {bad[0] if bad else None!r} is not one of {PRECISIONS}")
    if attention not in ATTENTION_PATHS:
        raise VitlabError(f"attention must be one of {ATTENTION_PATHS}, got {attention!r}")
    classifier, name = load_classifier(source)
    pre, depth = classifier.preprocess, classifier.backbone.depth
    eval_set = load_eval_set(eval_data, pre, split="test", limit=num_eval)
    log.info("held-out images: %d from %s", len(eval_set.images), eval_set.source)
    ref_logits = torch_outputs(classifier, eval_set.images)

    t0 = time.perf_counter()
    fp32 = export_graph(classifier, opset)
    if attention == "ort-mha":
        fp32 = rewrite_to_ort_mha(fp32)
    log.info("exported %s (opset %d, %s attention) in %.1f s", name, opset, attention, time.perf_counter() - t0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for prec in precisions:
        calib = None
        if prec == "int8" and calib_data is not None:
            calib = load_eval_set(calib_data, pre, split="train", limit=num_calib).images
        model = fp32 if prec == "fp32" else to_fp16(fp32) if prec == "fp16" else to_int8(fp32, calib)
        fused = count_fused_attention(model)
        if fused != depth:
            raise VitlabError(f"{prec} graph has {fused} fused attention nodes for {depth} blocks; "
                              "this model's attention cannot be exported as fused nodes")
        int8 = {"int8_mode": "dynamic" if calib is None else "static"} if prec == "int8" else {}
        set_metadata(model, model_metadata(classifier, name, attention, opset, prec, **{"int8_mode": None, **int8}))
        results[prec] = _write_checked(model, out / file_name(prec), ref_logits, eval_set, prec, allow_degraded,
                                       **int8)
    return results


def _write_checked(model, path: Path, ref_logits, eval_set, precision: str, allow_degraded: bool,
                   **extra: Any) -> ExportResult:
    """Save to a temp file beside ``path``, measure it, then rename it into place (or delete it and raise)."""
    import onnx
    from vitlab_edge.session import create_session

    rep: dict[str, Any] = {}

    def write_and_check(tmp: Path) -> None:
        onnx.save(model, tmp)
        session = create_session(tmp)
        probs, logits = onnx_outputs(session, eval_set.images)
        rep.update(parity_report(ref_logits, probs, logits, eval_set, precision), precision=precision,
                   file_bytes=tmp.stat().st_size, fused_attention_nodes=count_fused_attention(model),
                   providers=session.get_providers(), node_counts=op_counts(model), **extra)
        rep["status"] = "ok" if rep["passed"] else ("degraded" if allow_degraded else "rejected")
        _update_report(path.parent / "report.json", path.name, rep)
        if rep["status"] == "rejected":
            drop = rep.get("accuracy_drop_pp", rep.get("accuracy_drop_bound_pp"))
            raise VitlabError(f"{path.name}: accuracy drop {drop:.2f} pp exceeds the {precision} budget of "
                              f"{rep['max_accuracy_drop_pp']} pp (see report.json); not written. Pass "
                              "--allow-degraded to keep it anyway")

    atomic_write(path, write_and_check)
    log.info("%s: %s, agreement %.2f%%%s, %.1f MB", path, rep["status"], rep["top1_agreement_pct"],
             f", accuracy {rep['accuracy_onnx_pct']:.2f}% (torch {rep['accuracy_torch_pct']:.2f}%)"
             if "accuracy_onnx_pct" in rep else "", rep["file_bytes"] / 1e6)
    return ExportResult(path, rep)


def _update_report(path: Path, key: str, entry: dict[str, Any]) -> None:
    try:
        report = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        report = {}
    report[key] = entry
    atomic_write_json(path, report)
