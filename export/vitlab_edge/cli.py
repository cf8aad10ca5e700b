"""``vitlab-edge``: run an exported vitlab model over images without torch.

    vitlab-edge predict model.onnx photos/ extra.jpg --out preds.jsonl
    vitlab-edge info model.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from vitlab_edge.files import write_jsonl
from vitlab_edge.metadata import ModelFormatError
from vitlab_edge.model import EdgeModel
from vitlab_edge.sources import expand_inputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vitlab-edge", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    pred = sub.add_parser("predict", help="predict images, one JSON record per input")
    pred.add_argument("model")
    pred.add_argument("images", nargs="+", help="image files, folders (searched recursively), globs, .txt lists")
    pred.add_argument("--out", required=True, help="JSONL output (written atomically)")
    pred.add_argument("--batch-size", type=int, default=32)
    pred.add_argument("--topk", type=int, default=5)
    pred.add_argument("--providers", default=None, help="comma-separated, e.g. CPUExecutionProvider")
    info = sub.add_parser("info", help="print the model's metadata and the providers granted")
    info.add_argument("model")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="vitlab-edge: %(message)s")
    try:
        providers = args.providers.split(",") if getattr(args, "providers", None) else None
        model = EdgeModel(args.model, providers=providers)
        if args.command == "info":
            print(json.dumps({"providers": model.providers, **model.metadata}, indent=2))
            return 0
        files = expand_inputs(args.images)
        errors = 0

        def counted():
            nonlocal errors
            for rec in model.stream(files, batch_size=args.batch_size, topk=args.topk):
                errors += rec["error"] is not None
                yield rec

        n = write_jsonl(counted(), args.out)
        print(f"vitlab-edge: {n} records ({errors} errors) -> {args.out} [{', '.join(model.providers)}]")
        return 0
    except ModelFormatError as e:
        print(f"vitlab-edge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
