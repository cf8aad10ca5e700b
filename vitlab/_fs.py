"""Atomic file writes (the implementation is shared with the edge kit): readers never see half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vitlab_edge.files import atomic_write


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
