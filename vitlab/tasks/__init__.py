"""LightningModules: one per task. They own training; inference lives in ``forward``."""

from __future__ import annotations

import os

from vitlab.errors import VitlabError
from vitlab.tasks.base import VitlabTask
from vitlab.tasks.classification import ClassificationTask
from vitlab.tasks.detection import DetectionTask
from vitlab.tasks.diffusion import DiffusionTask
from vitlab.tasks.mae import MAETask

# the task name saved in a checkpoint (``vitlab_task``) -> its class, for vitlab.load
TASKS = {"ClassificationTask": ClassificationTask, "DetectionTask": DetectionTask, "MAETask": MAETask,
         "DiffusionTask": DiffusionTask}


def load_task(path: str | os.PathLike, map_location: str = "cpu"):
    """Rebuild a task from its checkpoint alone (hyper-parameters + weights), with ``weights_only=True``."""
    import torch

    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise VitlabError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise VitlabError(f"refusing to load {path}: not a plain vitlab checkpoint ({first[:200]})") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "state_dict" not in ckpt:
        raise VitlabError(f"{path} is not a Lightning checkpoint with hyper-parameters")
    cls = TASKS.get(ckpt.get("vitlab_task", "ClassificationTask"))
    if cls is None:
        raise VitlabError(f"{path}: unknown task {ckpt.get('vitlab_task')!r}")
    hp = {k: v for k, v in hp.items() if not k.startswith("_")}
    if "pretrained" in hp:
        hp["pretrained"] = False  # the checkpoint's own weights replace any starting point (a HF folder's too)
    task = cls(**hp)
    task.load_state_dict(ckpt["state_dict"])
    return task.eval()


__all__ = ["TASKS", "ClassificationTask", "DetectionTask", "DiffusionTask", "MAETask", "VitlabTask", "load_task"]
