"""Atomic file writes (write beside the target, fsync, then rename, so readers never see half a file) and the
record writers vitlab and the edge kit share: JSONL and CSV, one record per line."""

from __future__ import annotations

import csv
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


OUTPUT_FORMATS = (".jsonl", ".csv")
CSV_FIELDS = ("index", "source", "label", "class_id", "prob", "topk", "error")  # topk as a JSON list

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


def write_csv(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> int:
    """One CSV row per record (``CSV_FIELDS``, ``topk`` as JSON text), written atomically; the count."""
    n = 0

    def write(tmp: Path) -> None:
        nonlocal n
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            for rec in records:
                w.writerow({**rec, "topk": json.dumps(rec.get("topk", []))})
                n += 1

    atomic_write(path, write)
    return n


def write_records(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> int:
    """JSONL or CSV by the name's suffix (``OUTPUT_FORMATS``; another raises ValueError); the count."""
    suffix = Path(path).suffix
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"output {path}: use a .jsonl or .csv file name")
    return (write_jsonl if suffix == ".jsonl" else write_csv)(records, path)
