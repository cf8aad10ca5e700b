"""torch.distributed facts that hold with or without a process group (one place for the data and task layers)."""

from __future__ import annotations

import torch.distributed as dist


def rank() -> int:
    """This process's global rank; 0 without an initialised process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
