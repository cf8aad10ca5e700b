"""Every config shipped in configs/ runs through the real CLI, and your own data (ImageFolder, CSV) works through
``vitlab fit|validate|test|predict`` as the README and the config templates say."""

import shutil
import sys
from unittest import mock

import pytest

from tests.conftest import REPO, needs_fmnist
from tests.test_cli import run
from vitlab.cli import run_cli

CONFIGS = REPO / "configs"
FAST = ["--trainer.fast_dev_run=true", "--data.init_args.num_workers=0"]
TINY_SCENES = ["--data.init_args.train_size=8", "--data.init_args.val_size=4", "--data.init_args.test_size=4",
               "--data.init_args.image_size=96"]
# per shipped config: the data overrides that make it run on a tiny real data set ({folder} / {csv} / {scenes} /
# {mae} are filled in)
OVERRIDES = {
    "_test/tiny_fmnist.yaml": ["--data.init_args.limit=256"],
    "classify/fmnist_demo.yaml": ["--data.init_args.limit=256", "--data.init_args.batch_size=16"],
    "classify/fmnist_best.yaml": ["--data.init_args.limit=256", "--data.init_args.batch_size=16"],
    "classify/imagefolder.yaml": ["--data.init_args.train_dir={folder}", "--data.init_args.batch_size=4"],
    "classify/csv.yaml": ["--data.init_args.train_csv={csv}", "--data.init_args.batch_size=4"],
    # {scenes}: the tiny scenes of the ``scenes`` fixture (TINY_SCENES are its sizes: reused, not rewritten)
    "detect/scenes_demo.yaml": ["--data.init_args.root={scenes}", *TINY_SCENES, "--data.init_args.batch_size=4"],
    "detect/scenes_best.yaml": ["--data.init_args.root={scenes}", *TINY_SCENES, "--data.init_args.batch_size=4"],
    "classify/fmnist_10pct_scratch.yaml": ["--data.init_args.limit=2000", "--data.init_args.batch_size=16"],
    "classify/fmnist_10pct_mae.yaml": ["--data.init_args.limit=2000", "--data.init_args.batch_size=16",
                                       "--model.init_args.pretrained={mae}"],
    "generate/fmnist_mae.yaml": ["--data.init_args.limit=256", "--data.init_args.batch_size=16"],
    "generate/scenes_mae.yaml": ["--data.init_args.train_dir={scenes}/train", "--data.init_args.batch_size=4",
                                 "--model.init_args.model_options={{img_size: 96}}"],
    "generate/fmnist_diffusion.yaml": ["--data.init_args.limit=256", "--data.init_args.batch_size=16",
                                       "--model.init_args.num_preview=1", "--model.init_args.sample_steps=2"],
    "generate/fmnist_diffusion_demo.yaml": ["--data.init_args.limit=256", "--data.init_args.batch_size=16",
                                            "--model.init_args.num_preview=1", "--model.init_args.sample_steps=2"],
    "generate/mae_imagefolder.yaml": ["--data.init_args.train_dir={folder}", "--data.init_args.batch_size=4",
                                      "--model.init_args.model_options={{img_size: 64}}"],
    "detect/coco.yaml": ["--data.init_args.train_images={scenes}/train",
                         "--data.init_args.train_annotations={scenes}/annotations/train.json",
                         "--data.init_args.val_images={scenes}/val",
                         "--data.init_args.val_annotations={scenes}/annotations/val.json",
                         "--data.init_args.batch_size=1",  # ViT-S/16 and its pyramid at 256 px, not 640: seconds
                         "--model.init_args.model_options={{img_size: 256, drop_path_rate: 0.1}}"],
    "detect/coco_small.yaml": ["--data.init_args.train_images={scenes}/train",
                               "--data.init_args.train_annotations={scenes}/annotations/train.json",
                               "--data.init_args.batch_size=2"],
}


def shipped_configs() -> list[str]:
    return sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml") if p.parts[-2] != "augment")


def test_every_shipped_config_has_overrides_here():
    assert shipped_configs() == sorted(OVERRIDES), "add the new config to OVERRIDES so that it runs in a test"


@pytest.fixture()
def own_data(image_folder, tmp_path):
    """The ``image_folder`` fixture (3 classes x 8 real images) as train/val/test folders and CSV lists."""
    splits = {}
    for split in ("val", "test"):
        splits[split] = tmp_path / split
        shutil.copytree(image_folder, splits[split])
    lists = {}
    for split, root in (("train", image_folder), *splits.items()):
        rows = ["path,label"] + [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
        lists[split] = root / f"{split}.csv"
        lists[split].write_text("\n".join(rows) + "\n")
    return {"folder": image_folder, "csv": lists["train"], "dirs": splits, "lists": lists}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """The built-in scenes at the TINY_SCENES sizes (train 8, val 4, test 4 at 96 px): images + COCO JSON."""
    from vitlab.data.scenes import write_scenes

    root = tmp_path_factory.mktemp("scenes")
    write_scenes(root, {"train": 8, "val": 4, "test": 4}, image_size=96)
    return root


@pytest.fixture(scope="module")
def mae(tmp_path_factory):
    """An MAE checkpoint of the demo ViT (random weights, as Lightning writes it) for the fine-tuning config."""
    import torch

    from vitlab.tasks import MAETask

    task = MAETask("vitlab_fmnist", decoder_dim=64)
    path = tmp_path_factory.mktemp("mae") / "mae.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams), "vitlab_task": "MAETask"},
               path)
    return path


