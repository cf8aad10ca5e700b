"""Turn what a user points at into an ordered list of inputs: files, folders (recursive, by extension), globs and
text files listing paths. Anything else (PIL images, arrays) passes through as an in-memory input."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vitlab_edge.imaging import is_image_file, is_pil_image

LIST_SUFFIXES = (".txt", ".lst")


def expand_path(item: str | os.PathLike) -> list[str]:
    """One path-like input -> the files it stands for, in a stable order.

    A folder gives its images (recursive, sorted); a text file (.txt/.lst) its non-blank, non-# lines; a pattern
    with ``*?[`` that is not itself a file its sorted matches; any other path is kept as is, so a missing or bad
    file still gets its own error record."""
    text = str(item)
    p = Path(text)
    if p.is_dir() and not is_image_file(p):
        return sorted(str(f) for f in p.rglob("*") if is_image_file(f) and not f.is_dir())
    if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        base = p.parent
        lines = [ln.strip() for ln in p.read_text(errors="replace").splitlines()]
        return [str(base / ln) if not os.path.isabs(ln) else ln for ln in lines if ln and not ln.startswith("#")]
    if not p.exists() and any(ch in text for ch in "*?["):
        return sorted(f for f in glob.glob(text, recursive=True) if not Path(f).is_dir())
    return [text]


def expand_inputs(source: Any) -> list[Any]:
    """A path, folder, glob, list file, in-memory image, or an iterable of those -> a flat list of inputs."""
    if isinstance(source, (str, os.PathLike)):
        return expand_path(source)
    if _is_in_memory(source):
        return [source]
    if isinstance(source, Iterable):
        out: list[Any] = []
        for item in source:
            out += expand_path(item) if isinstance(item, (str, os.PathLike)) else [item]
        return out
    return [source]


def _is_in_memory(x: Any) -> bool:
    return hasattr(x, "shape") or is_pil_image(x)  # arrays, tensors, PIL images
