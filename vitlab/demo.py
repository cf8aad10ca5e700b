"""``vitlab demo``: train the demo ViT on Fashion-MNIST within a time budget, test it on the official 10k test
set, export it to ONNX (fp32 and int8, each verified against torch on the test set), predict a folder of image
files made from Fashion-MNIST test items (assorted sizes, modes and formats, some on photo backgrounds, plus two
broken files) with both the checkpoint and the ONNX model (accuracy, agreement, error records, JSONL, attention
overlays), and print where everything went. A step that fails makes the command fail (exit 2) after the summary.
``--task detect`` does the same for the scenes detector (``vitlab.demo_detect``).

Training runs as ``vitlab fit`` in a child process (its DDP ranks re-launch that command, as with any
Lightning script); testing runs here on one process, so every test image is counted exactly once.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from vitlab._fs import atomic_write_json
from vitlab.cli import REPO_CONFIGS, run_cli
from vitlab.errors import VitlabError
from vitlab.tasks.spec import TaskSpec


def demo_tasks() -> dict[str, TaskSpec]:
    """``--task`` choices: every name and alias of a task whose spec has a demo (``TaskSpec.demo``)."""
    from vitlab.tasks.spec import get_task, list_tasks

    specs = [get_task(n) for n in list_tasks() if get_task(n).demo]
    return {key: s for s in specs for key in (s.name, *s.aliases)}


def main(argv: list[str]) -> dict:
    tasks = demo_tasks()
    ap = argparse.ArgumentParser(prog="vitlab demo", description=__doc__)
    ap.add_argument("--task", choices=sorted(tasks), default="classify",
                    help="classify: the Fashion-MNIST ViT; detect: the scenes detector (vitlab.demo_detect)")
    ap.add_argument("--config", default=None, help="default: configs/classify/fmnist_demo.yaml, or "
                    "configs/detect/scenes_demo.yaml for --task detect")
    ap.add_argument("--out", default=None, help="output folder (checkpoints, logs, reports); default runs/demo, or "
                    "runs/demo_detect for --task detect")
    ap.add_argument("--minutes", type=float, default=5.0, help="training time budget (Trainer.max_time)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images of each split (smoke "
                    "runs; detect: N scenes per split, generated under OUT/scenes)")
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--devices", type=int, default=None, help="override trainer.devices (DDP processes)")
    args = ap.parse_args(argv)
    config, out, runner = tasks[args.task].demo
    args.config = args.config or str(REPO_CONFIGS / config)
    args.out = args.out or out
    if not Path(args.config).is_file():
        raise VitlabError(f"demo config {args.config} not found (run from a vitlab checkout or pass --config)")
    module, _, name = runner.partition(":")
    return getattr(importlib.import_module(module), name)(args)


def classify_demo(args) -> dict:
    """The Fashion-MNIST classifier's demo (``TaskSpec.demo`` of classification); see the module docstring."""
    out = Path(args.out)
    summary, ckpt, log_dir = fit_and_test(args, [f"--data.init_args.limit={args.limit}"] if args.limit else [])
    metrics = {k: v for k, v in summary.items() if k.startswith("test/")}
    summary["export"] = _export(ckpt, out / "export", args.limit or 10000)
    summary["predict"] = _predict_items(ckpt, out)
    nan = float("nan")
    lines = [f"test accuracy {metrics.get('test/acc', nan):.2%}  macro-F1 {metrics.get('test/f1', nan):.4f}"
             f"  top-5 {metrics.get('test/top5', nan):.2%}  (official Fashion-MNIST test set)"]
    lines += path_lines([("checkpoint", ckpt), ("metrics", out / "demo_metrics.json"),
                         ("confusion matrix", log_dir / "confusion_matrix.png"),
                         ("per-class table", log_dir / "per_class.csv"), ("logs (CSV + TensorBoard)", log_dir)])
    lines += export_and_predict_lines(
        summary, out,
        lambda rep: (f"accuracy {rep.get('accuracy_onnx_pct', nan):.2f}% (torch "
                     f"{rep.get('accuracy_torch_pct', nan):.2f}%), agreement "
                     f"{rep.get('top1_agreement_pct', nan):.2f}%"),
        lambda p: [f"{'batch prediction':>26}: {p['images']} files ({p['valid']} Fashion-MNIST items, "
                   f"{p['on_photos']} of them on photos): accuracy {p['accuracy_pct']:.1f}% (checkpoint) / "
                   f"{p['accuracy_onnx_pct']:.1f}% (ONNX), agreement {p['agreement_pct']:.1f}%, {p['errors']} "
                   f"error records -> {p['jsonl']}", f"{'attention overlays':>26}: {p['overlays']}"])
    return finish(out, summary, lines)


def fit_and_test(args, data_args: list[str]) -> tuple[dict, Path, Path]:
    """Train ``args.config`` with ``vitlab fit`` in a child process (``--minutes`` as Trainer.max_time, plus
    ``--max-epochs``, ``--devices`` and ``data_args``), then test its last checkpoint here on one process.
    Returns the summary so far (training time, epochs, steps, checkpoint, log folder, the ``test/*`` metrics),
    the checkpoint and the test's log folder."""
    out = Path(args.out)
    common = ["--config", args.config, f"--trainer.default_root_dir={out}", *data_args]
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
    return summary, ckpt, log_dir