@needs_fmnist
@pytest.mark.parametrize("config", sorted(OVERRIDES))
def test_config_fits_through_the_real_cli(config, own_data, scenes, mae, tmp_path):
    extra = [o.format(folder=own_data["folder"], csv=own_data["csv"], scenes=scenes, mae=mae)
             for o in OVERRIDES[config]]
    res = run(["fit", "--config", str(CONFIGS / config), *FAST, *extra, f"--trainer.default_root_dir={tmp_path}"],
              REPO)
    assert "`Trainer.fit` stopped: `max_steps=1` reached" in res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    if "bf16-mixed" in (CONFIGS / config).read_text():  # a GPU template on this CPU: 32-true and one warning
        warnings = [ln for ln in res.stderr.splitlines() if "bf16-mixed" in ln]
        assert len(warnings) == 1 and "runs in 32-true" in warnings[0], res.stderr[-2000:]


def _cli(subcommand: str, config: str, *args: str):
    """The CLI in this process (jsonargparse parses exactly as for ``vitlab``), to inspect what it built."""
    with mock.patch.object(sys, "argv", ["vitlab"]):
        return run_cli([subcommand, "--config", str(CONFIGS / config), *FAST, "--data.init_args.batch_size=4", *args])


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize("config,key", [("classify/imagefolder.yaml", "train_dir"), ("classify/csv.yaml", "train_csv")])
def test_own_data_with_the_training_set_alone(subcommand, config, key, own_data, tmp_path):
    """The README's command: only the training data given; validation (and test) use val_fraction of it."""
    source = own_data["folder"] if key == "train_dir" else own_data["csv"]
    cli = _cli(subcommand, config, f"--data.init_args.{key}={source}", f"--trainer.default_root_dir={tmp_path}")
    data = cli.datamodule
    assert data.class_names == ["class_0", "class_1", "class_2"] and cli.model.hparams.num_classes == 3
    split = "val" if subcommand in ("fit", "validate") else "test"
    assert len(data._sets[split]) == round(24 * 0.1)  # the held-out 10 %, also for test / predict
    if subcommand == "test":
        assert "test/acc" in cli.trainer.callback_metrics


@pytest.mark.parametrize("config,keys", [("classify/imagefolder.yaml", ("train_dir", "val_dir", "test_dir")),
                                         ("classify/csv.yaml", ("train_csv", "val_csv", "test_csv"))])
def test_own_data_with_val_and_test_splits(config, keys, own_data, tmp_path):
    csv = keys[0] == "train_csv"
    train, val, test = ((own_data["lists"][s] for s in ("train", "val", "test")) if csv else
                        (own_data["folder"], own_data["dirs"]["val"], own_data["dirs"]["test"]))
    paths = [f"--data.init_args.{k}={v}" for k, v in zip(keys, (train, val, test))]
    fit = _cli("fit", config, *paths, f"--trainer.default_root_dir={tmp_path}")
    assert len(fit.datamodule._sets["train"]) == 24 and len(fit.datamodule._sets["val"]) == 24
    test_run = _cli("test", config, *paths, f"--trainer.default_root_dir={tmp_path}")
    assert len(test_run.datamodule._sets["test"]) == 24


def test_own_data_val_fraction(own_data, tmp_path, capsys):
    cli = _cli("fit", "classify/imagefolder.yaml", f"--data.init_args.train_dir={own_data['folder']}",
               "--data.init_args.val_fraction=0.25", "--trainer.precision=32-true",
               f"--trainer.default_root_dir={tmp_path}")
    assert len(cli.datamodule._sets["val"]) == 6 and len(cli.datamodule._sets["train"]) == 18
    assert "bf16" not in capsys.readouterr().err  # the fallback warning only when the precision falls back


def test_test_without_test_or_validation_split_is_one_clear_error(own_data, tmp_path):
    from vitlab.errors import VitlabError

    with pytest.raises(VitlabError, match="no test or validation split for test"):
        _cli("test", "classify/imagefolder.yaml", f"--data.init_args.train_dir={own_data['folder']}",
             "--data.init_args.val_fraction=0", f"--trainer.default_root_dir={tmp_path}")


@pytest.mark.parametrize("config,internal", [("classify/imagefolder.yaml", "train_csv"),
                                             ("classify/csv.yaml", "train_dir")])
def test_help_and_print_config_show_only_real_options(config, internal, tmp_path):
    res = run(["fit", "--config", str(CONFIGS / config), "--print_config"], tmp_path)
    data = res.stdout[res.stdout.index("\ndata:"):res.stdout.index("\ncheckpoint:")]
    for leaked in ("train:", "val:", "test:", internal):
        assert f" {leaked}" not in data, f"{leaked} leaks into --print_config:\n{data}"
    assert "val_fraction: 0.1" in data and "batch_size: 64" in data
