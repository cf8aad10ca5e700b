"""The sampling loop of vitlab's generators, in numpy: the one implementation that the checkpoint (torch), the
exported ONNX denoiser and an app without torch all run, so that a seed means the same images everywhere.

A denoiser step is any function ``step(x [N, C, H, W] float32, t [N] float32, y [N] int64, guidance [N] float32)
-> v`` (the guided velocity of rectified flow: ``x_t = (1 - t) x0 + t eps``, ``v = eps - x0``). Sampling starts
from ``numpy.random.default_rng(seed)`` standard-normal noise at ``t = 1`` and integrates to ``t = 0`` on a uniform
grid of ``steps`` (Euler: one step call per step; Heun: two, the last step Euler); pixels are ``(x0 + 1) * 127.5``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vitlab_edge.progress import Progress

Step = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
METHODS = ("euler", "heun")


def initial_noise(n: int, shape: Sequence[int], seed: int) -> np.ndarray:
    """``[n, *shape]`` float32 standard normal from ``default_rng(seed)``: the same numbers in every backend."""
    return np.random.default_rng(seed).standard_normal((n, *shape), dtype=np.float32)


def to_uint8(x0: np.ndarray) -> np.ndarray:
    """Model space ``[N, C, H, W]`` in [-1, 1] -> uint8 images ``[N, H, W, C]``."""
    return np.clip(np.rint((x0 + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def sample(step: Step, labels: Sequence[int], shape: Sequence[int], steps: int = 20, guidance: float = 2.0,
           seed: int = 0, method: str = "euler", batch_size: int = 256, progress: bool | None = None
           ) -> np.ndarray:
    """Images for ``labels`` (class ids) as uint8 ``[N, H, W, C]``. ``shape``: ``(C, H, W)``; the noise of all
    ``N`` images is drawn at once from ``seed`` (so an image does not depend on ``batch_size``), then the images are
    integrated ``batch_size`` at a time."""
    if steps < 1 or method not in METHODS:
        raise ValueError(f"steps must be >= 1 and method one of {METHODS}, got {steps}, {method!r}")
    y_all = np.asarray(labels, dtype=np.int64).reshape(-1)
    x_all = initial_noise(len(y_all), shape, seed)
    ts = np.linspace(1.0, 0.0, steps + 1, dtype=np.float32)
    calls = steps * (2 if method == "heun" else 1) - (1 if method == "heun" else 0)
    out = []
    with Progress(len(y_all) * calls, "sampling", unit="step", progress=progress) as bar:
        for start in range(0, len(y_all), batch_size):
            x, y = x_all[start:start + batch_size], y_all[start:start + batch_size]
            g = np.full(len(y), guidance, dtype=np.float32)
            for i in range(steps):
                t, dt = ts[i], ts[i + 1] - ts[i]
                v = step(x, np.full(len(y), t, np.float32), y, g)
                if method == "heun" and i < steps - 1:
                    v2 = step(x + dt * v, np.full(len(y), ts[i + 1], np.float32), y, g)
                    v = (v + v2) / 2
                    bar.update(len(y))
                x = (x + dt * v).astype(np.float32)
                bar.update(len(y))
            out.append(to_uint8(x))
    return np.concatenate(out) if out else np.zeros((0, shape[1], shape[2], shape[0]), np.uint8)
