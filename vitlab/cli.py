"""``vitlab``: Lightning's CLI (fit / validate / test / predict) plus the ``export`` and ``demo`` commands.

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

from vitlab.errors import VitlabError, checkpoint_error

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class VitlabCLI(LightningCLI):
    """LightningCLI with vitlab's links and defaults: a fixed checkpoint folder (so ``--ckpt_path last`` finds
    the previous run), ``best-EE.ckpt`` by ``val/acc`` (``checkpoint.*``), ``last.ckpt`` after every epoch
    (``last_checkpoint.*``), and CSV + TensorBoard logs under ``trainer.default_root_dir``.

    ``last.ckpt`` has a callback of its own because Lightning 2.6's ``save_last=True`` only refreshes it when a
    top-k checkpoint is saved, so after an epoch that did not improve, "last" would be an older epoch.

    With ``--ckpt_path``, the model's arguments come from the checkpoint (its architecture must match), except those
    given on the command line (``--model.init_args.score_thresh=0.3``): Lightning 2.6 lets the checkpoint win over
    those too, silently (Lightning-AI/pytorch-lightning#21455)."""

    def __init__(self, *args, **kwargs) -> None:
        argv = sys.argv[1:] if kwargs.get("args") is None else kwargs["args"]
        _refuse_flat_optim_keys(argv)
        self._model_flags = _model_flags(argv)
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

    def instantiate_trainer(self, **kwargs):
        """The config's Trainer plus ``vitlab.callbacks.ThreadTuner`` on a CPU accelerator (unless the config already
        has one): one thread instead of all when another job makes torch's threads wait on each other."""
        from lightning.pytorch.accelerators import CPUAccelerator

        from vitlab.callbacks import ThreadTuner

        trainer = super().instantiate_trainer(**kwargs)
        if isinstance(trainer.accelerator, CPUAccelerator) and not any(isinstance(c, ThreadTuner)
                                                                        for c in trainer.callbacks):
            trainer.callbacks.append(ThreadTuner())
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Lightning's own step (the checkpoint's hyper-parameters become the model's arguments), with a checkpoint
        of an older vitlab migrated first (``vitlab.tasks.optim.migrate_hparams``) and the command line's model
        flags kept."""
        import torch

        from vitlab.tasks.optim import migrate_hparams

        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        given = {k: self.config[sub][k] for k in self._model_flags if k in self.config[sub]}
        ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        hparams = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if k != "_instantiator"}
        if not hparams:
            return
        hparams = migrate_hparams(hparams)
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(f"Parsing of --ckpt_path {ckpt_path}'s hyper-parameters failed\n")
            raise
        for key, value in given.items():
            self.config[sub][key] = value

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        _cpu_precision(cfg.trainer)
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


def _refuse_flat_optim_keys(argv) -> None:
    """A config or flag of an older vitlab with the optimiser keys flat under ``model.init_args`` (``lr: 2e-3``):
    one line naming the file or flag and where the keys live now, instead of jsonargparse's "not accepted"."""
    from vitlab.tasks.optim import OptimConfig

    if not isinstance(argv, (list, tuple)):
        return
    keys, argv = set(OptimConfig.keys()), [str(a) for a in argv]
    for i, token in enumerate(argv):
        name = token[2:].split("=", 1)[0]
        if token.startswith("--model.") and name.split(".")[-1] in keys and \
                name.split(".")[-2] != "optim":
            raise VitlabError(f"{token.split('=', 1)[0]}: the optimiser settings moved under "
                              f"model.init_args.optim: pass --model.init_args.optim.{name.split('.')[-1]}")
        path = token[len("--config="):] if token.startswith("--config=") else \
            argv[i + 1] if token == "--config" and i + 1 < len(argv) else None
        if path and os.path.isfile(path):
            import yaml

            try:
                cfg = yaml.safe_load(Path(path).read_text())
            except (OSError, yaml.YAMLError):
                continue  # jsonargparse says what is wrong with it
            init = ((cfg or {}).get("model") or {}) if isinstance(cfg, dict) else {}
            init = init.get("init_args", init) if isinstance(init, dict) else {}
            flat = sorted(keys & set(init)) if isinstance(init, dict) else []
            if flat:
                raise VitlabError(f"{path}: model.init_args.{flat[0]} (and {', '.join(flat)}) moved under "
                                  f"model.init_args.optim: write `optim: {{{flat[0]}: ...}}`")


def _model_flags(argv) -> list[str]:
    """The model keys that ``argv`` sets (``--model.init_args.topk=50``, ``--model.topk 50``) as config keys
    (``model.init_args.topk``); the class path is the checkpoint's."""
    keys = []
    for token in argv if isinstance(argv, (list, tuple)) else ():
        token = str(token)
        if not token.startswith("--model."):
            continue
        parts = token[2:].split("=", 1)[0].split(".")
        if parts[1] == "class_path":
            continue
        keys.append(".".join(["model", *(["init_args"] if parts[1] not in ("init_args", "dict_kwargs") else []),
                              *parts[1:]]))
    return keys


def _cpu_precision(trainer) -> None:
    """A GPU template (``precision: bf16-mixed`` or ``16-mixed`` with ``accelerator: auto``) on a machine without
    CUDA runs in ``32-true`` with one warning: half-precision autocast on most CPUs is slower than fp32, not
    faster (bf16 matmul 0.9 GFLOP/s vs 50 fp32 measured on the Zen 4 this project is developed on). An explicit
    ``--trainer.accelerator=cpu`` keeps the precision asked for."""
    import torch

    precision, accelerator = str(trainer.precision or ""), trainer.accelerator
    if "16" not in precision or accelerator not in (None, "auto") or torch.cuda.is_available():
        return
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        print(f"vitlab: warning: trainer.precision={precision} needs a GPU to pay off and there is no CUDA device "
              "here: training runs in 32-true (pass --trainer.precision=32-true to silence this, or "
              f"--trainer.accelerator=cpu to keep {precision} on the CPU)", file=sys.stderr)
    trainer.precision = "32-true"


def run_cli(args: list[str] | None = None) -> VitlabCLI:
    """Run a Lightning subcommand; ``args=None`` reads ``sys.argv`` (as DDP's re-launched ranks do)."""
    return VitlabCLI(args=args)


def _vitlab_error(e: BaseException | None) -> Exception | None:
    """The user error behind ``e``: a VitlabError (jsonargparse wraps those raised while it instantiates
    classes), a ``--ckpt_path`` that does not exist, or a checkpoint that ``torch.load`` could not read."""
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, VitlabError):
            return e
        if isinstance(e, FileNotFoundError) and str(e).startswith("Checkpoint file not found"):  # Lightning's
            return VitlabError(f"{str(e)[0].lower()}{str(e)[1:]}")
        unread = _unreadable_checkpoint(e)
        if unread is not None:
            return unread
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _unreadable_checkpoint(e: BaseException) -> VitlabError | None:
    """One line for an error raised inside ``torch.load`` (found in ``e``'s traceback, whose frame names the file):
    a file ``weights_only=True`` refused to unpickle (more than tensors and plain data, or junk), or one that is
    truncated or corrupt; None for any other error."""
    import torch

    tb, path = e.__traceback__, None
    while tb is not None and path is None:
        if tb.tb_frame.f_code is torch.serialization.load.__code__:
            path = tb.tb_frame.f_locals.get("f")
        tb = tb.tb_next
    if path is None:
        return None
    return checkpoint_error(path, e)


