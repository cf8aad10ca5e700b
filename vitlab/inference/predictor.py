"""Predictor: batch image inference over checkpoints and ONNX files with one API and the same answers.

    predictor = vitlab.Predictor.load("runs/demo/checkpoints/last.ckpt")   # or "model.onnx"
    results = predictor.predict("photos/", batch_size=64, topk=3)
    for r in predictor.stream(paths):                                       # bounded memory, input order
        ...

Decoding and resizing run in DataLoader workers, overlapped with inference; each batch holds what decoded
successfully and every bad input gets one result with ``error`` set, in input order. On a GPU the model also runs
one batch ahead, fed through pinned memory (``vitlab.inference.gpu``); ``predictor.throughput`` reports images/s
and the model's busy share of every stream.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from vitlab_edge.imaging import draft_request
from vitlab_edge.imaging import to_hwc_uint8 as read_any
from vitlab_edge.model import describe_input
from vitlab_edge.progress import Progress

from vitlab.errors import VitlabError
from vitlab.inference.backends import Backend, load_backend
from vitlab.inference.gpu import Throughput, pipelined
from vitlab.inference.io import DEFAULT_MAX_PIXELS, ImageReadError
from vitlab.inference.results import DetectionPrediction, EmbeddingPrediction, Prediction
from vitlab.inference.threads import ThreadTrial, cpu_cores
from vitlab.preprocess import PreprocessCfg
from vitlab.tasks.spec import get_task

Result = Prediction | DetectionPrediction | EmbeddingPrediction
MIN_TRIAL_BATCHES = 40  # a stream of fewer batches keeps the model's default threads (no thread trial)


def to_hwc_uint8(item: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None
                 ) -> np.ndarray:
    """What the edge kit reads (path, PIL image, HW/HWC uint8 array), plus torch tensors: CHW or HWC, uint8 or
    float in 0..1. ``draft``: JPEG files may decode at reduced scale down to that size (``draft_request``)."""
    if hasattr(item, "detach"):  # a torch tensor: CHW when the first axis looks like channels
        import torch

        t = item.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)
        if t.is_floating_point():
            t = (t * (255.0 if float(t.max()) <= 1.0 else 1.0)).round().clamp(0, 255)
        item = t.to(torch.uint8).numpy()
    return read_any(item, max_pixels, draft)


class DecodeDataset:
    """Inputs -> ``(index, source, CHW uint8 | None, error | None, decode seconds, decoded (h, w) | None, decode CPU
    seconds)``; runs in DataLoader workers. The decoded size (EXIF applied) is what detection boxes map back to; the
    CPU seconds (the worker thread's own, without the time other processes held its core) feed the thread trial."""

    def __init__(self, items: list[Any], preprocess: PreprocessCfg,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, indices: Sequence[int] | None = None) -> None:
        self.items, self.preprocess, self.max_pixels, self.indices = items, preprocess, max_pixels, indices
        self.draft = draft_request(preprocess.image_size, preprocess.resize, preprocess.crop_pct)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, str, np.ndarray | None, str | None, float,
                                           tuple[int, int] | None, float]:
        t, cpu = time.perf_counter(), time.thread_time()
        item, chw, hw, error = self.items[i], None, None, None
        index = i if self.indices is None else int(self.indices[i])
        source = describe_input(item, index)
        try:
            hwc = to_hwc_uint8(item, self.max_pixels, self.draft)
            chw, hw = self.preprocess.prepare(hwc), (int(hwc.shape[0]), int(hwc.shape[1]))
        except ImageReadError as e:
            error = e.reason
        except Exception as e:  # noqa: BLE001 - never stop the batch: anything unexpected becomes that input's error
            error = f"{type(e).__name__}: {e}"
        return index, source, chw, error, time.perf_counter() - t, hw, time.thread_time() - cpu


