"""Atomic file writes: write beside the target, fsync, then rename, so readers never see half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def _default_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_MODE = _default_mode()  # mkstemp creates 0600 files; finished files get the usual permissions


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` only if it succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _MODE)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_jsonl(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> int:
    """One JSON record per line, written atomically (``path`` appears only once every record is in); the count."""
    n = 0

    def write(tmp: Path) -> None:
        nonlocal n
        with open(tmp, "w") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
                n += 1

    atomic_write(path, write)
    return n
