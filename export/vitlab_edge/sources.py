"""What a user names -> an ordered list of inputs.

Two rules, one per kind of caller:

- ``expand_inputs(arguments)`` is for command lines: every argument is a name to expand. A folder gives its images
  (recursive, sorted), a glob its sorted matches, a ``.txt``/``.lst`` file the paths it lists, any other path
  itself. A folder, glob or list that stands for nothing raises ``EmptySourceError`` naming it.
- ``as_inputs(source)`` is for Python calls (``EdgeModel.predict``, vitlab's ``Predictor``): a single ``str`` or
  path is expanded as above; the items of a list or other iterable are inputs as they are, one record each, in
  order: a ``.txt`` path in a list is an input like any other (and gets its own error record, "not an image").
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vitlab_edge.imaging import is_image_file, is_pil_image

LIST_SUFFIXES = (".txt", ".lst")


class EmptySourceError(ValueError):
    """A folder, glob or list file named at the top level that stands for no input; the message names it."""


def expand_path(item: str | os.PathLike, error: type[Exception] = EmptySourceError) -> list[str]:
    """One named path -> the files it stands for, in a stable order.

    A folder gives its images (recursive, sorted); a text file (.txt/.lst) its non-blank, non-# lines, relative
    ones taken from the list's folder; a pattern with ``*?[`` that is not itself a file its sorted matches; any
    other path is kept as is, so a missing or bad file still gets its own error record. A folder, list or
    pattern that gives nothing raises ``error`` (so a typo never turns into zero records without a word)."""
    text = str(item)
    p = Path(text)
    if p.is_dir() and not is_image_file(p):
        found = sorted(str(f) for f in p.rglob("*") if is_image_file(f) and not f.is_dir())
        return found or _nothing(error, f"folder {text} holds no image files (searched recursively by extension)")
    if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        lines = [ln.strip() for ln in p.read_text(errors="replace").splitlines()]
        found = [ln if os.path.isabs(ln) else str(p.parent / ln) for ln in lines if ln and not ln.startswith("#")]
        return found or _nothing(error, f"list file {text} lists no paths")
    if not p.exists() and any(ch in text for ch in "*?["):
        found = sorted(f for f in glob.glob(text, recursive=True) if not Path(f).is_dir())
        return found or _nothing(error, f"{text!r} matches no files")
    return [text]


def _nothing(error: type[Exception], message: str) -> list[str]:
    raise error(message)


def expand_inputs(arguments: Iterable[str | os.PathLike] | str | os.PathLike,
                  error: type[Exception] = EmptySourceError) -> list[str]:
    """Command-line arguments (files, folders, globs, list files) -> the files they name, argument by argument.

    ``error`` is the exception raised for an argument that names nothing, so that a CLI can raise its own
    one-line error type (vitlab passes ``VitlabError``)."""
    if isinstance(arguments, (str, os.PathLike)):
        arguments = [arguments]
    return [f for arg in arguments for f in expand_path(arg, error)]


def iter_inputs(source: Any) -> Iterable[Any]:
    """``as_inputs`` without materialising an iterable: a generator of images stays a generator."""
    if isinstance(source, (str, os.PathLike)):
        return expand_path(source)
    if _is_single(source) or not isinstance(source, Iterable):
        return [source]
    return source


def as_inputs(source: Any) -> list[Any]:
    """A Python call's ``source`` -> its inputs: a str/path is expanded (folder, glob, list file); an in-memory
    image (PIL, array, tensor) is one input; the items of any other iterable are the inputs, untouched."""
    return list(iter_inputs(source))


def _is_single(x: Any) -> bool:
    return hasattr(x, "shape") or is_pil_image(x) or isinstance(x, (bytes, bytearray))  # arrays, tensors, PIL