def collate_decoded(samples: list) -> dict[str, Any]:
    """Decoded samples -> ``{"index", "source", "image" (uint8 [M, C, H, W] of the good ones, or None), "ok",
    "error", "decode_s", "orig_hw", "decode_cpu_s"}``; ``ok[k]`` says whether sample k is in ``image``,
    ``orig_hw[k]`` is its decoded ``(h, w)`` (None for an error), ``decode_cpu_s`` the batch's decode CPU seconds."""
    good = [s[2] for s in samples if s[2] is not None]
    return {"index": [s[0] for s in samples], "source": [s[1] for s in samples],
            "image": np.stack(good) if good else None, "ok": [s[2] is not None for s in samples],
            "error": [s[3] for s in samples], "decode_s": [s[4] for s in samples],
            "orig_hw": [s[5] for s in samples], "decode_cpu_s": sum(s[6] for s in samples)}


def batch_predictions(batch: dict[str, Any], infer: Callable[[np.ndarray], dict[str, np.ndarray]],
                      preprocess: PreprocessCfg, topk: int) -> list[Result]:
    """One result per sample of a decoded batch: ``infer`` (uint8 ``[M, C, H, W]`` -> the task's named outputs, see
    ``Backend``) runs, timed, on the good samples only, and each gets its row in order, decoded by the edge kit's
    record decoder of ``preprocess.task`` into that task's result type (``TaskSpec.result``)."""
    return batch_records(batch, *run_batch(batch, infer), preprocess, topk)


def run_batch(batch: dict[str, Any], infer: Callable[[np.ndarray], dict[str, np.ndarray]]
              ) -> tuple[dict[str, np.ndarray] | None, float]:
    """``(outputs, seconds)`` of ``infer`` on the batch's good samples; ``(None, 0.0)`` when there are none."""
    if batch["image"] is None:
        return None, 0.0
    t = time.perf_counter()
    outputs = infer(batch["image"])
    return outputs, time.perf_counter() - t


def batch_records(batch: dict[str, Any], outputs: dict[str, np.ndarray] | None, infer_s: float,
                  preprocess: PreprocessCfg, topk: int) -> list[Result]:
    """The results of a decoded batch from the model's ``outputs`` on its good samples (see ``batch_predictions``);
    ``infer_s``: the model's seconds for the batch (``infer_ms`` is its share per image)."""
    from vitlab_edge.records import RowContext
    from vitlab_edge.tasks import decoder_for

    decoder, result = decoder_for(preprocess.task), get_task(preprocess.task).load("result")
    out, row = [], 0
    infer_ms = round(infer_s * 1000 / max(1, sum(batch["ok"])), 3)
    labels = list(preprocess.labels)
    for index, source, ok, err, dec, hw in zip(batch["index"], batch["source"], batch["ok"], batch["error"],
                                              batch["decode_s"], batch["orig_hw"]):
        pred = result(index, source, error=err, decode_ms=round(dec * 1000, 3))
        if ok:
            ctx = RowContext(labels, topk, hw, preprocess.image_size)
            for key, value in decoder.decode(outputs, row, ctx).items():
                setattr(pred, key, value)
            pred.infer_ms = infer_ms
            row += 1
        out.append(pred)
    return out


def decode_loader(items: list[Any], preprocess: PreprocessCfg, batch_size: int, num_workers: int | None = None,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS, gpu: bool = False, indices: Sequence[int] | None = None):
    """A DataLoader of decoded batches (see ``collate_decoded``); decoding runs in ``num_workers`` processes
    (default ``default_workers(gpu)``: one per spare core, at most 4; at most 16 for a model on a GPU)."""
    from torch.utils.data import DataLoader

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    workers = default_workers(gpu) if num_workers is None else num_workers
    return DataLoader(DecodeDataset(items, preprocess, max_pixels, indices), batch_size=batch_size, num_workers=workers,
                      collate_fn=collate_decoded, prefetch_factor=2 if workers else None, persistent_workers=False)


