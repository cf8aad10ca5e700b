"""The README's results table, rendered from result files, so that a figure cannot drift from its run.

Each row is one claim: a figure read from one JSON result file under ``docs/results/`` (what the benchmarks and
``vitlab demo`` write, copied there by ``--collect``), the command that made it, the machine it ran on (the file's
``"machine"`` block, see ``benchmarks/machine.py``) and the docs page with the rest. The table sits in README.md
between ``<!-- results:begin -->`` and ``<!-- results:end -->``.

    python benchmarks/report.py              # print the table
    python benchmarks/report.py --write      # put it into README.md
    python benchmarks/report.py --check      # exit 1 when README.md's table differs from what the files render
    python benchmarks/report.py --collect    # copy fresh runs/... results (with a machine block) to docs/results/
    python benchmarks/report.py --collect runs/bench/onnx.json=onnx gpu.json=gpu_h200   # explicit SOURCE=NAME pairs

A result file without a ``"machine"`` block is refused: a figure without its machine misleads (the same benchmark
gives ONNX Runtime int8 2.84x eager on a Zen 4 with AVX-512 and 1.77x on a Zen 3 with AVX2). Figures whose run
files were not kept were transcribed once into ``docs/results/`` with ``"source"`` saying so and the machine as the
text of the time recorded it (``"recorded": false``); they are marked with a dagger in the table.
Standard library only; no torch.
"""

from __future__ import annotations

import argparse
import difflib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_label  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# what --collect copies by default: the file a command writes -> its name under docs/results/
COLLECT = {"runs/demo/demo_metrics.json": "demo", "runs/bench/onnx.json": "onnx", "runs/bench/predict.json": "predict",
           "runs/bench/training.json": "training"}


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.2f} %"


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:g}"


def _model(d: dict, name: str) -> dict:
    for m in d["models"]:
        if m["model"] == name:
            return m
    raise KeyError(f"model {name!r}")


def _vs_eager(backend: str, model: str = "vit_small_patch16_224") -> Callable[[dict], str]:
    def figure(d: dict) -> str:
        b = _model(d, model)["batches"]
        return f"**{b['1'][backend]['vs_eager']:.2f}x** / {b['8'][backend]['vs_eager']:.2f}x eager (batch 1 / 8)"
    return figure


def _int8_accuracy(d: dict) -> str:
    acc = _model(d, "vitlab_fmnist (demo)")["fmnist_test_accuracy_pct"]
    delta = acc["ort_int8"] - acc["torch"]
    delta_s = "±0.00" if abs(delta) < 0.005 else f"{delta:+.2f}"
    return f"**{acc['ort_int8']:.2f} %** int8 vs {acc['torch']:.2f} % torch ({delta_s} pp)"


def _predictor(d: dict) -> str:
    rows = {r["variant"]: r for r in d["throughput"] if r["model"] == "vitlab_fmnist" and r["inputs"] == "28x28 PNGs"}
    t, o = rows["torch"], rows["ort"]
    return (f"**{t['ratio'][0]:.2f}x** torch ({_num(t['predictor_img_s'][0])} img/s), {o['ratio'][0]:.2f}x ONNX "
            f"Runtime ({_num(o['predictor_img_s'][0])} img/s)")


def _mae_gain(d: dict) -> str:
    acc, gain = d["test_acc_pct"], d["gain_pp"]
    return f"**+{gain['0']:.2f} pp** ({acc['mae']['0']:.2f} % vs {acc['scratch']['0']:.2f} % from scratch, seed 0)"


def _gpu(d: dict) -> str:
    """ViT-S at batch 1024: a ``check_cuda.py --all`` run's ``summary`` row (best ONNX Runtime vs best PyTorch), or
    the placement rows of the run before it."""
    vit = [r for r in d["rows"] if r.get("model") == "vit_small_patch16_224" and r.get("batch") == 1024]
    best = next((r for r in vit if r.get("check") == "summary"), None)
    if best is not None:
        return (f"**{_num(best['best_ort_img_s'])} img/s** ONNX Runtime ({best['best_ort']}) vs "
                f"{_num(best['best_torch_img_s'])} PyTorch ({best['best_torch']}), batch 1024")
    rows = {r["graph"]: r for r in vit if r.get("check", "placement") == "placement"}
    ort, torch_ = rows["fp16/ort-mha"], rows["fp16/onnx"]
    return f"**{_num(ort['ort_img_s'])} img/s** ONNX Runtime fp16 vs {_num(torch_['torch_img_s'])} PyTorch (batch 1024)"


@dataclass(frozen=True)
class Claim:
    what: str  # the claim, in a few words
    file: str  # docs/results/<file>.json
    figure: Callable[[dict], str]  # the figure, read from the file
    page: str  # docs page with the rest
    command: str = ""  # shown when the file records none (a run's JSON without "command")


