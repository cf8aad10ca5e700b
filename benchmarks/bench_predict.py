"""Predictor throughput and memory on this machine.

1. Over a folder of >= 2,000 JPEGs of mixed sizes cut from real photographs (scikit-image's bundled photos), the
   Predictor's images/s (decode + resize in worker processes, overlapped with inference) against the model-only
   images/s on already-decoded batches of the same size, for the checkpoint (torch) and ONNX backends, measured
   side by side in rotating rounds. Model: vit_small_patch16_224 (random weights: speed does not depend on them;
   ``--vit-images`` of the photos in batches of ``--vit-batch``); the demo model is reported too, where decoding,
   not the model, sets the pace, and the demo model once more over 10,000 Fashion-MNIST test items saved as 28x28
   PNGs (``--png-images``; inputs at the model's own size: decoding costs least). Variants: the Predictor's
   defaults (``torch``, ``ort``: ONNX Runtime's threads do not spin; on streams of >= 40 batches a trial picks the
   model's threads) and both runtimes at fixed counts, no trial: one thread per core (the defaults before the
   trial) and ``cores - workers``; each is divided by its runtime's model-only rate at its fastest settings.
2. ``stream`` over 20,000 image files: the main process's RSS after 2,000, 10,000 and 20,000 results (the thread
   trial's second session, if it makes one, is in place by 10,000).
3. JPEG draft decoding (``vitlab_edge.imaging.draft_request``: Pillow decodes at 1/2, 1/4 or 1/8 scale in the DCT
   domain, keeping >= DRAFT_MARGIN (4) source pixels per model pixel, before the exact resize) against the full
   decode, for the demo model's 28x28 input: decode + resize images/s of one process, the mean / max |difference|
   of the model inputs, and the top-1 agreement of a classifier on the photos and on Fashion-MNIST test items saved
   as JPEGs of 84-448 px (with its accuracy both ways). ``--classifier CKPT`` (e.g. the demo's) gives a trained
   model; without it a random-initialised one. Also, on those sets, 2,000 of the 28x28 PNGs and ``--camera-images``
   12 MP JPEGs with EXIF blocks (``camera_jpegs``; the draft comparison too), the full decode
   (``read_image``: EXIF orientation applied in place) against the same decode with the orientation applied on a
   copy (``orientation_on_a_copy``, the path before 2026-12-01): images/s of both and ``in_place_speedup``; the
   inputs must be identical.
Usage: ``python benchmarks/bench_predict.py [--images 2000] [--stream 20000] [--rounds 3] [--classifier CKPT]
[--out runs/bench/predict.json]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from machine import machine_info, run_info  # noqa: E402  (benchmarks/machine.py)
from vitlab_edge.imaging import draft_request  # noqa: E402

import vitlab  # noqa: E402
from vitlab._fs import atomic_write, atomic_write_json  # noqa: E402
from vitlab.data.datasets import fashion_mnist_arrays, make_photo_folder, skimage_photos  # noqa: E402
from vitlab.inference import Predictor  # noqa: E402
from vitlab.inference.backends import OrtBackend, TorchBackend  # noqa: E402
from vitlab.inference.io import read_image  # noqa: E402
from vitlab.inference.threads import cpu_cores  # noqa: E402
from vitlab.onnx.graph import export_graph, model_metadata, set_metadata  # noqa: E402

CACHE = Path("runs/bench")
DECODE_ROUNDS = 4  # passes of each decoding over a set, interleaved in rotating order (the machine is noisy)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def onnx_backend(model: torch.nn.Module, path: Path) -> OrtBackend:
    graph = export_graph(model)
    set_metadata(graph, model_metadata(model, path.stem))
    onnx.save(graph, path)
    return OrtBackend(path, providers=["CPUExecutionProvider"])


def predictor_variants(model: torch.nn.Module, path: Path, workers: int) -> dict[str, tuple[Predictor, object]]:
    """The Predictor's settings to compare, each with the model-only reference it is divided by: the same runtime
    at its own fastest settings (torch: its default threads; ONNX Runtime: its default session, spinning on). The
    defaults (``torch``, ``ort``) run the Predictor's thread trial (``thread_trial``: what each round's saw, kept)."""
    from vitlab_edge import EdgeModel

    ort_backend = onnx_backend(model, path)
    ort_ref = EdgeModel(path, providers=["CPUExecutionProvider"]).run  # ONNX Runtime's default session: spinning
    torch_ref = TorchBackend(model, "cpu")
    variants = {"torch": (Predictor(torch_ref), torch_ref), "ort": (Predictor(ort_backend), ort_ref)}
    cores = cpu_cores()
    for n in sorted({cores, cores - workers}, reverse=True):  # fixed counts: no trial (every core: the old default)
        if n >= 1:
            variants[f"torch {n} thread(s)"] = (Predictor(TorchBackend(model, "cpu", threads=n)), torch_ref)
            variants[f"ort {n} thread(s)"] = (Predictor(OrtBackend(path, ["CPUExecutionProvider"], n)), ort_ref)
    return variants


def throughput(variants: dict[str, tuple[Predictor, object]], files: list[str], batch: int, workers: int,
               rounds: int, min_seconds: float = 1.0) -> dict[str, dict]:
    """Each variant's Predictor over the files and its model-only reference on pre-decoded batches of the same
    size (for at least ``min_seconds``), back to back, both warmed up, in ``rounds`` rounds whose order rotates (the
    machine is noisy): images/s and the ratio, medians with [min, max] over the rounds (the ratio per round)."""
    pre = next(iter(variants.values()))[0].preprocess
    decoded = np.stack([pre.prepare(read_image(f)) for f in files[: batch * 4]])
    seen: dict[str, dict[str, list]] = {name: {"model": [], "predictor": [], "ratio": [], "trial": []}
                                        for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            predictor, reference = variants[name]
            reference(decoded[:batch])  # warm-up, both (a session's first run sets up its memory plan)
            predictor.backend(decoded[:batch])
            done, t = 0, time.perf_counter()
            while done == 0 or time.perf_counter() - t < min_seconds:
                for i in range(0, len(decoded), batch):
                    reference(decoded[i:i + batch])
                done += len(decoded)
            model_rate = done / (time.perf_counter() - t)
            t = time.perf_counter()
            n = sum(1 for p in predictor.stream(files, batch_size=batch, num_workers=workers) if p.error is None)
            pred_rate = n / (time.perf_counter() - t)
            for key, value in (("model", model_rate), ("predictor", pred_rate), ("ratio", pred_rate / model_rate)):
                seen[name][key].append(value)
            seen[name]["trial"].append(predictor.thread_trial)

    def spread(values: list[float], digits: int) -> list[float]:
        return [round(float(np.median(values)), digits), round(min(values), digits), round(max(values), digits)]

    return {name: {"images": len(files), "batch": batch, "workers": workers, "rounds": rounds,
                   "backend": variants[name][0].backend.name,
                   "model_only_img_s": spread(v["model"], 1), "predictor_img_s": spread(v["predictor"], 1),
                   "ratio": spread(v["ratio"], 3), "thread_trial": v["trial"]} for name, v in seen.items()}


def garment_pngs(folder: Path, n: int) -> list[str]:
    """Fashion-MNIST test items as 28x28 PNG files (cycled past 10,000): the demo model's native input size."""
    from PIL import Image

    images = fashion_mnist_arrays("test")[0]
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        f = folder / f"{i:05d}.png"
        if not f.exists():
            Image.fromarray(images[i % len(images)]).save(f)
        files.append(str(f))
    return files


