import lightning as L
import pytest
import torch

import vitlab
from tests.conftest import needs_fmnist
from vitlab.data import FashionMNISTDataModule
from vitlab.tasks import ClassificationTask

TINY = dict(model_name="vitlab_tiny", model_options={"img_size": 28, "patch_size": 7, "in_chans": 1})


def _trainer(tmp_path, **kw):
    return L.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, **kw)


def test_layer_decay_scales_lr_per_depth():
    task = ClassificationTask(**TINY, optim={"layer_decay": 0.5, "lr": 1.0})
    groups = task._param_groups()
    scales = sorted({g.get("lr_scale", 1.0) for g in groups})
    assert scales[0] == pytest.approx(0.5 ** 3) and scales[-1] == 1.0  # embed, 2 blocks, head


def test_learns_on_real_images_and_reloads_from_checkpoint_alone(tmp_path, fmnist_test):
    L.seed_everything(0)
    task = ClassificationTask(**TINY, num_classes=10, optim={"lr": 3e-3, "warmup_epochs": 0.2},
                              mixup_alpha=0.2, cutmix_alpha=0.5, mix_prob=0.5, ema_decay=0.9)
    dm = FashionMNISTDataModule(limit=1024, batch_size=64, val_fraction=0.25)
    trainer = _trainer(tmp_path, max_epochs=3)
    trainer.fit(task, dm)
    val_acc = float(trainer.callback_metrics["val/acc"])
    assert val_acc > 0.3, val_acc  # chance is 0.10; mixup + EMA slow the first epochs down
    trainer.save_checkpoint(tmp_path / "t.ckpt")
    again = vitlab.load(tmp_path / "t.ckpt")
    assert again.hparams.ema_decay == 0.9 and again.preprocess == task.preprocess
    x = torch.from_numpy(fmnist_test[0][:16]).unsqueeze(1)
    task.eval()
    assert torch.allclose(task(x), again(x), atol=1e-5)


@needs_fmnist
def test_test_stage_writes_report(tmp_path):
    task = ClassificationTask(**TINY, num_classes=10)
    dm = FashionMNISTDataModule(limit=256, batch_size=128)
    trainer = L.Trainer(accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False,
                        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="logs"))
    res = trainer.test(task, dm)[0]
    assert {"test/acc", "test/top5", "test/f1", "test/precision", "test/recall"} <= set(res)
    log_dir = tmp_path / "logs" / "version_0"
    assert (log_dir / "confusion_matrix.png").stat().st_size > 1000
    rows = (log_dir / "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,precision,recall,f1,support" and len(rows) == 11
    assert sum(int(r.rsplit(",", 1)[1]) for r in rows[1:]) == 256


@needs_fmnist
def test_test_without_logger_writes_report_under_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    task = ClassificationTask(**TINY, num_classes=10)
    _trainer(run).test(task, FashionMNISTDataModule(limit=128, batch_size=128))
    report = run / "test_report"
    assert (report / "per_class.csv").is_file() and (report / "confusion_matrix.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing loose in the working directory


def test_test_time_flip_in_eval_reload_and_export(tmp_path):
    """``test_time_flip``: eval logits are the mean over the image and its mirror (so mirror-invariant), training
    logits are not averaged, and the flag comes back from the checkpoint and into the exported graph."""
    import numpy as np
    import onnxruntime as ort

    from vitlab.onnx import count_fused_attention
    from vitlab.onnx.graph import export_graph

    torch.manual_seed(0)
    task = ClassificationTask(**TINY, num_classes=10, test_time_flip=True)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    task.eval()
    with torch.no_grad():
        both = task(x)
        task.model.test_time_flip = False
        one, mirrored = task(x), task(x.flip(-1))
        task.model.test_time_flip = True
        assert torch.allclose(both, (one + mirrored) / 2, atol=1e-5) and not torch.allclose(one, mirrored, atol=1e-3)
        assert torch.allclose(task(x.flip(-1)), both, atol=1e-5)
        task.train()
        assert torch.allclose(task.model.head(task.model.backbone(x)["pooled"]), task(x))  # no averaging in training
    ckpt = tmp_path / "flip.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": L.__version__}, ckpt)
    again = vitlab.load(ckpt)
    assert again.model.test_time_flip and torch.allclose(again.eval()(x), both, atol=1e-5)
    graph = export_graph(again.model)
    assert count_fused_attention(graph) == again.model.backbone.depth  # one pass over the images and their mirrors
    logits = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"images": x.numpy()})
    np.testing.assert_allclose(logits[0], both.numpy(), atol=1e-4)