CLAIMS = [
    Claim("Fashion-MNIST test accuracy, demo model, ≤ 5 min of training", "demo",
          lambda d: f"**{_pct(d['test/acc'])}**", "classification", "make demo"),
    Claim("Fashion-MNIST test accuracy, `fmnist_best.yaml`, ≤ 30 min", "fmnist_best",
          lambda d: f"**{_pct(d['test/acc'])}**", "classification"),
    Claim("MAE pretraining, then 10 % of the labels: gain over scratch", "mae_10pct", _mae_gain, "generation"),
    Claim("detection, scenes test split, `scenes_demo.yaml` (≤ 5 min)", "detect_demo",
          lambda d: f"mAP50 **{d['test/map_50']:.3f}**, mAP50:95 {d['test/map']:.3f}", "detection"),
    Claim("detection, scenes test split, `scenes_best.yaml` (≤ 30 min)", "detect_best",
          lambda d: f"mAP50 **{d['test/map_50']:.3f}**, mAP50:95 {d['test/map']:.3f}", "detection"),
    Claim("class-conditional generation, `fmnist_diffusion.yaml` (≤ 30 min)", "generation",
          lambda d: f"FID **{d['test/fid']:.2f}** (real-vs-real floor {d['test/fid_floor']:.3f}), class "
                    f"consistency **{d['test/class_acc']:.1f} %** at guidance {d['guidance']:g}", "generation"),
    Claim("ONNX Runtime fp32 vs PyTorch eager, ViT-S/16", "onnx", _vs_eager("ort_fp32"), "benchmarks-cpu"),
    Claim("ONNX Runtime int8 (dynamic) vs PyTorch eager, ViT-S/16", "onnx", _vs_eager("ort_int8"), "benchmarks-cpu"),
    Claim("ONNX Runtime int8 (dynamic) vs PyTorch eager, ViT-S/16", "onnx_zen4", _vs_eager("ort_int8"),
          "benchmarks-cpu"),
    Claim("int8 accuracy, 30-minute Fashion-MNIST model, 10k test images", "onnx_zen4", _int8_accuracy, "export"),
    Claim("`Predictor` over 28x28 PNG files vs the model alone (demo model)", "predict", _predictor, "serving"),
    Claim("Lightning's overhead over a bare PyTorch loop", "training",
          lambda d: f"**{d['lightning_overhead_pct']:.1f} %** slower", "benchmarks-cpu"),
    Claim("ViT-S/16 inference on a GPU", "gpu_h200", _gpu, "benchmarks-gpu"),
]


def load(name: str, results: Path = RESULTS) -> dict:
    path = results / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"report: {path} is missing") from None
    if not isinstance(data, dict) or not isinstance(data.get("machine"), dict):
        raise SystemExit(f"report: {path} has no \"machine\" block: a figure without its machine misleads")
    return data


def render(results: Path = RESULTS) -> str:
    """The markdown table (and its footnote) for CLAIMS, from the files under ``results``."""
    rows = ["| result | figure | machine | command | more |", "| --- | --- | --- | --- | --- |"]
    transcribed = False
    for c in CLAIMS:
        d = load(c.file, results)
        try:
            figure = c.figure(d)
        except (KeyError, IndexError, TypeError) as e:
            raise SystemExit(f"report: {results / c.file}.json lacks what '{c.what}' reads ({e})") from None
        mark = ""
        if d["machine"].get("recorded") is False:
            mark, transcribed = " †", True
        command = d.get("command") or c.command
        rows.append(f"| {c.what} | {figure} | {machine_label(d['machine'])}{mark} | `{command}` | "
                    f"[{c.page}](docs/{c.page}.md) |")
    if transcribed:
        rows += ["", "† transcribed once, from the text that first reported it (the run's JSON was not kept); the "
                 "machine as that text describes it: see [docs/results](docs/results/README.md)."]
    rows += ["", "Generated by `python benchmarks/report.py --write` from `docs/results/*.json`; ratios depend on the "
             "machine (MLAS picks its kernels by the ISA), so compare figures from one machine only."]
    return "\n".join(rows)


def readme_table(readme: Path = README) -> str:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"report: {readme} has no {BEGIN} ... {END} markers")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def write(readme: Path = README, results: Path = RESULTS) -> None:
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(f"{head}{BEGIN}\n{render(results)}\n{END}{tail}")


def check(readme: Path = README, results: Path = RESULTS) -> int:
    want, have = render(results), readme_table(readme)
    if want == have:
        return 0
    diff = difflib.unified_diff(have.splitlines(), want.splitlines(), "README.md", "rendered", lineterm="")
    print("\n".join(diff), file=sys.stderr)
    print("report: README.md's results table differs from docs/results/*.json: "
          "run `python benchmarks/report.py --write` (or `make figures`)", file=sys.stderr)
    return 1


def collect(pairs: list[str], results: Path = RESULTS) -> int:
    """Copy result files into ``results``: SOURCE=NAME pairs, or COLLECT's defaults that exist. A file without a
    machine block is refused (exit 1)."""
    todo = dict(p.split("=", 1) for p in pairs) if pairs else {s: n for s, n in COLLECT.items() if (ROOT / s).is_file()}
    status = 0
    for src, name in todo.items():
        path = Path(src) if Path(src).is_absolute() else ROOT / src
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("machine"), dict):
            print(f"report: skipped {src}: no \"machine\" block (a run from before benchmarks/machine.py)",
                  file=sys.stderr)
            status = 1
            continue
        shutil.copyfile(path, results / f"{name}.json")
        print(f"{src} -> {results / name}.json")
    if not todo:
        print("report: nothing to collect (no runs/... result files here)")
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="replace README.md's table")
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md's table differs")
    ap.add_argument("--collect", nargs="*", metavar="SOURCE=NAME", default=None,
                    help="copy result files to docs/results/NAME.json first (default: the runs/... files present)")
    ap.add_argument("--readme", type=Path, default=README)
    ap.add_argument("--results", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    status = collect(a.collect, a.results) if a.collect is not None else 0
    if a.check:
        return check(a.readme, a.results) or status
    if a.write:
        write(a.readme, a.results)
        print(f"wrote the results table into {a.readme}")
    elif a.collect is None:
        print(render(a.results))
    return status


if __name__ == "__main__":
    sys.exit(main())