def stream_memory(predictor: Predictor, files: list[str], batch: int, workers: int) -> dict:
    marks, t = {}, time.perf_counter()
    for k, _ in enumerate(predictor.stream(files, batch_size=batch, num_workers=workers), 1):
        if k in (2000, len(files) // 2, len(files)):
            marks[k] = round(rss_mb(), 1)
    return {"inputs": len(files), "rss_mb_at": marks, "seconds": round(time.perf_counter() - t, 1)}


def garment_jpegs(folder: Path, n: int) -> tuple[list[str], np.ndarray]:
    """The first ``n`` Fashion-MNIST test items upscaled (bicubic) to 84-448 px and saved as JPEGs, with labels."""
    from PIL import Image

    images, labels = fashion_mnist_arrays("test")
    folder.mkdir(parents=True, exist_ok=True)
    rng, files = np.random.default_rng(0), []
    for i in range(n):
        side, quality = int(rng.integers(84, 449)), int(rng.integers(75, 96))
        f = folder / f"{i:05d}.jpg"
        if not f.exists():
            Image.fromarray(images[i]).resize((side, side), Image.Resampling.BICUBIC).save(f, quality=quality)
        files.append(str(f))
    return files, labels[:n].astype(np.int64)


def camera_jpegs(folder: Path, n: int) -> list[str]:
    """``n`` 4000x3000 JPEGs with an EXIF block, as cameras write them (orientation 1, or 6 on every fourth: stored
    on its side, shown upright), upscaled from scikit-image's photos: the size of users' own photos."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photos, files = skimage_photos(), []
    for i in range(n):
        f = folder / f"camera_{i:03d}.jpg"
        if not f.exists():
            exif = Image.Exif()
            exif[0x010F], exif[0x0112] = "vitlab bench", 6 if i % 4 == 3 else 1  # Make, Orientation
            image = Image.fromarray(photos[i % len(photos)]).convert("RGB")
            image = image.resize((4000, 3000), Image.Resampling.BICUBIC)
            block = exif.tobytes()
            atomic_write(f, lambda p, im=image, e=block: im.save(p, format="JPEG", quality=90, exif=e))
        files.append(str(f))
    return files


@contextlib.contextmanager
def orientation_on_a_copy() -> Iterator[None]:
    """``read_image`` as it was before 2026-12-01 for the block: EXIF orientation applied on a copy (Pillow's
    ``exif_transpose`` default, what a caller's in-memory image still gets), a copy of the whole image even when
    nothing turns; everything else as it is now."""
    from vitlab_edge import imaging

    upright = imaging._upright
    imaging._upright = lambda img, in_place=False: upright(img, in_place=False)
    try:
        yield
    finally:
        imaging._upright = upright


def decode_compare(model: torch.nn.Module, sets: dict[str, tuple[list[str], np.ndarray | None]]) -> list[dict]:
    """Full vs draft JPEG decoding into ``model``'s input: speed (interleaved rounds), input difference, top-1; and
    the full decode against itself with ``orientation_on_a_copy``: speed, and the inputs identical."""
    pre = model.preprocess
    draft = draft_request(pre.image_size, pre.resize, pre.crop_pct)
    decoders = {"full": read_image, "draft": lambda f: read_image(f, draft=draft), "copy": read_image}
    rows = []
    for name, (files, labels) in sets.items():
        inputs, seconds = {}, {mode: 0.0 for mode in decoders}
        modes = list(decoders)
        for mode in [m for r in range(DECODE_ROUNDS) for m in modes[r % len(modes):] + modes[:r % len(modes)]]:
            with orientation_on_a_copy() if mode == "copy" else contextlib.nullcontext():
                t = time.perf_counter()
                inputs[mode] = np.stack([pre.prepare(decoders[mode](f)) for f in files])
                seconds[mode] += time.perf_counter() - t
        assert np.array_equal(inputs.pop("copy"), inputs["full"]), f"{name}: in-place orientation changed pixels"
        diff = np.abs(inputs["full"].astype(np.int16) - inputs["draft"].astype(np.int16))
        with torch.inference_mode():
            top1 = {m: torch.cat([model(torch.from_numpy(x[i:i + 256])).argmax(1)
                                  for i in range(0, len(x), 256)]).numpy() for m, x in inputs.items()}
        row = {"set": name, "images": len(files), "draft_request": list(draft),
               "full_img_s": round(DECODE_ROUNDS * len(files) / seconds["full"], 1),
               "draft_img_s": round(DECODE_ROUNDS * len(files) / seconds["draft"], 1),
               "speedup": round(seconds["full"] / seconds["draft"], 2),
               "copy_img_s": round(DECODE_ROUNDS * len(files) / seconds["copy"], 1),
               "in_place_speedup": round(seconds["copy"] / seconds["full"], 2),
               "input_mean_abs_diff": round(float(diff.mean()), 3), "input_max_abs_diff": int(diff.max()),
               "top1_agreement": round(float((top1["full"] == top1["draft"]).mean()), 4)}
        if labels is not None:
            row.update({f"accuracy_{m}": round(float((top1[m] == labels).mean()), 4) for m in top1})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--stream", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the throughput comparison (order rotates)")
    ap.add_argument("--vit-images", type=int, default=320, help="photos for vit_small (~15 img/s here)")
    ap.add_argument("--vit-batch", type=int, default=8, help="vit_small's batch: 320 / 8 = 40 batches, a stream "
                    "long enough for the Predictor's thread trial")
    ap.add_argument("--png-images", type=int, default=10000, help="28x28 PNGs for the demo model (~5k img/s)")
    ap.add_argument("--camera-images", type=int, default=24, help="12 MP JPEGs for the decode comparison")
    ap.add_argument("--classifier", help="a 28x28 Fashion-MNIST checkpoint for the decode comparison (default: random)")
    ap.add_argument("--out", default=str(CACHE / "predict.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    files = make_photo_folder(CACHE / "photos", n=args.images)
    pngs = garment_pngs(CACHE / "stream_files", max(args.stream, args.png_images))
    report = {"machine": machine_info(), **run_info(), "torch_threads": torch.get_num_threads(), "throughput": []}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("vit_small_patch16_224", "photos", files[:args.vit_images], args.vit_batch),
                ("vitlab_fmnist", "photos", files, args.batch),
                ("vitlab_fmnist", "28x28 PNGs", pngs[:args.png_images], args.batch)]  # inputs at the model's size
        for name, inputs, paths, batch in runs:
            model = vitlab.create_model(name, num_classes=10).eval()
            variants = predictor_variants(model, Path(tmp) / f"{name}.onnx", args.workers)
            for variant, row in throughput(variants, paths, batch, args.workers, args.rounds).items():
                row = {"model": name, "inputs": inputs, "variant": variant, **row}
                report["throughput"].append(row)
                print(json.dumps(row), flush=True)
        demo = vitlab.create_model("vitlab_fmnist", num_classes=10).eval()
        report["stream"] = stream_memory(Predictor(onnx_backend(demo, Path(tmp) / "demo.onnx")), pngs[:args.stream],
                                         256, args.workers)
    print(json.dumps(report["stream"]))
    demo = (vitlab.load(args.classifier).model if args.classifier
            else vitlab.create_model("vitlab_fmnist", num_classes=10)).eval()
    report["draft_decoding"] = decode_compare(demo, {
        "photos": (files, None), "garments": garment_jpegs(CACHE / "garments", 2000),
        "28x28 PNGs": (pngs[:2000], fashion_mnist_arrays("test")[1][:2000].astype(np.int64)),  # no draft: PNG
        "camera JPEGs": (camera_jpegs(CACHE / "camera", args.camera_images), None)})
    atomic_write_json(args.out, report)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
