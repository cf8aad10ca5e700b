"""``vitlab``: Lightning's CLI (fit / validate / test / predict) plus the ``demo`` command.

``vitlab fit --config configs/classify/fmnist_demo.yaml`` — configs are LightningCLI YAML: ``model`` and
``data`` take ``class_path`` + ``init_args``; ``trainer.*`` is Lightning's Trainer (strategy, devices, num_nodes
for DDP/FSDP scale-out). ``data.num_classes`` / ``data.class_names`` are linked into the model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from vitlab.errors import VitlabError

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class VitlabCLI(LightningCLI):
    """LightningCLI with vitlab's links and defaults: a fixed checkpoint folder (so ``--ckpt_path last`` finds
    the previous run), ``best-EE.ckpt`` by ``val/acc`` (``checkpoint.*``), ``last.ckpt`` after every epoch
    (``last_checkpoint.*``), and CSV + TensorBoard logs under ``trainer.default_root_dir``.

    ``last.ckpt`` has a callback of its own because Lightning 2.6's ``save_last=True`` only refreshes it when a
    top-k checkpoint is saved, so after an epoch that did not improve, "last" would be an older epoch."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/acc", "checkpoint.mode": "max",
                             "checkpoint.filename": "best-{epoch:02d}", "checkpoint.auto_insert_metric_name": False,
                             "last_checkpoint.filename": "last", "last_checkpoint.save_top_k": 1,
                             "last_checkpoint.enable_version_counter": False})

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        root = cfg.trainer.default_root_dir or "runs/default"
        cfg.trainer.default_root_dir = root
        for key in ("checkpoint", "last_checkpoint"):
            if cfg[key].dirpath is None:
                cfg[key].dirpath = os.path.join(root, "checkpoints")
        if cfg.trainer.logger in (None, True):
            from jsonargparse import Namespace

            logs = Path(root) / "logs"
            taken = [int(p.name[8:]) for p in logs.glob("version_*") if p.name[8:].isdigit()] if logs.is_dir() else []
            args = Namespace(save_dir=root, name="logs", version=max(taken, default=-1) + 1)
            cfg.trainer.logger = [Namespace(class_path=cls, init_args=args.clone()) for cls in
                                  ("vitlab.loggers.AtomicCSVLogger", "lightning.pytorch.loggers.TensorBoardLogger")]


def run_cli(args: list[str] | None = None) -> VitlabCLI:
    """Run a Lightning subcommand; ``args=None`` reads ``sys.argv`` (as DDP's re-launched ranks do)."""
    return VitlabCLI(args=args)


def _vitlab_error(e: BaseException | None) -> Exception | None:
    """The user error behind ``e``: a VitlabError (jsonargparse wraps those raised while it instantiates
    classes), or a checkpoint that ``torch.load(weights_only=True)`` refused to unpickle."""
    import pickle

    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, VitlabError):
            return e
        if isinstance(e, pickle.UnpicklingError):
            first = (str(e).strip().splitlines() or ["unpickling refused"])[0]
            return VitlabError(f"refusing to load a checkpoint that is not plain tensors and data ({first[:160]})")
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    args = sys.argv[1:] if argv is None else argv
    try:
        if args and args[0] == "demo":
            from vitlab.demo import main as demo_main

            demo_main(args[1:])
        else:
            run_cli(argv)
    except Exception as e:
        err = _vitlab_error(e)
        if err is None:
            raise
        print(f"vitlab: error: {err}", file=sys.stderr)
        sys.exit(2)
