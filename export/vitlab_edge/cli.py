"""``vitlab-edge``: run an exported vitlab model over images without torch.

    vitlab-edge predict model.onnx photos/ 'more/**/*.jpg' list.txt --out preds.jsonl   # or preds.csv
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

from vitlab_edge.files import OUTPUT_FORMATS, check_coco_inputs, write_coco, write_records
from vitlab_edge.metadata import ModelFormatError
from vitlab_edge.model import EdgeModel, open_model
from vitlab_edge.sampler import LabelError, Sampler, save_grid
from vitlab_edge.session import RuntimeMissingError
from vitlab_edge.sources import EmptySourceError, expand_inputs

# printed as one line, exit status 2
USER_ERRORS = (ModelFormatError, EmptySourceError, RuntimeMissingError, LabelError)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vitlab-edge", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    pred = sub.add_parser("predict", help="predict images, one record per input, in input order")
    pred.add_argument("model")
    pred.add_argument("images", nargs="+", help="image files, folders (searched recursively), globs, .txt lists")
    pred.add_argument("--out", required=True, help="a .jsonl or .csv file (written atomically); .json for coco")
    pred.add_argument("--format", default=None, choices=["coco"], help="coco: a detector's COCO results JSON")
    pred.add_argument("--annotations", default=None, help="with --format coco: the ground-truth COCO JSON")
    pred.add_argument("--batch-size", type=int, default=32)
    pred.add_argument("--topk", type=int, default=5)
    pred.add_argument("--providers", default=None, help="comma-separated, e.g. CPUExecutionProvider")
    smp = sub.add_parser("sample", help="sample a generation model: one PNG grid, a row per class or per --labels")
    smp.add_argument("model")
    smp.add_argument("--out", required=True, help="a .png file (written atomically)")
    add_sample_arguments(smp)
    smp.add_argument("--providers", default=None, help="comma-separated, e.g. CPUExecutionProvider")
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


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.command == "predict" and args.format == "coco":
        if Path(args.out).suffix != ".json" or args.annotations is None:
            ap.error("--format coco needs --out X.json and --annotations GT.json")
    elif args.command == "predict" and Path(args.out).suffix not in OUTPUT_FORMATS:
        ap.error(f"--out {args.out}: use a .jsonl or .csv file name")
    elif args.command == "sample" and (Path(args.out).suffix.lower() != ".png" or (args.per_class or 1) < 1):
        ap.error("sample needs --out X.png and --per-class >= 1")
    logging.basicConfig(level=logging.INFO, format="vitlab-edge: %(message)s")
    try:
        providers = args.providers.split(",") if getattr(args, "providers", None) else None
        if args.command == "info":
            session, metadata = open_model(args.model, providers)
            print(json.dumps({"providers": session.get_providers(), **metadata}, indent=2))
            return 0
        if args.command == "sample":
            return sample(Sampler(args.model, providers), args)
        model = EdgeModel(args.model, providers=providers)
        if args.format == "coco" and "boxes" not in model.decoder.fields:
            raise ModelFormatError(f"{args.model}: --format coco writes detections, this is a {model.task} model")
        files = expand_inputs(args.images)
        if args.format == "coco":
            try:
                check_coco_inputs(files, args.annotations, model.labels)
            except ValueError as e:
                raise ModelFormatError(str(e)) from None
        return predict(model, files, args)
    except USER_ERRORS as e:
        print(f"vitlab-edge: error: {e}", file=sys.stderr)
        return 2


def predict(model: EdgeModel, files: list[str], args: argparse.Namespace) -> int:
    """Write one record per file to ``args.out``, with a progress bar when stderr is a terminal; a summary line."""
    errors = 0

    def counted():
        nonlocal errors
        for rec in model.stream(files, batch_size=args.batch_size, topk=args.topk, progress=None):
            errors += rec["error"] is not None
            yield rec

    if args.format == "coco":
        try:
            n = write_coco(counted(), args.out, args.annotations, model.labels)
        except (OSError, ValueError, KeyError) as e:
            raise ModelFormatError(f"COCO results for {args.annotations}: {e}") from None
    else:
        n = write_records(counted(), args.out, model.decoder.csv_fields)
    print(f"vitlab-edge: {n} records ({errors} errors) -> {args.out} [{', '.join(model.providers)}]")
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