def export_command(argv: list[str]) -> None:
    """``vitlab export CKPT --out DIR [--precision fp32 int8] [--opset N] [--attention onnx|ort-mha] ...``"""
    import argparse

    from vitlab.onnx import export_onnx

    ap = argparse.ArgumentParser(prog="vitlab export", description="Export a checkpoint to ONNX: uint8 images in, "
                                 "probs and logits (classification) or boxes, scores, labels, num_dets with NMS "
                                 "inside (detection) out, or one guided denoiser step (generation: x, t, y, "
                                 "guidance -> v, gated on sample parity); one fused attention node per block, "
                                 "metadata inside.")
    ap.add_argument("checkpoint")
    ap.add_argument("--out", required=True, help="output folder: model[.PRECISION].onnx and report.json")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "int8"])
    ap.add_argument("--opset", type=int, default=23)
    ap.add_argument("--attention", default="onnx", choices=["onnx", "ort-mha"],
                    help="onnx: standard Attention op; ort-mha: com.microsoft.MultiHeadAttention")
    ap.add_argument("--eval-data", nargs="+", default=None, metavar="DATA",
                    help="held-out images for the report: fashion-mnist or a folder (classification); "
                    "IMAGES_DIR ANNOTATIONS.json (COCO) or scenes (detection); none for generation")
    ap.add_argument("--num-eval", type=int, default=10000)
    ap.add_argument("--calib-data", nargs="+", default=None, metavar="DATA",
                    help="training images for static int8, as --eval-data (default: dynamic int8)")
    ap.add_argument("--num-calib", type=int, default=512)
    ap.add_argument("--allow-degraded", action="store_true", help="keep variants that miss the accuracy budget")
    ap.add_argument("--task", default=None, help="export as this task (default: the checkpoint's own; an MAE "
                    "checkpoint's embedding); embedding: L2-normalised pooled features of any checkpoint")
    a = ap.parse_args(argv)
    def one_or_pair(v: list[str] | None):  # a folder / name, or a COCO (images, annotations) pair
        return v[0] if v and len(v) == 1 else tuple(v) if v else None

    results = export_onnx(a.checkpoint, a.out, a.precision, opset=a.opset, attention=a.attention,
                          eval_data=one_or_pair(a.eval_data), num_eval=a.num_eval,
                          calib_data=one_or_pair(a.calib_data), num_calib=a.num_calib,
                          allow_degraded=a.allow_degraded, task=a.task)
    for prec, r in results.items():
        print(f"{prec:>5}: {r.path}  {r.summary}  {r.report['file_bytes'] / 1e6:.2f} MB  [{r.report['status']}]")
    print(f"report: {Path(a.out) / 'report.json'}")


