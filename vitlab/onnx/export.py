"""``export_onnx``: checkpoint -> self-describing ONNX files (fp32 / fp16 / int8) + ``report.json``, gated by
accuracy (classification) or mAP50 (detection) measured on real held-out images, or by sample parity with the
checkpoint (generation: one denoiser step), or by cosine similarity with torch (embedding). The task's piece is its
``TaskSpec.exporter``. Files appear only when complete (temp file, then rename)."""

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
    model_metadata,
    op_counts,
    rewrite_to_ort_mha,
    set_metadata,
)
from vitlab.onnx.precision import PRECISIONS, to_fp16, to_int8
from vitlab.tasks.spec import get_task, task_of_module

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """One written variant: its file, its entry in ``report.json`` and a one-line summary of it."""

    path: Path
    report: dict[str, Any]
    summary: str = ""


def file_name(precision: str) -> str:
    return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"


def load_exportable(source: Any, task: str | None = None) -> tuple[torch.nn.Module, str, dict[str, Any]]:
    """(model, model name, the task's hyper-parameters) from a checkpoint path, a task or a vitlab model, served as
    ``task`` (default: the checkpoint's own; an MAE checkpoint's ``embedding``). A task whose checkpoints answer no
    images (a DiffusionTask) exports from the task itself: its piece takes the EMA denoiser and the sampling
    defaults."""
    from vitlab.inference.backends import inference_model
    from vitlab.models.embed import create_embedder
    from vitlab.tasks.base import VitlabTask

    what = str(source) if isinstance(source, (str, os.PathLike)) else f"the {type(source).__name__}"
    if isinstance(source, (str, os.PathLike)):
        source = vitlab.load(source)
    if isinstance(source, VitlabTask):
        own = task_of_module(type(source).__name__)
        want = get_task(task).served if task else own.served
        if want.name == own.name and own.outputs is None:
            if own.exporter is None:
                raise own.refuse("export", what)
            return source.eval(), source.hparams.model_name, dict(source.hparams)
        model, _ = inference_model(source, want.name, what)
        return model.eval(), source.hparams.model_name, dict(source.hparams)
    pre = getattr(source, "preprocess", None)
    if isinstance(source, torch.nn.Module) and hasattr(source, "backbone") and pre is not None:
        if task is not None and get_task(task).name == "embedding":
            source = create_embedder(source)
        if get_task(source.preprocess.task).exporter is not None:
            return source.eval(), source.backbone.arch, {}
    raise VitlabError(f"cannot export a {type(source).__name__}: pass a vitlab checkpoint, task or model")