def path_lines(items: list[tuple[str, object]]) -> list[str]:
    return [f"{name:>26}: {path}" for name, path in items]


def export_and_predict_lines(summary: dict, out: Path, export_figures, predict_lines) -> list[str]:
    """The summary lines every demo prints after its test line: one per ONNX variant (``export_figures(report)``:
    the task's gate figures), the report's path, and the batch prediction's (``predict_lines(summary)``)."""
    lines = [f"{'ONNX ' + prec:>26}: {rep.get('path', '-')}  [{rep['status']}] {export_figures(rep)}, fused "
             f"attention nodes {rep.get('fused_attention_nodes', '-')}" for prec, rep in summary["export"].items()]
    lines.append(f"{'export report':>26}: {out / 'export' / 'report.json'}")
    p = summary["predict"]
    return lines + ([f"{'batch prediction':>26}: failed ({p['error']})"] if "error" in p else predict_lines(p))


def finish(out: Path, summary: dict, lines: list[str], title: str = "vitlab demo") -> dict:
    """Write ``out/demo_metrics.json``, print the summary (training, then ``lines``, then the JSON), and fail
    (VitlabError: exit 2) when an export variant is not ``ok`` or the batch prediction failed."""
    from vitlab_edge.machine import machine_info, run_info

    summary.update(machine=machine_info(), **run_info())  # the figures' machine (docs/results, benchmarks/report.py)
    atomic_write_json(out / "demo_metrics.json", summary)
    print(f"\n== {title} ==")
    print(f"trained {summary['epochs']} epochs / {summary['steps']} steps in {summary['train_seconds'] / 60:.1f} min "
          f"({summary['wall_seconds_fit'] / 60:.1f} min with start-up)")
    for line in lines:
        print(line)
    print(json.dumps(summary))
    failed = [f"export {k}: {v['status']}" for k, v in summary["export"].items() if v["status"] != "ok"]
    failed += [f"batch prediction: {summary['predict']['error']}"] if "error" in summary["predict"] else []
    if failed:
        raise VitlabError(f"demo steps failed: {'; '.join(failed)}")
    return summary


def _predict_items(ckpt: Path, out: Path, n: int = 48) -> dict:
    """Predict image files made from Fashion-MNIST test items (what the model knows, as files a user would have:
    assorted sizes, modes, formats, some on photo backgrounds) plus two broken files, with the checkpoint and the
    ONNX model: accuracy against the items' labels, agreement, and one error record per broken file."""
    from vitlab.data.datasets import fashion_mnist_arrays, make_item_files, read_csv_list
    from vitlab.inference import Predictor
    from vitlab.inference.writers import write_records
    from vitlab.models.classify import FMNIST_LABELS

    onnx_path = out / "export" / "model.onnx"
    if not onnx_path.is_file():
        return {"error": "no exported fp32 model"}
    try:
        labels_csv = make_item_files(out / "items", *fashion_mnist_arrays("test"), FMNIST_LABELS, n=n)
    except VitlabError as e:
        return {"error": str(e)}
    files, targets, classes = read_csv_list(labels_csv, FMNIST_LABELS)
    broken = [out / "items" / "broken_truncated.jpg", out / "items" / "broken_not_an_image.png"]
    broken[0].write_bytes(Path(files[1]).read_bytes()[:200])  # a JPEG cut short
    broken[1].write_text("this is not an image\n")
    inputs = files + [str(b) for b in broken]
    checkpoint = Predictor.load(ckpt)
    torch_preds = checkpoint.predict(inputs, num_workers=0)
    onnx_preds = Predictor.load(onnx_path).predict(inputs, num_workers=0)
    write_records((p.to_dict() for p in onnx_preds), out / "predictions.jsonl")
    checkpoint.explain(files[:6], out / "overlays", num_workers=0)

    def accuracy(preds) -> float:
        return 100 * sum(p.class_id == t for p, t in zip(preds, targets)) / len(targets)

    on_photos = sum(Path(f).stem.endswith("_on_photo") for f in files)
    same = sum(a.class_id == b.class_id for a, b in zip(torch_preds, onnx_preds))
    return {"images": len(inputs), "valid": len(files), "on_photos": on_photos,
            "accuracy_pct": accuracy(torch_preds), "accuracy_onnx_pct": accuracy(onnx_preds),
            "agreement_pct": 100 * same / len(inputs), "errors": sum(p.error is not None for p in onnx_preds),
            "jsonl": str(out / "predictions.jsonl"), "overlays": str(out / "overlays")}


def _export(ckpt: Path, out: Path, num_eval: int, eval_data=None) -> dict:
    """Export fp32 + int8 with the task's gate (accuracy, or mAP50 on ``eval_data``); a rejected variant is
    reported (its status), not raised, so that the demo goes on."""
    from vitlab.onnx import export_onnx
    from vitlab.onnx.export import file_name

    try:
        export_onnx(ckpt, out, ["fp32", "int8"], eval_data=eval_data, num_eval=num_eval)
    except VitlabError as e:
        print(f"export: {e}")
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    summary = {}
    for prec in ("fp32", "int8"):
        rep = report.get(file_name(prec), {"status": "not exported"})
        summary[prec] = {k: v for k, v in rep.items() if k != "node_counts"}
        if (out / file_name(prec)).is_file() and rep.get("status") in ("ok", "degraded"):
            summary[prec]["path"] = str(out / file_name(prec))
    return summary