def predict_command(argv: list[str]) -> None:
    """``vitlab predict MODEL(.ckpt|.onnx) SOURCES... --out preds.jsonl|.csv [--resume] [--overlays DIR]``, or
    ``--out preds.json --format coco --annotations GT.json`` for a detector's COCO results."""
    import argparse

    from vitlab.inference.batch import predict_files

    ap = argparse.ArgumentParser(prog="vitlab predict", description="Predict images with a checkpoint or an "
                                 "exported ONNX model: one record per input, in input order. (With --config, "
                                 "`vitlab predict` is Lightning's predict subcommand instead.)")
    ap.add_argument("model", help="a vitlab .ckpt or an exported .onnx; with --task embedding also a model name "
                    "(a vitlab variant or timm ViT)")
    ap.add_argument("sources", nargs="+", help="image files, folders (recursive), globs, .txt lists of paths")
    ap.add_argument("--out", required=True, help="output .jsonl or .csv (written atomically, complete or not at "
                    "all; finished records are journaled beside it as they come); .json with --format coco")
    ap.add_argument("--format", default=None, choices=["jsonl", "csv", "coco", "npy"],
                    help="default: by the --out suffix; coco: a detector's COCO results JSON (needs --annotations); "
                    "npy: embeddings as one float32 [N, D] array in input order (and X.sources.txt)")
    ap.add_argument("--task", default=None, help="what to answer (default: the model's own task; an MAE "
                    "checkpoint's embedding); embedding: L2-normalised pooled features of any checkpoint")
    ap.add_argument("--annotations", default=None, help="with --format coco: the ground-truth COCO JSON whose "
                    "file_name / categories give image_id / category_id")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: spare cores, max 4)")
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--device", default=None, help="torch device for checkpoints (default: cuda if available)")
    ap.add_argument("--providers", default=None, help="ONNX Runtime providers, comma-separated: tensorrt, cuda, cpu")
    ap.add_argument("--threads", type=int, default=None, help="the model's CPU threads (default: one per core, "
                    "or cores minus --workers where a trial on the first batches measures that faster)")
    ap.add_argument("--overlays", default=None, help="folder for one PNG per image: input + label, or boxes")
    ap.add_argument("--explain", action="store_true", help="attention-rollout heatmaps in the overlays (.ckpt)")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run: skip the inputs answered in "
                    "--out or in its journal (.OUT.partial.jsonl), predict the rest")
    ap.add_argument("--devices", default="1", help="Lightning devices for multi-device prediction (.ckpt)")
    ap.add_argument("--num-nodes", type=int, default=1)
    ap.add_argument("--strategy", default="ddp")
    ap.add_argument("--accelerator", default="auto")
    predict_files(ap.parse_args(argv))


