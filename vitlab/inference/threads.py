"""The model's CPU threads: checking a user's count, torch's count for a block, and the Predictor's thread trial.

On CPU the Predictor's decode workers share the cores with the model's intra-op threads. When decoding takes a
real share of them (a small model, or large photos for a small input), a model on every core makes its threads
wait for the core a worker holds, and ``cores - workers`` threads run the whole pipeline faster (the demo model
over 28x28 PNGs on 2 cores with 1 worker: torch 1.35x, ONNX Runtime 1.24x); for a large model it nearly halves the
pace (vit_small: 0.54-0.58x; ``benchmarks/bench_predict.py``). Which one wins depends on the model, the inputs and
the machine, so ``ThreadTrial`` measures both on the stream's own batches and keeps the faster.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from vitlab.errors import VitlabError

MIN_DECODE_SHARE = 0.15  # the workers' decode CPU time per batch period below which no trial is worth running
CLEAR_LOSS = 0.8  # a first ``fewer`` block below this share of the default's images/s ends the trial at once


def check_threads(threads: int | None) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise VitlabError(f"threads must be a whole number >= 1 (or None for the runtime's default), got {threads!r}")
    return threads


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` for the block (None: unchanged), then restored."""
    import torch

    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class ThreadTrial:
    """Picks, on one stream's first batches, between the model on every core (``default``) and on the cores the
    decode workers leave (``fewer()``, built when first needed: an ONNX model's second session is made only if the
    trial gets that far), by the images/s each gives the whole pipeline.

    Per batch: ``backend()`` says which to run, ``record(images, decode_cpu_seconds)`` reports the batch's images
    and its decode CPU time in the workers once its results are out. After ``warmup`` batches (worker start-up),
    blocks of at least ``block_batches`` batches and ``block_seconds`` run ``default``; if decoding kept the
    workers busy under ``MIN_DECODE_SHARE`` of the time there (CPU time: wall time would count the model's threads
    preempting them), decoding is not what the model competes with and the trial ends on ``default``; otherwise
    a ``fewer`` block follows, and unless it is a clear loss (under ``CLEAR_LOSS`` of the default's images/s: a large
    model whose threads scale well), one more pair (the machine is noisy); the faster in total is kept for the rest
    of the stream. Each block's first batch is not counted (it was decoded ahead under the block before)."""

    def __init__(self, default, fewer: Callable[[], Any], workers: int, warmup: int = 2, block_batches: int = 4,
                 block_seconds: float = 0.1) -> None:
        self.options, self._fewer, self.workers = [default, None], fewer, workers
        self.warmup, self.block_batches, self.block_seconds = warmup, block_batches, block_seconds
        self.schedule = [0, 1, 0, 1]  # the blocks still to run (index into options); empty: decided
        self.choice = 0
        self.decode_share: float | None = None  # decode CPU seconds over the workers' seconds, first block
        self.rates: list[float] | None = None  # images/s of (default, fewer), when both ran
        self.totals = [[0, 0.0], [0, 0.0]]  # per option: images, seconds
        self._block: list[float] = [0, 0.0, 0.0, 0]  # images, seconds, decode seconds, batches
        self._last = time.perf_counter()

    @property
    def decided(self) -> bool:
        return not self.schedule

    def backend(self):
        option = self.schedule[0] if self.schedule else self.choice
        if self.options[option] is None:
            self.options[option] = self._fewer()
        return self.options[option]

    def report(self) -> dict[str, Any]:
        """What the trial saw and kept: ``decode_share``, ``img_s`` (default, fewer; None when it stopped at the
        first block) and ``threads`` (the kept backend's count, None: the runtime's default)."""
        return {"decode_share": None if self.decode_share is None else round(self.decode_share, 3),
                "img_s": self.rates and [round(r, 1) for r in self.rates], "threads": self.backend().threads}

    def record(self, images: int, decode_cpu_seconds: float) -> None:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        if self.warmup > 0:
            self.warmup -= 1
            return
        if not self.schedule:
            return
        block = self._block
        block[3] += 1
        if block[3] > 1:  # the first batch of a block was decoded ahead, under the block before
            block[0] += images
            block[1] += seconds
            block[2] += decode_cpu_seconds
        if block[3] <= self.block_batches or block[1] < self.block_seconds:
            return
        option = self.schedule.pop(0)
        self.totals[option][0] += int(block[0])
        self.totals[option][1] += block[1]
        self._block = [0, 0.0, 0.0, 0]
        if len(self.schedule) == 3:
            self.decode_share = block[2] / (self.workers * block[1]) if block[1] > 0 else 0.0
            if self.decode_share < MIN_DECODE_SHARE:
                self.schedule = []  # decoding is a small share: the model keeps every core
            return
        if len(self.schedule) == 1:
            return  # the second default block: its fewer block follows
        rates = [n / s if s > 0 else 0.0 for n, s in self.totals]
        if len(self.schedule) == 2 and rates[1] >= CLEAR_LOSS * rates[0]:
            return  # not a clear loss: the second pair of blocks decides
        self.schedule, self.rates = [], rates
        self.choice = int(rates[1] > rates[0])
        if self.choice == 0:
            self.options[1] = None  # not kept: its memory (a second ONNX Runtime session) goes back
