"""ThreadTuner: one or all of torch's CPU threads, whichever trains faster right now.

On an idle 2-core machine two threads win (the demo ViT: 69 vs 90 ms a step, the demo denoiser 124 vs 152 ms).
Beside another job, torch's OpenMP threads spin-wait on each other and two threads are 3-14x slower than one
(measured on this project's 2-core machines, benchmarks/probe_train_speed.py, issue 26). The tuner keeps all
threads while the step time stays near the best it has seen (nothing to pay on an idle machine); when the median of
the last ``window`` steps is ``slow`` times that best, it tries one thread for ``trial`` steps and keeps the faster.
At one thread it tries all threads again every ``period`` steps, since the other job may have ended.

The CLI adds ThreadTuner itself (``vitlab.cli``); a config that lists its own keeps its settings.

TimeBudget (opt-in: a config lists it under ``trainer.callbacks``): the LR schedule ends inside the trainer's
``max_time``. Lightning's cap stops a run wherever it falls, mid-cosine on a slower machine. Measured on the
classification demo cut to a 3-minute cap, annealing inside it gained 0.6 pp; the diffusion and detection configs
did no better (EMA weights already average the late steps), so they do not list it (docs/cli.md).
"""

from __future__ import annotations

import logging
import statistics
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_info

from vitlab.tasks.optim import WarmupCosine

log = logging.getLogger(__name__)


class ThreadTuner(L.Callback):
    """All threads while steps stay fast; one thread for ``trial`` steps when the median of the last ``window`` is
    ``slow`` times the best seen, kept if ``margin`` faster; all threads tried again every ``period`` steps.
    ``trials``: one ``(step, threads before, threads tried, ms a step before, ms tried, kept)`` per trial."""

    def __init__(self, window: int = 10, slow: float = 1.3, trial: int = 6, period: int = 200,
                 margin: float = 0.1) -> None:
        self.window, self.slow, self.trial, self.period, self.margin = window, slow, trial, period, margin
        self.trials: list[tuple[int, int, int, float, float, bool]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.all = self.threads = torch.get_num_threads()
        self.times: list[float] = []
        self.last: float | None = None
        self.n = self.since = self.trial_start = 0
        self.best: dict[int, float] = {}
        self.trial_from: int | None = None
        self.before = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last, self.n = now, self.n + 1
        if self.all < 2:
            return
        if self.trial_from is not None:
            if self.n - self.trial_start > self.trial:
                self._end_trial()
            return
        if self.n - self.since <= self.window:
            return
        recent = statistics.median(self.times[-self.window:])
        best = self.best[self.threads] = min(self.best.get(self.threads, recent), recent)
        if (self.threads > 1 and recent > self.slow * best) or \
                (self.threads == 1 and self.n - self.since >= self.period):
            self.trial_from, self.trial_start, self.before = self.threads, self.n, recent
            torch.set_num_threads(1 if self.threads > 1 else self.all)

    def _end_trial(self) -> None:
        tried = statistics.median(self.times[-self.trial + 1:])  # the step that switched left out
        keep = tried < self.before * (1 - self.margin)
        self.trials.append((self.n, self.trial_from, torch.get_num_threads(), round(1000 * self.before, 1),
                            round(1000 * tried, 1), keep))
        if keep:
            log.info("ThreadTuner: %d -> %d threads (%.0f -> %.0f ms a step)", self.trial_from,
                     torch.get_num_threads(), 1000 * self.before, 1000 * tried)
            self.threads = torch.get_num_threads()
            self.best[self.threads] = min(self.best.get(self.threads, tried), tried)
        torch.set_num_threads(self.threads)
        self.trial_from, self.since = None, self.n

    def on_train_end(self, trainer, pl_module) -> None:
        torch.set_num_threads(self.all)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if hasattr(self, "all"):
            torch.set_num_threads(self.all)


class TimeBudget(L.Callback):
    """Ends the warmup-cosine schedule (``vitlab.tasks.optim.WarmupCosine``) at the last step that fits the
    trainer's ``max_time``, then stops the run there, when the planned schedule would not end before the cap.

    Every ``every`` steps, from ``start`` steps into this process on, it measures the run's wall-clock rate
    (validation and checkpointing included) and sets the schedule's end to the step reached ``margin`` of the
    budget before the cap; never beyond the planned end, and a shortfall under ``margin`` of the planned steps
    (early estimates carry start-up time) keeps it, so a machine fast enough changes nothing. The estimate is
    rank 0's, broadcast, so all ranks follow one schedule. ``ends`` records ``(step, end)`` at each change."""

    def __init__(self, every: int = 20, start: int = 50, margin: float = 0.03) -> None:
        self.every, self.start, self.margin = every, start, margin
        self.ends: list[tuple[int, int]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        """The cap's Timer and the schedules to fit (none without a ``max_time``: the callback then does nothing)."""
        self.t0, self.step0 = time.monotonic(), trainer.global_step
        self.timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        capped = self.timer is not None and self.timer.time_remaining() is not None
        self.schedules = [f for cfg in trainer.lr_scheduler_configs for f in getattr(cfg.scheduler, "lr_lambdas", [])
                          if isinstance(f, WarmupCosine)] if capped else []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        schedules = self.schedules
        done, step = trainer.global_step - self.step0, trainer.global_step
        if schedules and done >= self.start and done % self.every == 0:
            remaining = self.timer.time_remaining()
            budget = self.timer.time_elapsed() + remaining
            rate = done / max(1e-9, time.monotonic() - self.t0)
            fits = trainer.strategy.broadcast(step + int(rate * max(0.0, remaining - self.margin * budget)), src=0)
            for f in schedules:
                end = f.planned if fits >= f.planned * (1 - self.margin) else max(step + 1, fits)  # noise: keep
                if end != f.total:
                    if not self.ends:
                        rank_zero_info(f"TimeBudget: max_time ends the run before its {f.planned} planned steps; "
                                       f"the LR schedule now ends at step {end} ({rate:.1f} steps/s)")
                    f.total = end
                    self.ends.append((step, end))
        if not trainer.should_stop and any(f.total < f.planned and step >= f.total for f in schedules):
            rank_zero_info(f"TimeBudget: the LR schedule ended at step {step} of {schedules[0].planned} planned, "
                           "inside max_time; stopping")
            trainer.should_stop = True