def _log_to_stderr() -> None:
    """INFO lines from vitlab and the edge kit only (other libraries' INFO chatter stays off)."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("vitlab: %(message)s"))
    for name in ("vitlab", "vitlab_edge"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def reconstruct_command(argv: list[str]) -> None:
    """``vitlab reconstruct MAE.ckpt IMAGES... --out grid.png [--mask-ratio R] [--seed S]``"""
    import argparse

    from vitlab_edge.sources import expand_inputs

    import vitlab
    from vitlab.tasks import MAETask
    from vitlab.viz import save_image_grid

    ap = argparse.ArgumentParser(prog="vitlab reconstruct", description="Mask images and reconstruct them with an "
                                 "MAE checkpoint: one PNG row per image, original | masked | reconstruction | "
                                 "reconstruction with the visible patches pasted back.")
    ap.add_argument("checkpoint", help="an MAE checkpoint (vitlab fit --config configs/generate/fmnist_mae.yaml)")
    ap.add_argument("inputs", nargs="+", help="image files, folders, globs or .txt lists")
    ap.add_argument("--out", required=True, help="the PNG grid to write")
    ap.add_argument("--mask-ratio", type=float, default=None, help="default: the checkpoint's training ratio")
    ap.add_argument("--seed", type=int, default=0, help="the same seed gives the same masks")
    a = ap.parse_args(argv)
    task = vitlab.load(a.checkpoint)
    if not isinstance(task, MAETask):
        raise VitlabError(f"{a.checkpoint} is a {type(task).__name__} checkpoint; reconstruct needs an MAETask one "
                          "(vitlab fit --config configs/generate/fmnist_mae.yaml)")
    files = expand_inputs(a.inputs, VitlabError)
    rec = task.reconstruct(files, a.mask_ratio, a.seed)
    path = save_image_grid({k: v for k, v in rec.items() if k != "mask"}, a.out)
    print(f"{len(files)} images, {rec['mask'].mean():.0%} of patches masked: {path}")


def sample_command(argv: list[str]) -> None:
    """``vitlab sample MODEL(.ckpt|.onnx) --labels 0 1 2 | --per-class N --out DIR [--evaluate]``"""
    import argparse

    from vitlab_edge.cli import UsageError, add_sample_arguments, check_sample_arguments
    from vitlab_edge.files import atomic_write

    from vitlab.inference import Sampler
    from vitlab.viz import save_sample_grid

    ap = argparse.ArgumentParser(prog="vitlab sample", description="Generate images with a diffusion checkpoint or "
                                 "its exported ONNX denoiser: one PNG per sample and grid.png (one row per class).")
    ap.add_argument("model", help="a DiffusionTask .ckpt or an exported .onnx denoiser")
    ap.add_argument("--out", required=True, help="output folder")
    add_sample_arguments(ap)
    ap.add_argument("--device", default=None)
    ap.add_argument("--providers", default=None, help="ONNX Runtime providers, comma-separated: tensorrt, cuda, cpu")
    ap.add_argument("--evaluate", action="store_true", help="FID (and its real-vs-real floor) against the "
                    "Fashion-MNIST test set, and class consistency, with --eval-classifier's features")
    ap.add_argument("--eval-classifier", default=None, help="a vitlab classification checkpoint (default: the "
                    "diffusion checkpoint's eval_classifier)")
    a = ap.parse_args(argv)
    try:
        check_sample_arguments(a)  # before the model loads
    except UsageError as e:
        raise VitlabError(str(e)) from None
    sampler = Sampler.load(a.model, device=a.device, providers=a.providers.split(",") if a.providers else None)
    labels = a.labels if a.labels else [k for k in range(len(sampler.labels)) for _ in range(a.per_class)]
    ids = sampler.class_ids(labels)
    images = sampler.sample(ids, a.steps, a.guidance, a.seed, a.method, a.batch_size, progress=None)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    for i, (img, k) in enumerate(zip(images, ids)):
        atomic_write(out / f"{i:05d}_class{k}.png",
                     lambda p, img=img: Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(p, "PNG"))
    per_row = a.per_class or len(ids)
    save_sample_grid(images.reshape(len(ids) // per_row, per_row, *images.shape[1:]), out / "grid.png")
    print(f"{len(images)} images [{sampler.name}] -> {out}/ (grid.png)")
    if a.evaluate:
        _evaluate_samples(a, sampler, images, ids)


def _evaluate_samples(a, sampler, images, ids) -> None:
    """FID vs the Fashion-MNIST test images (as many as samples), the train-vs-test floor, class consistency."""
    import numpy as np

    from vitlab.data.datasets import fashion_mnist_arrays
    from vitlab.metrics import generation_scores, load_classifier

    classifier_path = a.eval_classifier or getattr(getattr(sampler.backend, "hparams", None), "eval_classifier", None)
    if not classifier_path:
        raise VitlabError("--evaluate needs --eval-classifier CKPT (a vitlab Fashion-MNIST classifier)")
    if tuple(sampler.input_size) != (1, 28, 28):
        raise VitlabError("--evaluate compares with Fashion-MNIST: it needs a 28x28 grey model")
    classifier = load_classifier(classifier_path)
    n = len(images)
    test, train = fashion_mnist_arrays("test")[0], fashion_mnist_arrays("train")[0]
    rng = np.random.default_rng(0)
    real = test[rng.choice(len(test), min(n, len(test)), replace=False)][:, None]
    floor_train = train[rng.choice(len(train), len(real), replace=False)][:, None]
    scores = generation_scores(classifier, real, images, ids, floor_train)
    floor = scores["fid_floor"]
    print(f"FID {scores['fid']:.3f} (real-vs-real floor {floor:.3f}, ratio {scores['fid'] / floor:.2f}x) over {n} "
          f"samples; class consistency {scores['class_acc']:.2f}% [{classifier_path}]")


def _demo_command(argv: list[str]) -> None:
    from vitlab.demo import main as demo_main

    demo_main(argv)


# vitlab's own commands: name -> (one line for `vitlab --help`, handler of the remaining arguments)
COMMANDS = {
    "export": ("export a checkpoint to ONNX (fp32/fp16/int8, fused attention, accuracy-gated)", export_command),
    "reconstruct": ("mask and reconstruct images with an MAE checkpoint, as a PNG grid", reconstruct_command),
    "sample": ("generate images with a diffusion checkpoint or ONNX denoiser (grid.png, --evaluate: FID)",
               sample_command),
    "demo": ("train, test, export and serve the Fashion-MNIST demo model (--task detect: the scenes detector) in "
             "about 5 minutes", _demo_command),
}
LIGHTNING_COMMANDS = {
    "fit": "train a model from a config: vitlab fit --config configs/classify/fmnist_demo.yaml",
    "validate": "run the validation split: vitlab validate --config X --ckpt_path CKPT",
    "test": "run the test split and write per-class reports: vitlab test --config X --ckpt_path CKPT",
}
PREDICT_HELP = ("batch prediction: vitlab predict MODEL(.ckpt|.onnx) IMAGES... --out preds.jsonl\n"
                "                with --config: Lightning's predict subcommand (vitlab predict --config X --help)")


def print_help() -> None:
    """``vitlab --help``: every command with one line; ``vitlab COMMAND --help`` gives its options."""
    lines = ["usage: vitlab COMMAND [options]   (vitlab COMMAND --help for a command's options)", "",
             "Vision Transformers (timm) trained with Lightning, exported to ONNX, served in batches.", "",
             "commands:"]
    rows = [*LIGHTNING_COMMANDS.items(), ("predict", PREDICT_HELP), *((k, v[0]) for k, v in COMMANDS.items())]
    lines += [f"  {name:<13} {text}" for name, text in rows]
    lines += ["", "Lightning's commands take every Trainer flag (--trainer.devices=8 --trainer.strategy=ddp, ...)."]
    print("\n".join(lines))


def _dispatch(args: list[str], argv: list[str] | None) -> None:
    if not args or args[0] in ("-h", "--help"):
        print_help()
        if not args:
            sys.exit(2)
    elif args[0] in COMMANDS:
        _log_to_stderr()
        COMMANDS[args[0]][1](args[1:])
    elif args[0] == "predict" and len(args) > 1 and (not args[1].startswith("-") or args[1] in ("-h", "--help")):
        _log_to_stderr()
        predict_command(args[1:])
    else:
        run_cli(argv)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    args = sys.argv[1:] if argv is None else argv
    try:
        _dispatch(args, argv)
    except Exception as e:
        err = _vitlab_error(e)
        if err is None:
            raise
        print(f"vitlab: error: {err}", file=sys.stderr)
        sys.exit(2)
