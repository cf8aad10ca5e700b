"""The task contract: each task declares itself ONCE, in its own module, as a ``TaskSpec``; every path (``vitlab.load``,
the Predictor and its backends, the exporter, the CLI verbs, the demo) looks the task up here by name.

A task's name is what travels: ``PreprocessCfg.task`` in the checkpoint, ``task`` in the ONNX metadata, the record
decoder of the edge kit (``vitlab_edge.records``). Adding a task = its own files (model, LightningModule, exporter
piece, records decoder) plus one ``register_task(TaskSpec(...))`` call in its task module.

Pieces that live in other packages (the exporter piece, the result type, the overlay) are named as
``"module:attribute"`` and imported when first used, so registering a task imports neither ONNX tooling nor the
inference stack, and nothing here imports a task.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vitlab.errors import VitlabError


@dataclass(frozen=True)
class TaskSpec:
    """One task, declared once.

    - ``name``: the canonical name (``PreprocessCfg.task``, ONNX metadata ``task``); ``aliases``: other spellings a
      user may type (``--task detect``).
    - ``module``: the LightningModule class (None for an inference-only task such as ``embedding``).
    - ``outputs(model, images, **options)``: the torch model's answers as the task's ONNX graph names them
      (uint8 images in); ``options``: the hyper-parameters passed to it (a detector's thresholds). None: the task's
      checkpoints answer no images (a generator), see ``serves``.
    - ``exporter``: ``"module:Class"`` of its piece of ``vitlab.onnx.export`` (None: no ONNX export of its own).
    - ``result``: ``"module:Class"`` of the Predictor's result type; ``overlay``: ``"module:function"`` drawing
      ``--overlays`` PNGs; ``explain``: whether attention rollout applies.
    - ``serves``: the task a checkpoint of this one is served and exported as (an MAE checkpoint: ``embedding``).
    - ``instead``: for the verbs that do not apply, what to use, one line (``vitlab sample ...``).
    - ``demo``: ``(config under configs/, default output folder, "module:function" that runs it)`` of
      ``vitlab demo --task NAME``.
    """

    name: str
    module: type | None = None
    aliases: tuple[str, ...] = ()
    outputs: Callable[..., dict[str, Any]] | None = None
    options: tuple[str, ...] = ()
    exporter: str | None = None
    result: str | None = None
    overlay: str | None = None
    explain: bool = False
    serves: str | None = None
    instead: str = ""
    demo: tuple[str, str, str] | None = None

    def load(self, piece: str) -> Any:
        """The object named by ``exporter`` / ``result`` / ``overlay`` (imported now), or None."""
        ref = getattr(self, piece)
        if ref is None:
            return None
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)

    @property
    def served(self) -> TaskSpec:
        """The task that answers for this one's checkpoints (itself, or ``serves``)."""
        return get_task(self.serves) if self.serves else self

    def refuse(self, verb: str, what: str) -> VitlabError:
        """The one-line error of a verb that does not apply: names ``what`` (a file), the task and what to use."""
        return VitlabError(f"{what} is a {self.name} model: {verb} does not apply to it; {self.instead}")


_TASKS: dict[str, TaskSpec] = {}
_ALIASES: dict[str, str] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Register a task under its name and aliases; a name taken twice is an error (as for models)."""
    for key in (spec.name, *spec.aliases):
        if key in _ALIASES:
            raise ValueError(f"task name {key!r} is already registered (by {_ALIASES[key]!r})")
    _TASKS[spec.name] = spec
    _ALIASES.update({key: spec.name for key in (spec.name, *spec.aliases)})
    return spec


def _ensure_tasks() -> None:
    import vitlab.tasks  # noqa: F401  (each task module registers its spec)


def get_task(name: str | None) -> TaskSpec:
    """The spec of ``name`` or one of its aliases (None: classification, what files before the task key were)."""
    _ensure_tasks()
    key = _ALIASES.get(name or "classification")
    if key is None:
        raise VitlabError(f"unknown task {name!r}; vitlab knows {', '.join(list_tasks())}")
    return _TASKS[key]


def list_tasks() -> list[str]:
    """The canonical task names, in registration order."""
    _ensure_tasks()
    return list(_TASKS)


def task_of_module(cls_name: str) -> TaskSpec:
    """The spec whose LightningModule class is called ``cls_name`` (the ``vitlab_task`` a checkpoint saves)."""
    _ensure_tasks()
    for spec in _TASKS.values():
        if spec.module is not None and spec.module.__name__ == cls_name:
            return spec
    raise VitlabError(f"unknown task module {cls_name!r}; vitlab knows "
                      f"{', '.join(s.module.__name__ for s in _TASKS.values() if s.module)}")