class Predictor:
    """Batch inference with one backend (``TorchBackend`` or ``OrtBackend``)."""

    def __init__(self, backend: Backend, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.backend, self.max_pixels = backend, max_pixels
        self.thread_trial: dict[str, Any] | None = None  # what the last stream's thread trial saw and kept
        self.throughput: dict[str, Any] | None = None  # the last stream's images/s and busy share (gpu.Throughput)
        if get_task(self.task).result is None:
            raise VitlabError(f"no batch inference for {self.task} models")

    @property
    def task(self) -> str:
        return self.backend.preprocess.task

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None, providers: list[str] | None = None,
             max_pixels: int | None = DEFAULT_MAX_PIXELS, threads: int | None = None, task: str | None = None,
             pretrained: bool | str | None = None) -> Predictor:
        """A Predictor for a Lightning checkpoint (torch on ``device``), an exported ``.onnx`` (``providers``) or a
        model name (a vitlab variant or timm ViT: embeddings; ``pretrained`` as for ``vitlab.create_backbone``).

        ``task``: what to answer (default: the checkpoint's own task; an MAE checkpoint's embeddings).
        ``task="embedding"`` gives L2-normalised pooled features from any checkpoint with a ViT backbone. A
        checkpoint that answers no images (a diffusion model) is refused in one line naming what to use.

        ``threads``: the model's intra-op threads on CPU. Default: chosen per stream, because the decode workers
        share the cores with them: one per core, or ``cores - num_workers`` when a trial on the stream's first
        batches measures that faster (decoding sets the pace: a small model, or large files for a small input;
        ``vitlab.inference.threads.ThreadTrial``); ``thread_trial`` tells what the last stream's trial saw and
        kept. A number fixes the count (no trial)."""
        return cls(load_backend(path, device=device, providers=providers, threads=threads, task=task,
                                pretrained=pretrained), max_pixels)

    @classmethod
    def from_model(cls, model: Any, task: str | None = None, device: str | None = None,
                   threads: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Predictor:
        """A Predictor over an in-memory model: a trained task (``vitlab.load``), a vitlab model (classifier,
        detector) or, with ``task="embedding"``, anything with a ViT backbone."""
        from vitlab.inference.backends import TorchBackend
        from vitlab.models.embed import create_embedder
        from vitlab.tasks.base import VitlabTask

        if isinstance(model, VitlabTask):
            return cls(TorchBackend.from_task(model, device, threads, task), max_pixels)
        if task is not None and get_task(task).name == "embedding":
            model = create_embedder(model)
        elif task is not None and get_task(task).name != getattr(getattr(model, "preprocess", None), "task", None):
            raise VitlabError(f"a {type(model).__name__} does not answer {task}")
        return cls(TorchBackend(model, device, threads=threads), max_pixels)

    @property
    def preprocess(self) -> PreprocessCfg:
        return self.backend.preprocess

    @property
    def labels(self) -> tuple[str, ...]:
        return self.backend.preprocess.labels

    def predict(self, source: Any, batch_size: int = 32, num_workers: int | None = None, topk: int = 5,
                overlays: str | os.PathLike | None = None, explain: bool = False,
                progress: bool | None = False) -> list[Result]:
        """Every input's result (``Prediction``; ``DetectionPrediction`` for a detector, ``EmbeddingPrediction`` for
        embeddings), in input order (see ``stream`` for
        bounded memory and ``progress``)."""
        return list(self.stream(source, batch_size, num_workers, topk, overlays, explain, progress))

    def stream(self, source: Any, batch_size: int = 32, num_workers: int | None = None, topk: int = 5,
               overlays: str | os.PathLike | None = None, explain: bool = False,
               progress: bool | None = False, indices: Sequence[int] | None = None) -> Iterator[Result]:
        """Predictions one by one in input order; decoding runs ahead in ``num_workers`` processes (default: one
        per spare core, at most 4; 16 for a model on a GPU), holding at most a few batches. On a GPU (a torch
        backend on CUDA, ONNX Runtime on CUDA or TensorRT) the model runs one batch ahead, fed through pinned
        memory (``vitlab.inference.gpu``; not with ``explain``). ``throughput`` tells the last stream's images/s
        and the model's busy share (any device). ``overlays``: a folder for one PNG per image
        (the model's input with its label, or its boxes of score >= 0.3 for a detector; with ``explain``, the
        attention rollout over it, for classifiers). ``progress=True``:
        a progress bar (count, rate, ETA) on stderr when it is a terminal, else one summary line at the end;
        ``None``: the bar on a terminal only (what ``vitlab predict`` uses). ``indices``: the ``index`` each input's
        result (and overlay file name) carries, default 0, 1, ...: a resumed run numbers its inputs as the whole
        run does."""
        from vitlab_edge.sources import as_inputs

        if explain and not hasattr(self.backend, "attention_maps"):
            raise VitlabError("explain needs the checkpoint: an ONNX graph's fused attention keeps no weights to "
                              "roll out; load the .ckpt instead")
        out = Path(overlays) if overlays is not None else None
        if out is not None and get_task(self.task).overlay is None:
            raise VitlabError(f"overlays draw labels or boxes; a {self.task} model has nothing to draw")
        if explain and out is None:
            raise VitlabError("explain writes overlays: pass overlays=FOLDER (--overlays DIR)")
        if explain and not get_task(self.task).explain:
            raise VitlabError(f"explain (attention rollout) is for classification models, not "
                              f"{self.task}; use --overlays alone")
        gpu = bool(getattr(self.backend, "on_gpu", False)) and hasattr(self.backend, "run_staged") and not explain
        loader = decode_loader(as_inputs(source), self.preprocess, batch_size, num_workers, self.max_pixels, gpu,
                               indices)
        trial = None if gpu else self._thread_trial(loader.num_workers, len(loader))
        self.thread_trial = self.throughput = None
        meter = Throughput(getattr(self.backend, "name", type(self.backend).__name__), gpu)
        batches = pipelined(loader, self.backend) if gpu else ((b, None) for b in loader)
        with Progress(len(loader.dataset), "predict", progress=progress) as bar:
            for batch, ran in batches:
                backend = trial.backend() if trial else self.backend
                ran = ran or run_batch(batch, backend)
                preds = self._run(batch, topk, out, explain, backend, ran)
                meter.add(len(preds), ran[1])
                self.throughput = meter.report()
                bar.update(len(preds))
                yield from preds
                if trial and not trial.decided:
                    trial.record(len(preds), batch["decode_cpu_s"])
                    if trial.decided:
                        self.thread_trial = trial.report()

    def explain(self, source: Any, out_dir: str | os.PathLike, batch_size: int = 32, topk: int = 5,
                num_workers: int | None = None) -> list[Prediction]:
        """Predictions plus attention-rollout overlays (PNG) in ``out_dir``, one per image (``overlay`` field)."""
        return self.predict(source, batch_size, num_workers, topk, overlays=out_dir, explain=True)

    def _thread_trial(self, workers: int, batches: int) -> ThreadTrial | None:
        """A ``ThreadTrial`` when the model runs on CPU at the runtime's default threads (None: the user's count is
        kept) beside decode workers, over a stream long enough to gain from it. Its ``cores - workers`` backend is
        the stream's own: built if the trial gets that far, let go by the trial if it loses."""
        fewer = cpu_cores() - workers
        if (workers < 1 or fewer < 1 or batches < MIN_TRIAL_BATCHES or not hasattr(self.backend, "with_threads")
                or self.backend.threads is not None or not self.backend.on_cpu):
            return None
        return ThreadTrial(self.backend, lambda: self.backend.with_threads(fewer), workers)

    def _run(self, batch: dict[str, Any], topk: int, overlays: Path | None, explain: bool,
             backend: Backend, ran: tuple[dict[str, np.ndarray] | None, float]) -> list[Result]:
        preds = batch_records(batch, *ran, self.preprocess, topk)
        if overlays is not None and batch["image"] is not None:
            maps = backend.attention_maps(batch["image"]) if explain else None
            good = [(p, hw) for p, hw in zip(preds, batch["orig_hw"]) if p.error is None]
            draw = get_task(self.task).load("overlay")
            for k, ((pred, hw), image) in enumerate(zip(good, batch["image"])):
                name = f"{pred.index:06d}_{Path(pred.source).stem if not pred.source.startswith('<') else 'input'}.png"
                pred.overlay = str(draw(pred, image, hw, list(self.labels), overlays / name,
                                        None if maps is None else maps[k]))
        return preds


def default_workers(gpu: bool = False) -> int:
    """Decode workers: one per core but one, at most 4 beside a model on the CPU (its threads need the rest), at
    most 16 beside a model on a GPU (decoding is then what sets the pace)."""
    return max(0, min(16 if gpu else 4, (os.cpu_count() or 1) - 1))
