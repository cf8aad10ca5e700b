"""ONNX Runtime sessions: ask for providers in order (default CUDA then CPU; short names and the GPU serving options
are in ``vitlab_edge.providers``), keep what this machine can run, and say in ONE log line what was dropped and why,
instead of letting ONNX Runtime print its library-loading errors and fallback banners.

ONNX Runtime comes from an extra, ``vitlab-edge[cpu]`` (``onnxruntime``) or ``vitlab-edge[gpu]``
(``onnxruntime-gpu``): both wheels install the same ``onnxruntime`` module, so the base package names neither
and a missing runtime is one clear error here, when a session is first needed.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from vitlab_edge import providers as _providers
from vitlab_edge.providers import CPU, CUDA, GPU_PROVIDERS, TENSORRT, cuda_driver_present, expand, provider_name

log = logging.getLogger("vitlab_edge")
DEFAULT_PROVIDERS = (CUDA, CPU)
LABELS = {TENSORRT: "TensorRT", CUDA: "CUDA", CPU: "CPU"}

__all__ = ["DEFAULT_PROVIDERS", "RuntimeMissingError", "create_session", "cuda_driver_present", "import_onnxruntime",
           "resolve_providers"]


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


def resolve_providers(requested: Any = None) -> list[Any]:
    """``requested`` (default CUDA, CPU; short names expanded: ``providers.expand``) minus what this machine cannot
    run, with one log line naming what was dropped and why; CPU when nothing is left."""
    keep, dropped = _usable(requested)
    _report(dropped, keep, requested is not None)
    return keep


def _usable(requested: Any) -> tuple[list[Any], list[tuple[str, str]]]:
    ort = import_onnxruntime()
    wanted = expand(requested if requested is not None else DEFAULT_PROVIDERS)
    available = set(ort.get_available_providers())
    if any(provider_name(p) in GPU_PROVIDERS and provider_name(p) in available for p in wanted) \
            and _providers.cuda_driver_present():
        _preload_cuda_libraries()
    keep, dropped = [], []
    for p in wanted:
        why = _providers.unavailable(provider_name(p), available, os.path.dirname(ort.__file__)) or \
            _providers.make_cache(p)
        if why:
            dropped.append((provider_name(p), why))
        else:
            keep.append(p)
    return keep or [CPU], dropped


def create_session(path: str | os.PathLike, providers: Any = None, options: Any | None = None):
    """An InferenceSession on the first providers of ``providers`` that work here; ``session.get_providers()`` says
    which. A GPU provider that ONNX Runtime cannot start (a CUDA library missing, an engine that does not build) is
    dropped and the session tried again on the rest: ONNX Runtime's own messages are kept off the terminal (logged
    at debug), and one line says what was dropped and why. A model that does not load raises ONNX Runtime's error."""
    ort = import_onnxruntime()
    chosen, dropped = _usable(providers)
    while True:
        gpu = [provider_name(p) for p in chosen if provider_name(p) in GPU_PROVIDERS]
        if not gpu:
            session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
            break
        captured: list[str] = []
        try:
            with _stderr_into(captured):
                session = ort.InferenceSession(str(path), sess_options=options, providers=chosen, enable_fallback=0)
        except Exception as e:  # noqa: BLE001 - retried without the first GPU provider; the CPU try raises
            log.debug("onnxruntime with %s: %s\n%s", gpu, e, "".join(captured))
            dropped.append((gpu[0], _reason(str(e), "".join(captured))))
            chosen = [p for p in chosen if provider_name(p) != gpu[0]] or [CPU]
            continue
        if captured[0].strip():
            log.debug("onnxruntime with %s:\n%s", gpu, captured[0])
        granted = session.get_providers()
        dropped += [(name, _reason("", captured[0]) or "onnxruntime did not grant it") for name in gpu
                    if name not in granted]
        break
    _report(dropped, session.get_providers(), providers is not None)
    return session


@functools.cache
def _preload_cuda_libraries() -> None:
    """CUDA / cuDNN from the nvidia-* pip wheels, when present (``onnxruntime.preload_dlls``): a missing wheel only
    means the system libraries are used; its messages go to the debug log."""
    preload = getattr(import_onnxruntime(), "preload_dlls", None)
    if preload is None:
        return
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            preload()
    except Exception as e:  # noqa: BLE001
        log.debug("onnxruntime.preload_dlls: %s", e)
    if out.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", out.getvalue().strip())


@contextlib.contextmanager
def _stderr_into(captured: list[str]) -> Iterator[None]:
    """What is written to file descriptor 2 (ONNX Runtime's C++ logger) meanwhile, appended to ``captured``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode(errors="replace"))


def _reason(error: str, logged: str) -> str:
    """One short phrase out of ONNX Runtime's exception and log text: the library that did not load, else the first
    error line without its source location."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{error}\n{logged}")
    m = re.search(r"with error: ([^\n]+)", text)
    if m:
        return m.group(1).strip()[:200]
    for line in text.splitlines():
        if line.strip() and ("[E:" in line or "[W:" in line or "rror" in line or "ail" in line):
            return re.split(r"\] |: FAIL : |Exception : ", line)[-1].strip()[:200]
    return next((line.strip()[:200] for line in text.splitlines() if line.strip()), "")


def _report(dropped: list[tuple[str, str]], kept: list[Any], explicit: bool) -> None:
    """One line for everything dropped: ``TensorRT and CUDA execution providers not used (no NVIDIA driver found);
    running on CPU``. A provider asked for by name is a warning; the default CUDA missing is info (a driver-less
    machine) or debug (a CPU-only onnxruntime: a choice)."""
    if not dropped:
        return
    groups: dict[str, list[str]] = {}
    for name, why in dropped:
        groups.setdefault(why, []).append(LABELS.get(name, name))
    parts = [f"{' and '.join(names)} execution provider{'s' * (len(names) > 1)} not used ({why})"
             for why, names in groups.items()]
    on = LABELS.get(provider_name(kept[0]), provider_name(kept[0])) if kept else "CPU"
    if explicit:
        level = logging.WARNING
    else:
        level = logging.DEBUG if all(why.startswith("this onnxruntime build") for why in groups) else logging.INFO
    _say_once(level, f"{'; '.join(parts)}; running on {on}")


_said: dict[str, int] = {}  # line -> the highest level it was said at


def _say_once(level: int, line: str) -> None:
    """Once per process, unless at a higher level than before: a Predictor's second session (its thread trial) or
    a re-opened model says nothing new, but an explicit request's warning follows the default request's info line."""
    if level > _said.get(line, -1):
        _said[line] = level
        log.log(level, "%s", line)
