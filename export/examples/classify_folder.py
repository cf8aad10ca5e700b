"""A minimal edge app: classify every image in a folder with an exported vitlab model, print a tally.

    pip install './export[cpu]'      # or './export[gpu]' on a machine with an NVIDIA GPU
    python export/examples/classify_folder.py model.onnx photos/ --min-prob 0.5
"""

import argparse
from collections import Counter

from vitlab_edge import EdgeModel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("folder")
    ap.add_argument("--min-prob", type=float, default=0.0, help="below this, count the image as 'unsure'")
    args = ap.parse_args()
    model = EdgeModel(args.model)
    print(f"{model.metadata['backbone']} ({model.metadata['precision']}) on {model.providers[0]}")
    tally = Counter()
    for rec in model.stream(args.folder, batch_size=16, topk=1, progress=True):  # a folder with no image raises
        if rec["error"]:
            print(f"skipped {rec['source']}: {rec['error']}")
            tally["<unreadable>"] += 1
        else:
            tally[rec["label"] if rec["prob"] >= args.min_prob else "<unsure>"] += 1
    for label, n in tally.most_common():
        print(f"{n:6d}  {label}")


if __name__ == "__main__":
    main()
