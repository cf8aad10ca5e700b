"""Progress for long jobs (batch prediction here and in vitlab, vitlab's export report): one rule, used by every
call site of both packages (vitlab imports it from here, as it does image IO).

``progress=None`` (the CLI's choice): a live tqdm bar (count, rate, ETA) when stderr is a terminal, nothing
otherwise, so piped output and log files stay clean. ``True`` (asked for from Python): the live bar on a terminal,
one summary line at the end otherwise. ``False``: silent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _size() -> dict[str, Any]:
    """Follow the terminal's size; one that reports none (0 x 0: some containers, CI and serial consoles) counts
    as 80 x 24, where tqdm would draw nothing at all."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        size = os.terminal_size((0, 0))
    return {"dynamic_ncols": True} if min(size) > 0 else {"ncols": size.columns or 80, "nrows": size.lines or 24}


def _console_loggers() -> list[logging.Logger]:
    """The loggers that print to the terminal themselves (root, vitlab's, Lightning's): their lines go above the bar."""
    names = (None, "vitlab", "vitlab_edge", "lightning.pytorch")
    return [lg for lg in map(logging.getLogger, names)
            if any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr) for h in lg.handlers)]


class Progress:
    """Count work done: ``update(n)``; ``close()`` (or leave the ``with`` block) ends it. While the bar is live,
    vitlab's log lines are printed above it instead of through it."""

    def __init__(self, total: int | None, desc: str, unit: str = "img", progress: bool | None = None) -> None:
        self.desc, self.unit, self.n, self._t0 = desc, unit, 0, time.perf_counter()
        self.live = progress is not False and _stderr_is_terminal()
        self.summary = progress is True and not self.live
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, smoothing=0.1, disable=not self.live,
                        **(_size() if self.live else {}))
        self._logs = contextlib.ExitStack()
        if self.live:
            self._logs.enter_context(logging_redirect_tqdm(_console_loggers(), tqdm_class=tqdm))
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        self.bar.update(n)

    def close(self) -> None:
        """End the bar; with ``progress=True`` off a terminal, print the one summary line."""
        if self._closed:
            return
        self._closed = True
        self.bar.close()
        self._logs.close()
        if self.summary:
            seconds = time.perf_counter() - self._t0
            print(f"{self.desc}: {self.n} {self.unit} in {seconds:.1f} s ({self.n / max(seconds, 1e-9):.1f} "
                  f"{self.unit}/s)", file=sys.stderr, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
