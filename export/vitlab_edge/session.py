"""ONNX Runtime sessions: ask for CUDA then CPU, report what was granted, and say once (one line) when CUDA is
not there instead of letting ONNX Runtime print its library-loading errors.

ONNX Runtime comes from an extra, ``vitlab-edge[cpu]`` (``onnxruntime``) or ``vitlab-edge[gpu]``
(``onnxruntime-gpu``): both wheels install the same ``onnxruntime`` module, so the base package names neither
and a missing runtime is one clear error here, when a session is first needed.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from typing import Any

log = logging.getLogger("vitlab_edge")
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class RuntimeMissingError(ImportError):
    """No ``onnxruntime`` module: the kit was installed without the ``[cpu]`` or ``[gpu]`` extra."""


def import_onnxruntime():
    """The ``onnxruntime`` module, or a RuntimeMissingError that says which extra to install."""
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeMissingError(
            f"ONNX Runtime is not installed ({e}): pip install 'vitlab-edge[cpu]' for CPU-only machines, or "
            "'vitlab-edge[gpu]' for NVIDIA GPUs (CUDA); not both") from None
    return onnxruntime


@functools.cache
def cuda_driver_present() -> bool:
    """True when the NVIDIA driver library loads: without it the CUDA provider can only fail."""
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def resolve_providers(requested: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """``requested`` (default CUDA, CPU) minus what this machine cannot run, with one info line for CUDA."""
    ort = import_onnxruntime()

    requested = list(requested or DEFAULT_PROVIDERS)
    available = set(ort.get_available_providers())
    keep = []
    for p in requested:
        name = p[0] if isinstance(p, tuple) else p
        if name == "CUDAExecutionProvider" and (name not in available or not cuda_driver_present()):
            _say_no_cuda(name in available)
            continue
        if name not in available:
            log.info("%s is not in this onnxruntime build; skipping it", name)
            continue
        keep.append(p)
    return keep or ["CPUExecutionProvider"]


@functools.cache
def _say_no_cuda(built_with_cuda: bool) -> None:
    """Once per process; a CPU-only build (the ``[cpu]`` extra) was a choice, so it is said at debug level only."""
    why = "no NVIDIA driver found" if built_with_cuda else "this onnxruntime build has no CUDA provider"
    log.log(logging.INFO if built_with_cuda else logging.DEBUG, "CUDA execution provider not used (%s); running on "
            "CPU", why)


def create_session(path: str | os.PathLike, providers: list[str] | tuple[str, ...] | None = None,
                   options: Any | None = None):
    """An InferenceSession on the best granted providers; ``session.get_providers()`` says which."""
    ort = import_onnxruntime()

    chosen = resolve_providers(providers)
    if any((p[0] if isinstance(p, tuple) else p) == "CUDAExecutionProvider" for p in chosen):
        preload = getattr(ort, "preload_dlls", None)  # CUDA/cuDNN from the nvidia-* pip wheels, when present
        if preload is not None:
            try:
                preload()
            except Exception as e:  # noqa: BLE001 - a missing wheel only means system libraries are used
                log.debug("onnxruntime.preload_dlls: %s", e)
    return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