def export_onnx(source: Any, out_dir: str | os.PathLike, precision: str | Sequence[str] = "fp32", opset: int = 23,
                attention: str = "onnx", eval_data: Any = None, num_eval: int = 10000, calib_data: Any = None,
                num_calib: int = 512, allow_degraded: bool = False, task: str | None = None
                ) -> dict[str, ExportResult]:
    """Export a trained model to ``out_dir/model[.PRECISION].onnx`` and record ``report.json``.

    Classification: ``eval_data`` is ``fashion-mnist`` or an image folder (default Fashion-MNIST's test split for
    models trained on it); a variant whose accuracy drops more than 0.1 / 0.3 / 1.0 pp (fp32 / fp16 / int8) is
    rejected. Detection: ``eval_data`` is ``(images_dir, annotations.json)`` of COCO data or ``scenes`` (default
    the scenes' test split for models with their labels); the gate is COCO mAP50, 0.1 / 0.5 / 1.0 pp.
    Generation (a DiffusionTask): no ``eval_data``; the file holds one guided denoiser step (``vitlab.onnx.generate``),
    gated on images sampled from the same seed by torch and by the file (mean |Δ| <= 1 uint8 level, any precision).
    Embedding (``task="embedding"``: any checkpoint with a ViT backbone; an MAE checkpoint by default): ``embedding
    [N, D]`` out, gated on the smallest cosine similarity with torch over ``eval_data`` (a folder; default
    Fashion-MNIST's test split for 28x28 grey models): 0.9999 / 0.999 / 0.98 (fp32 / fp16 / int8).
    ``calib_data``: training images for static int8 (same forms); without it int8 is dynamic. A rejected variant
    is not written and raises, unless ``allow_degraded``.
    """
    precisions = [precision] if isinstance(precision, str) else list(precision)
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise VitlabError(f"precision {bad[0] if bad else None!r} is not one of {PRECISIONS}")
    if attention not in ATTENTION_PATHS:
        raise VitlabError(f"attention must be one of {ATTENTION_PATHS}, got {attention!r}")
    model, name, hparams = load_exportable(source, task)
    piece = get_task(model.preprocess.task).load("exporter")(model, hparams)
    depth = piece.depth
    log.info("held-out data: %s", piece.prepare(eval_data, num_eval))

    t0 = time.perf_counter()
    fp32 = piece.graph(opset)
    if attention == "ort-mha":
        fp32 = rewrite_to_ort_mha(fp32)
    log.info("exported %s (opset %d, %s attention) in %.1f s", name, opset, attention, time.perf_counter() - t0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for prec in precisions:
        calib = piece.calibration(calib_data, num_calib) if prec == "int8" and calib_data is not None else None
        variant = fp32 if prec == "fp32" else to_fp16(fp32, piece.fp32_nodes(fp32)) if prec == "fp16" \
            else to_int8(fp32, calib)
        fused = count_fused_attention(variant)
        if fused != depth:
            raise VitlabError(f"{prec} graph has {fused} fused attention nodes for {depth} blocks; "
                              "this model's attention cannot be exported as fused nodes")
        int8 = {"int8_mode": "dynamic" if calib is None else "static"} if prec == "int8" else {}
        set_metadata(variant, model_metadata(model, name, attention, opset, prec, piece.outputs,
                                             **{"int8_mode": None, **int8, **piece.metadata()}))
        results[prec] = _write_checked(variant, out / file_name(prec), piece, prec, allow_degraded, **int8)
    _drop_stale(out, list(results))
    return results


def _write_checked(model, path: Path, task, precision: str, allow_degraded: bool, **extra: Any) -> ExportResult:
    """Save to a temp file beside ``path``, measure it, then rename it into place (or delete it and raise)."""
    import onnx
    from vitlab_edge.session import create_session

    rep: dict[str, Any] = {}

    def write_and_check(tmp: Path) -> None:
        onnx.save(model, tmp)
        session = create_session(tmp)
        rep.update(task.evaluate(session, precision), precision=precision, file_bytes=tmp.stat().st_size,
                   fused_attention_nodes=count_fused_attention(model), providers=session.get_providers(),
                   node_counts=op_counts(model), **extra)
        rep["status"] = "ok" if rep["passed"] else ("degraded" if allow_degraded else "rejected")
        _update_report(path.parent / "report.json", path.name, rep)
        if rep["status"] == "rejected":
            path.unlink(missing_ok=True)  # an earlier export's file of this precision must not pass for this one
            unit = rep.get("gate_unit", "pp")
            raise VitlabError(f"{path.name}: {rep['gate']} {'drop ' * (unit == 'pp')}{rep['gate_drop_pp']:.2f} "
                              f"{unit} exceeds the {precision} budget of {rep['gate_budget_pp']} {unit} (see "
                              "report.json); not written. Pass --allow-degraded to keep it anyway")

    atomic_write(path, write_and_check)
    summary = task.summary(rep)
    log.info("%s: %s, %s, %.1f MB", path, rep["status"], summary, rep["file_bytes"] / 1e6)
    return ExportResult(path, rep, summary)


def _update_report(path: Path, key: str, entry: dict[str, Any] | None) -> None:
    """Set (or, with ``entry=None``, drop) one file's entry of ``report.json``."""
    try:
        report = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        report = {}
    if entry is None:
        report.pop(key, None)
    else:
        report[key] = entry
    atomic_write_json(path, report)


def _drop_stale(out: Path, written: list[str]) -> None:
    """After an export, the folder holds this export only: an earlier export's files of the precisions not written
    now (another checkpoint's ``model.int8.onnx``, say) and their report entries are removed."""
    for prec in PRECISIONS:
        name = file_name(prec)
        if prec not in written and ((out / name).exists() or name in _report_keys(out / "report.json")):
            (out / name).unlink(missing_ok=True)
            _update_report(out / "report.json", name, None)
            log.info("removed %s of an earlier export (not written by this one)", out / name)


def _report_keys(path: Path) -> set[str]:
    try:
        return set(json.loads(path.read_text())) if path.is_file() else set()
    except (OSError, json.JSONDecodeError):
        return set()
