"""The optimiser settings: one OptimConfig per task with the task's defaults, plain values in the checkpoint, old
flat-key checkpoints still load, and warmup epochs counted in epochs of the data even when max_steps ends first."""

import lightning as L
import pytest
import torch

import vitlab
from tests.conftest import REPO, needs_fmnist
from vitlab.errors import VitlabError
from vitlab.tasks import ClassificationTask, DetectionTask, DiffusionTask, MAETask, OptimConfig, migrate_hparams

TINY = dict(model_name="vitlab_tiny", model_options={"img_size": 28, "patch_size": 7, "in_chans": 1})
CFG = REPO / "configs" / "_test" / "tiny_fmnist.yaml"


def test_keys_left_out_keep_each_tasks_defaults():
    mae = MAETask(**TINY, decoder_dim=16, decoder_depth=1, optim={"lr": 1e-4})
    assert mae.optim.lr == 1e-4 and mae.optim.betas == (0.9, 0.95)  # MAE's betas stay
    gen = DiffusionTask(model_name="dit_fmnist_tiny", optim={"warmup_steps": 7})
    assert gen.optim.weight_decay == 0.0 and gen.optim.min_lr_ratio == 0.1 and gen.optim.warmup_steps == 7
    det = DetectionTask("vitdet_scenes", 3, model_options={"img_size": 64, "depth": 1, "embed_dim": 32, "num_heads": 2})
    assert det.optim == OptimConfig(lr=1e-3, weight_decay=0.05, warmup_epochs=1.0)


def test_unknown_or_negative_keys_are_one_line_errors():
    with pytest.raises(VitlabError, match=r"unknown key\(s\) \['lrr'\]; known: \['lr',"):
        ClassificationTask(**TINY, optim={"lrr": 1e-3})
    with pytest.raises(VitlabError, match="lr=-1.0 must be >= 0"):
        ClassificationTask(**TINY, optim={"lr": -1.0})


def test_checkpoint_keeps_plain_values_and_old_flat_keys_migrate(tmp_path):
    task = ClassificationTask(**TINY, optim={"lr": 4e-3, "layer_decay": 0.5})
    assert task.hparams["optim"] == {**OptimConfig().as_dict(), "lr": 4e-3, "layer_decay": 0.5}
    assert all(isinstance(v, (int, float, list, type(None))) for v in task.hparams["optim"].values())
    ckpt = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
            "vitlab_task": "ClassificationTask"}
    torch.save(ckpt, tmp_path / "new.ckpt")
    assert vitlab.load(tmp_path / "new.ckpt").optim == task.optim  # weights_only=True inside

    old = {k: v for k, v in task.hparams.items() if k != "optim"}  # as written before OptimConfig
    old.update(lr=4e-3, weight_decay=0.05, betas=(0.9, 0.999), warmup_epochs=1.0, min_lr_ratio=0.01, layer_decay=0.5)
    torch.save({**ckpt, "hyper_parameters": old}, tmp_path / "old.ckpt")
    assert vitlab.load(tmp_path / "old.ckpt").optim == task.optim
    assert migrate_hparams({"a": 1}) == {"a": 1}


class _Images(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randint(0, 256, (1, 28, 28), generator=g, dtype=torch.uint8), "target": i % 10}


class _LR(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[-1]["lr"])


@pytest.mark.parametrize("optim,peak", [({"warmup_epochs": 1.0}, 8), ({"warmup_steps": 5}, 5)])
def test_warmup_counts_epochs_of_the_data_when_max_steps_ends_first(tmp_path, optim, peak):
    """8 batches per epoch, max_epochs 10 but max_steps 20: one warmup epoch is 8 steps (the old rule,
    total / max_epochs, made it 2)."""
    L.seed_everything(0)
    task = ClassificationTask(**TINY, optim={"lr": 1.0, **optim})
    lrs = _LR()
    trainer = L.Trainer(accelerator="cpu", max_epochs=10, max_steps=20, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[lrs],
                        default_root_dir=tmp_path)
    trainer.fit(task, torch.utils.data.DataLoader(_Images(), batch_size=8))
    assert len(lrs.lrs) == 20
    assert lrs.lrs[0] == pytest.approx(1.0 / peak) and lrs.lrs[peak - 1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs.lrs[: peak - 1], lrs.lrs[1:peak]))  # rising to the peak, then falling
    assert lrs.lrs[peak] == pytest.approx(1.0) and all(a > b for a, b in zip(lrs.lrs[peak:], lrs.lrs[peak + 1:]))


@needs_fmnist
def test_cli_validates_an_old_flat_key_checkpoint_and_names_flat_keys_in_a_config(tmp_path, capsys):
    """`--ckpt_path` (Lightning reads the checkpoint's hyper-parameters itself) migrates an older checkpoint too;
    a config or flag with the keys flat under model.init_args is one line saying where they moved."""
    from vitlab.cli import main

    task = ClassificationTask(**TINY, num_classes=10, optim={"lr": 3e-3, "warmup_epochs": 0.5})
    old = {k: v for k, v in task.hparams.items() if k != "optim"}
    old.update(lr=3e-3, weight_decay=0.05, betas=(0.9, 0.999), warmup_epochs=0.5, min_lr_ratio=0.01,
               layer_decay=None, _class_path="vitlab.tasks.ClassificationTask")
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": old, "vitlab_task": "ClassificationTask",
                "pytorch-lightning_version": L.__version__, "epoch": 0, "global_step": 0}, tmp_path / "old.ckpt")
    root = f"--trainer.default_root_dir={tmp_path / 'run'}"
    main(["validate", "--config", str(CFG), root, f"--ckpt_path={tmp_path / 'old.ckpt'}"])
    assert "val/acc" in capsys.readouterr().out

    flat = tmp_path / "flat.yaml"
    flat.write_text(CFG.read_text().replace("    optim:\n      lr: 3.0e-3\n      warmup_epochs: 0.5\n",
                                            "    lr: 3.0e-3\n    warmup_epochs: 0.5\n"))
    for args in (["fit", "--config", str(flat), root], ["fit", "--config", str(CFG), "--model.init_args.lr=1e-3"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and "moved under model.init_args.optim" in err[0], err
