"""The Predictor's GPU path: decoded uint8 batches reach the model through pinned host memory and an asynchronous
copy, and the model runs one batch ahead of the rest of the stream, so that the GPU goes from one batch straight to
the next while the CPU decodes, copies and writes results.

    CPU workers (DataLoader)      decode + resize batch k+2
    main thread                   pinned copy + H2D copy of batch k+1 (copy stream) | results of batch k
    inference thread              the model on batch k+1 (compute stream), as soon as batch k is done

A backend takes part when it is on a GPU (``on_gpu``) and has ``stage(images) -> Staged`` and
``run_staged(staged) -> (outputs, model seconds)``: ``TorchBackend`` on CUDA, ``OrtBackend`` on the CUDA or
TensorRT provider (inputs bound on the GPU by I/O binding). On a CPU backend nothing here runs: the Predictor
keeps its CPU loop and its thread trial.

``Throughput`` is what every stream reports (``Predictor.throughput``): images/s, and the model's busy share of the
wall time: on CUDA the device time of the model (CUDA events around it on its stream; for ONNX Runtime, whose runs
return when the GPU is done, the time of its runs), on CPU the time of the model calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Staged:
    """A batch on its way to the model: ``images`` (a CUDA tensor, or the host array when nothing was staged),
    its ``rows``, and ``ready`` (a CUDA event recorded after the copy; None: nothing to wait for)."""

    images: Any
    rows: int
    ready: Any = None


class PinnedStager:
    """uint8 batches -> CUDA tensors: a ring of ``slots`` pinned host buffers (grown to the largest batch, reused),
    one memcpy into the next buffer, and an asynchronous host-to-device copy on a copy stream of its own, which
    overlaps the model's work on the previous batch. A buffer is reused only after its last copy has finished."""

    def __init__(self, device: Any, slots: int = 3) -> None:
        import torch

        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)
        self.buffers: list[Any] = [None] * slots
        self.copied: list[Any] = [None] * slots
        self.count = 0

    def stage(self, images: np.ndarray) -> Staged:
        import torch

        k = self.count % len(self.buffers)
        self.count += 1
        if self.copied[k] is not None:
            self.copied[k].synchronize()
        if self.buffers[k] is None or self.buffers[k].numel() < images.size:
            self.buffers[k] = torch.empty(images.size, dtype=torch.uint8, pin_memory=True)
        host = self.buffers[k][:images.size].view(images.shape)
        host.numpy()[...] = images
        with torch.cuda.stream(self.stream):
            on_device = host.to(self.device, non_blocking=True)
            self.copied[k] = torch.cuda.Event()
            self.copied[k].record(self.stream)
        return Staged(on_device, len(images), self.copied[k])


def pipelined(batches: Iterable[dict[str, Any]], backend: Any
              ) -> Iterator[tuple[dict[str, Any], tuple[dict[str, np.ndarray] | None, float]]]:
    """``(batch, (outputs, model seconds))`` for each decoded batch, in order, with the model one batch ahead: batch
    k+1 is staged and queued on the inference thread before batch k's outputs are handed back. A batch with no
    decodable image gets ``(None, 0.0)``."""
    with ThreadPoolExecutor(1, thread_name_prefix="vitlab-gpu") as pool:
        pending: tuple[dict[str, Any], Future | None] | None = None
        for batch in batches:
            job = pool.submit(backend.run_staged, backend.stage(batch["image"])) \
                if batch["image"] is not None else None
            if pending is not None:
                yield pending[0], _result(pending[1])
            pending = (batch, job)
        if pending is not None:
            yield pending[0], _result(pending[1])


def _result(job: Future | None) -> tuple[dict[str, np.ndarray] | None, float]:
    return job.result() if job is not None else (None, 0.0)


class Throughput:
    """Images/s and the model's busy share of one stream (see the module docstring); ``report()`` is the dict the
    Predictor keeps in ``throughput``."""

    def __init__(self, backend: str, pipelined: bool, clock: Callable[[], float] = time.perf_counter) -> None:
        self.backend, self.pipelined, self.clock = backend, pipelined, clock
        self.start = clock()
        self.first: float | None = None
        self.first_images = self.images = self.batches = 0
        self.model_s = 0.0

    def add(self, images: int, model_s: float) -> None:
        """One batch's results handed out (``images``, errors included) and its model time."""
        if self.first is None:
            self.first, self.first_images = self.clock(), images
        self.images += images
        self.batches += 1
        self.model_s += model_s

    def report(self) -> dict[str, Any]:
        """``images``, ``batches``, ``seconds`` (wall, from the stream's start), ``img_s``, ``steady_img_s``
        (after the first batch: without the workers' start), ``first_batch_s``, ``model_s``, ``busy_share``
        (model_s / seconds, at most 1), ``backend``, ``pipelined``."""
        now = self.clock()
        wall = max(now - self.start, 1e-9)
        after = now - self.first if self.first is not None else 0.0
        steady = (self.images - self.first_images) / after if after > 0 and self.batches > 1 else None
        return {"images": self.images, "batches": self.batches, "seconds": round(wall, 4),
                "img_s": round(self.images / wall, 1), "steady_img_s": None if steady is None else round(steady, 1),
                "first_batch_s": None if self.first is None else round(self.first - self.start, 4),
                "model_s": round(self.model_s, 4), "busy_share": round(min(1.0, self.model_s / wall), 4),
                "backend": self.backend, "pipelined": self.pipelined}
