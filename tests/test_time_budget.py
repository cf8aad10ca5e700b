"""TimeBudget: when ``max_time`` would cut the warmup-cosine schedule, the schedule ends inside the cap (the last
step trains at the floor LR, not mid-cosine) and the run stops there; with time to spare nothing changes. A fake
clock makes every training step last one second, for Lightning's Timer and the callback alike."""

import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from vitlab.callbacks import TimeBudget
from vitlab.cli import run_cli
from vitlab.tasks.optim import OptimConfig, WarmupCosine

CONFIGS = Path(__file__).parents[1] / "configs"
STEPS_PER_EPOCH, EPOCHS = 10, 20  # 200 planned steps
OPTIM = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.01)


class _Boring(L.LightningModule):
    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.layer, self.clock, self.lrs = torch.nn.Linear(4, 1), clock, []

    def training_step(self, batch, batch_idx):
        self.clock[0] += 1.0
        self.lrs.append(self.optimizers().param_groups[0]["lr"])
        return self.layer(batch[0]).pow(2).mean()

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(STEPS_PER_EPOCH * 2, 4))
        return torch.utils.data.DataLoader(data, batch_size=2)

    def configure_optimizers(self):
        opt, sched = OPTIM.build([{"params": self.parameters()}], EPOCHS * STEPS_PER_EPOCH, STEPS_PER_EPOCH)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _fit(monkeypatch, seconds: float, callbacks: list) -> tuple[_Boring, L.Trainer]:
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    model = _Boring(clock)
    trainer = L.Trainer(max_epochs=EPOCHS, max_time=timedelta(seconds=seconds), callbacks=callbacks,
                        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model)
    return model, trainer


def _schedule(trainer) -> WarmupCosine:
    return trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]


def test_the_cap_alone_stops_mid_cosine(monkeypatch):
    model, trainer = _fit(monkeypatch, 100, [])
    assert trainer.global_step == 100
    assert model.lrs[-1] > 0.4  # half-way down the cosine: what a slower machine used to ship


def test_the_schedule_ends_inside_the_cap(monkeypatch):
    budget = TimeBudget(every=5, start=20, margin=0.03)
    model, trainer = _fit(monkeypatch, 100, [budget])
    schedule = _schedule(trainer)
    assert schedule.planned == 200
    assert 94 <= schedule.total <= 97  # 3 % of the 100 s left for the end of the run
    assert trainer.global_step == schedule.total  # stopped where its schedule ends, before the cap
    assert model.lrs[-1] < 0.05  # the last steps train at (near) the floor LR
    assert budget.ends and budget.ends[-1][1] == schedule.total


def test_time_to_spare_changes_nothing(monkeypatch):
    budget = TimeBudget(every=5, start=20)
    model, trainer = _fit(monkeypatch, 1000, [budget])
    assert trainer.global_step == 200 and _schedule(trainer).total == 200 and not budget.ends
    assert model.lrs[-1] == pytest.approx(0.01, abs=1e-3)


def test_a_shortfall_within_the_margin_keeps_the_schedule(monkeypatch):
    """200 steps in a 204 s cap: the estimate with its 3 % reserve falls ~1.5 % short, which is noise, not a cut."""
    budget = TimeBudget(every=5, start=20, margin=0.03)
    _, trainer = _fit(monkeypatch, 204, [budget])
    assert trainer.global_step == 200 and _schedule(trainer).total == 200 and not budget.ends


@pytest.mark.parametrize("config", ["fmnist_demo", "fmnist_best"])
def test_the_classification_configs_list_it(config):
    """Opt-in: the configs where it was measured to help list it (docs/cli.md); a cap alone does not add it."""
    trainer = yaml.safe_load((CONFIGS / "classify" / f"{config}.yaml").read_text())["trainer"]
    assert trainer["max_time"] and {"class_path": "vitlab.callbacks.TimeBudget"} in trainer["callbacks"]


def test_the_cli_builds_it_only_when_listed(tmp_path):
    common = ["--config", str(CONFIGS / "_test" / "tiny_fmnist.yaml"), f"--trainer.default_root_dir={tmp_path}",
              "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
              "--trainer.max_time=00:00:10:00"]
    listed = run_cli(["fit", *common, "--trainer.callbacks+=vitlab.callbacks.TimeBudget"]).trainer.callbacks
    assert sum(isinstance(c, TimeBudget) for c in listed) == 1
    assert not any(isinstance(c, TimeBudget) for c in run_cli(["fit", *common]).trainer.callbacks)


def test_a_shortened_schedule_survives_a_checkpoint(tmp_path):
    opt, sched = OPTIM.build([{"params": [torch.nn.Parameter(torch.zeros(1))]}], 200, 10)
    sched.lr_lambdas[0].total = 97
    torch.save(sched.state_dict(), tmp_path / "sched.pt")
    _, resumed = OPTIM.build([{"params": [torch.nn.Parameter(torch.zeros(1))]}], 200, 10)
    resumed.load_state_dict(torch.load(tmp_path / "sched.pt", weights_only=True))
    assert (resumed.lr_lambdas[0].total, resumed.lr_lambdas[0].planned) == (97, 200)
    assert resumed.lr_lambdas[0](97) == pytest.approx(0.01)
