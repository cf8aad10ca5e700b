"""``vitlab-edge``: run an exported vitlab model over images without torch.

    vitlab-edge predict model.onnx photos/ 'more/**/*.jpg' list.txt --out preds.jsonl   # or preds.csv
    vitlab-edge predict model.onnx photos/ --out preds.jsonl --resume   # after Ctrl-C / kill: predict the rest
    vitlab-edge predict detector.onnx val/ --out results.json --format coco --annotations val.json
    vitlab-edge sample generator.onnx --per-class 8 --steps 20 --guidance 2 --seed 0 --out grid.png
    vitlab-edge info model.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vitlab_edge.files import OUTPUT_FORMATS, check_coco_inputs, read_records, write_coco, write_records
from vitlab_edge.journal import JournalError, ResumableRun
from vitlab_edge.metadata import ModelFormatError
from vitlab_edge.model import EdgeModel, open_model
from vitlab_edge.sampler import LabelError, Sampler, save_grid
from vitlab_edge.session import RuntimeMissingError
from vitlab_edge.sources import EmptySourceError, expand_inputs


class UsageError(ValueError):
    """An option out of range or options that do not go together; one line."""


# printed as one line, exit status 2
USER_ERRORS = (ModelFormatError, EmptySourceError, RuntimeMissingError, LabelError, JournalError, UsageError)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vitlab-edge", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    pred = sub.add_parser("predict", help="predict images, one record per input, in input order")
    pred.add_argument("model")
    pred.add_argument("images", nargs="+", help="image files, folders (searched recursively), globs, .txt lists")
    pred.add_argument("--out", required=True, help="a .jsonl or .csv file (written atomically, complete or not at "
                      "all; finished records are journaled beside it as they come); .json for coco")
    pred.add_argument("--format", default=None, choices=["coco"], help="coco: a detector's COCO results JSON")
    pred.add_argument("--annotations", default=None, help="with --format coco: the ground-truth COCO JSON")
    pred.add_argument("--batch-size", type=int, default=32)
    pred.add_argument("--topk", type=int, default=5)
    pred.add_argument("--providers", default=None, help="ONNX Runtime providers, comma-separated: tensorrt, cuda, cpu")
    pred.add_argument("--resume", action="store_true", help="continue an interrupted run: skip the inputs answered "
                      "in --out or in its journal (.OUT.partial.jsonl), predict the rest")
    smp = sub.add_parser("sample", help="sample a generation model: one PNG grid, a row per class or per --labels")
    smp.add_argument("model")
    smp.add_argument("--out", required=True, help="a .png file (written atomically)")
    add_sample_arguments(smp)
    smp.add_argument("--providers", default=None, help="ONNX Runtime providers, comma-separated: tensorrt, cuda, cpu")
    info = sub.add_parser("info", help="print the model's metadata and the providers granted")
    info.add_argument("model")
    return ap


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampling options of `vitlab-edge sample` and `vitlab sample` (which takes them from here)."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--labels", nargs="+", help="class ids or names: one row of images, in this order")
    which.add_argument("--per-class", type=int, help="this many images of every class, one row per class")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    parser.add_argument("--method", default=None, choices=["euler", "heun"], help="default: the model's")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same images on every backend")
    parser.add_argument("--batch-size", type=int, default=256)


def check_sample_arguments(args: argparse.Namespace) -> None:
    """``--per-class``, ``--steps`` and ``--batch-size`` of a sample command in range (`vitlab sample` too), before
    the model loads; ``UsageError`` names the option."""
    for name in ("per_class", "steps", "batch_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def check_arguments(args: argparse.Namespace) -> None:
    """Every option of ``args`` in range and the output name fitting its format, before any work."""
    if args.command == "sample":
        check_sample_arguments(args)
        if Path(args.out).suffix.lower() != ".png":
            raise UsageError(f"sample writes a PNG grid: --out X.png, got {args.out}")
    elif args.command == "predict":
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.format == "coco" and (Path(args.out).suffix != ".json" or args.annotations is None):
            raise UsageError("--format coco needs --out X.json and --annotations GT.json")
        if args.format != "coco" and Path(args.out).suffix not in OUTPUT_FORMATS:
            raise UsageError(f"--out {args.out}: use a .jsonl or .csv file name")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="vitlab-edge: %(message)s")
    try:
        check_arguments(args)
        providers = args.providers.split(",") if getattr(args, "providers", None) else None
        if args.command == "info":
            session, metadata = open_model(args.model, providers)
            print(json.dumps({"providers": session.get_providers(), **metadata}, indent=2))
            return 0
        if args.command == "sample":
            return sample(Sampler(args.model, providers), args)
        files = expand_inputs(args.images)
        run = ResumableRun(args.out, files, args.resume, read_records if args.format != "coco" else None)
        model = EdgeModel(args.model, providers=providers)
        if args.format == "coco" and "boxes" not in model.decoder.fields:
            raise ModelFormatError(f"{args.model}: --format coco writes detections, this is a {model.task} model")
        if args.format == "coco":
            try:
                check_coco_inputs(files, args.annotations, model.labels)
            except ValueError as e:
                raise ModelFormatError(str(e)) from None
        return predict(model, files, run, args)
    except USER_ERRORS as e:
        print(f"vitlab-edge: error: {e}", file=sys.stderr)
        return 2


def predict(model: EdgeModel, files: list[str], run: ResumableRun, args: argparse.Namespace) -> int:
    """Journal one record per file not answered yet (``run.todo``), with a progress bar when stderr is a terminal,
    then write every file's record to ``args.out`` in input order; a summary line."""
    todo = [files[i] for i in run.todo]
    if todo and run.record_or_report(model.stream(todo, batch_size=args.batch_size, topk=args.topk, progress=None),
                                     "vitlab-edge"):
        return 130  # Ctrl-C: what was finished is kept for --resume
    if args.format == "coco":
        try:
            n = write_coco(run.merged(), args.out, args.annotations, model.labels)
        except (OSError, ValueError, KeyError) as e:
            raise ModelFormatError(f"COCO results for {args.annotations}: {e}") from None
    elif Path(args.out).suffix == ".jsonl":
        n = run.write_jsonl()
    else:
        n = write_records(run.merged(), args.out, model.decoder.csv_fields)
    run.finish()
    earlier = f", {run.earlier} from the earlier output" if args.resume else ""
    print(f"vitlab-edge: {n} records ({run.errors} errors{earlier}) -> {args.out} [{', '.join(model.providers)}]")
    return 0


def sample(sampler: Sampler, args: argparse.Namespace) -> int:
    """Write the grid of ``args.labels`` (one row) or of ``args.per_class`` images per class (a row each)."""
    if args.labels:
        labels, rows = args.labels, 1
    else:
        labels, rows = [i for i in range(sampler.num_classes) for _ in range(args.per_class)], sampler.num_classes
    images = sampler.sample(labels, args.steps, args.guidance, args.seed, args.method, args.batch_size)
    save_grid(images.reshape(rows, -1, *images.shape[1:]), args.out)
    print(f"vitlab-edge: {len(images)} images ({rows} row(s)) -> {args.out} [{', '.join(sampler.providers)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
