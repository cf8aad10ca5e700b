"""LightningModules: one per task. They own training; inference lives in ``forward``. Each task module registers
its ``TaskSpec`` (``vitlab.tasks.spec``): importing this package registers every built-in task."""

from __future__ import annotations

import os

from vitlab.errors import VitlabError, checkpoint_error
from vitlab.tasks.base import VitlabTask
from vitlab.tasks.classification import ClassificationTask
from vitlab.tasks.detection import DetectionTask
from vitlab.tasks.diffusion import DiffusionTask
from vitlab.tasks.embedding import embedding_outputs  # registers the inference-only embedding task
from vitlab.tasks.mae import MAETask
from vitlab.tasks.optim import OptimConfig, migrate_hparams
from vitlab.tasks.spec import TaskSpec, get_task, list_tasks, register_task, task_of_module


def load_task(path: str | os.PathLike, map_location: str = "cpu"):
    """Rebuild a task from its checkpoint alone (hyper-parameters + weights), with ``weights_only=True``."""
    import torch

    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise VitlabError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        raise checkpoint_error(path, e) from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "state_dict" not in ckpt:
        raise VitlabError(f"{path} is not a Lightning checkpoint with hyper-parameters")
    try:
        cls = task_of_module(str(ckpt.get("vitlab_task", "ClassificationTask"))).module
    except VitlabError as e:
        raise VitlabError(f"{path}: {e}") from None
    hp = migrate_hparams({k: v for k, v in hp.items() if not k.startswith("_")})
    if "pretrained" in hp:
        hp["pretrained"] = False  # the checkpoint's own weights replace any starting point (a HF folder's too)
    task = cls(**hp)
    task.load_state_dict(ckpt["state_dict"])
    return task.eval()


__all__ = ["ClassificationTask", "DetectionTask", "DiffusionTask", "MAETask", "OptimConfig", "TaskSpec", "VitlabTask",
           "embedding_outputs", "get_task", "list_tasks", "load_task", "register_task", "task_of_module"]
