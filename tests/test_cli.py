"""End-to-end: the `vitlab` CLI on the tiny test config and real Fashion-MNIST images."""

import os
import signal
import subprocess
import time

import pytest
import torch

import vitlab
from tests.conftest import REPO, VITLAB, needs_fmnist

CFG = str(REPO / "configs" / "_test" / "tiny_fmnist.yaml")


def run(args, cwd, timeout=300, check=True):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([*VITLAB, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"vitlab {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@needs_fmnist
def test_fit_then_test_then_validate(tmp_path):
    root = tmp_path / "run"
    # "best" by the highest val loss: epoch 0 stays best, yet last.ckpt must still be the final epoch
    run(["fit", "--config", CFG, f"--trainer.default_root_dir={root}", "--checkpoint.monitor=val/loss",
         "--checkpoint.mode=max"], REPO)
    last = root / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.parent.iterdir()) == ["best-00.ckpt", "last.ckpt"]
    ck = _ckpt(last)
    assert ck["hyper_parameters"]["num_classes"] == 10  # linked from data.num_classes
    assert ck["hyper_parameters"]["class_names"][0] == "T-shirt/top"
    assert ck["global_step"] == 12 and ck["epoch"] == 1  # 2 epochs x 6 batches (384 train images / 64)
    task = vitlab.load(last)  # the CLI's checkpoint rebuilds its task alone
    assert task.preprocess.labels[0] == "T-shirt/top" and task.optim.lr == 3e-3
    assert (root / "logs" / "version_0" / "metrics.csv").exists()
    assert list((root / "logs" / "version_0").glob("events.out.tfevents.*"))  # TensorBoard beside CSV
    res = run(["test", "--config", CFG, f"--trainer.default_root_dir={root}", f"--ckpt_path={last}"], REPO)
    assert "test/acc" in res.stdout
    assert (root / "logs" / "version_1" / "confusion_matrix.png").exists()
    run(["validate", "--config", CFG, f"--trainer.default_root_dir={root}", f"--ckpt_path={last}"], REPO)


def test_print_config_shows_linked_model_and_data(tmp_path):
    res = run(["fit", "--config", CFG, "--print_config"], tmp_path)
    assert "vitlab.tasks.ClassificationTask" in res.stdout and "FashionMNISTDataModule" in res.stdout


def test_unknown_model_is_one_clear_line(tmp_path):
    res = run(["fit", "--config", CFG, "--model.init_args.model_name=vit_nope"], REPO, check=False)
    assert res.returncode == 2
    assert "vitlab: error: unknown model 'vit_nope'" in res.stderr
    assert "Traceback" not in res.stderr


def test_wrong_option_and_missing_data_dir(tmp_path):
    res = run(["fit", "--config", CFG, "--model.init_args.lrr=1"], REPO, check=False)
    assert res.returncode != 0 and "lrr" in res.stderr and "Traceback" not in res.stderr
    res = run(["fit", "--config", CFG, "--data=vitlab.data.ImageFolderDataModule",
               f"--data.train_dir={tmp_path / 'nope'}"], REPO, check=False)
    assert res.returncode != 0 and "nope does not exist" in res.stderr and "Traceback" not in res.stderr


@needs_fmnist
def test_ckpt_with_pickle_payload_is_refused_not_run(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": {}, "hyper_parameters": {"x": Payload()}}))
    res = run(["test", "--config", CFG, f"--ckpt_path={evil}"], REPO, check=False)
    assert res.returncode == 2 and "vitlab: error: refusing to load" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "PWNED").exists()


@needs_fmnist
@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    common = ["--config", CFG, "--trainer.max_epochs=6", "--data.init_args.limit=2048"]
    full = tmp_path / "full"
    run(["fit", *common, f"--trainer.default_root_dir={full}"], REPO)
    expected = _ckpt(full / "checkpoints" / "last.ckpt")

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*VITLAB, "fit", *common, f"--trainer.default_root_dir={killed}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = _ckpt(last)  # whatever was on disk at the kill loads: writes are atomic
    assert interrupted["global_step"] < expected["global_step"], "the run finished before it could be killed"

    run(["fit", *common, f"--trainer.default_root_dir={killed}", "--ckpt_path=last"], REPO)
    resumed = _ckpt(last)
    assert resumed["global_step"] == expected["global_step"]
    assert resumed["epoch"] == expected["epoch"]


@needs_fmnist
@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    root = tmp_path / "ddp"
    run(["fit", "--config", CFG, f"--trainer.default_root_dir={root}", "--trainer.strategy=ddp",
         "--trainer.devices=2", "--trainer.max_epochs=1"], REPO)
    ck = _ckpt(root / "checkpoints" / "last.ckpt")
    assert ck["global_step"] == 3  # 384 train images / (2 ranks x 64)


@needs_fmnist
@pytest.mark.slow
def test_demo_smoke(tmp_path):
    res = run(["demo", "--out", str(tmp_path / "demo"), "--limit", "512", "--max-epochs", "1", "--minutes", "2"], REPO)
    assert "== vitlab demo ==" in res.stdout and "test accuracy" in res.stdout
    import json

    summary = json.loads((tmp_path / "demo" / "demo_metrics.json").read_text())
    assert summary["epochs"] == 1 and "test/acc" in summary
    assert (tmp_path / "demo" / "checkpoints" / "last.ckpt").exists()
    assert summary["export"]["fp32"]["status"] == "ok" and summary["export"]["fp32"]["eval_images"] == 512
    assert summary["export"]["fp32"]["top1_agreement_pct"] >= 99.8  # the fp32 file answers as the checkpoint
    assert (tmp_path / "demo" / "export" / "model.onnx").exists() and "ONNX int8" in res.stdout
    p = summary["predict"]  # 48 Fashion-MNIST items as files + 2 broken files, each with one record
    assert p["images"] == 50 and p["valid"] == 48 and p["errors"] == 2
    assert p["agreement_pct"] >= 98.0 and abs(p["accuracy_pct"] - p["accuracy_onnx_pct"]) <= 2.1  # one item at most
    assert len(list((tmp_path / "demo" / "overlays").glob("*.png"))) == 6
    records = [json.loads(line) for line in (tmp_path / "demo" / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(50)) and sum(r["error"] is not None for r in records) == 2


@needs_fmnist
def test_demo_detect_smoke(tmp_path):
    import json

    out = tmp_path / "demo"
    res = run(["demo", "--task", "detect", "--out", str(out), "--limit", "16", "--max-epochs", "1", "--minutes", "2"],
              REPO)
    assert "== vitlab demo (detection) ==" in res.stdout and "test mAP50" in res.stdout
    assert "ONNX fp32" in res.stdout and "ONNX int8" in res.stdout and "box overlays" in res.stdout
    summary = json.loads((out / "demo_metrics.json").read_text())
    assert summary["epochs"] == 1 and "test/map" in summary
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "scenes" / "params.json").exists()
    fp32 = summary["export"]["fp32"]
    assert fp32["status"] == "ok" and fp32["eval_images"] == 16 and fp32["gate"] == "mAP50"
    assert (out / "export" / "model.onnx").exists() and summary["export"]["int8"]["status"] == "ok"
    p = summary["predict"]  # the 16 test scenes as files, with the checkpoint and the ONNX model
    assert p["images"] == 16 and p["errors"] == 0 and abs(p["map50_onnx_pct"] - p["map50_pct"]) <= 1.0
    # `vitlab test` scores the test scenes as COCO's evaluation scores the checkpoint's predictions of the same files
    assert abs(summary["test/map_50"] * 100 - p["map50_pct"]) <= 0.5, (summary["test/map_50"], p["map50_pct"])
    assert p["matched_detections_pct"] >= 99.0  # fp32 ONNX reproduces the checkpoint's detections
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(16)) and all(len(r["boxes"]) == len(r["scores"])
                                                                     for r in records)
    assert len(list((out / "overlays").glob("*.png"))) == 6


def test_help_lists_every_command_and_each_command_has_help(capsys, monkeypatch):
    from vitlab.cli import COMMANDS, LIGHTNING_COMMANDS, main

    monkeypatch.setattr("sys.argv", ["vitlab"])
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2  # no command: the overview, as an error
    main(["--help"])
    overview = capsys.readouterr().out
    listed = {line.split()[0] for line in overview.splitlines() if line.startswith("  ") and line.split()}
    assert {"fit", "validate", "test", "predict", "export", "demo"} <= listed
    assert set(COMMANDS) | set(LIGHTNING_COMMANDS) <= listed
    for command in [*COMMANDS, *LIGHTNING_COMMANDS, "predict"]:
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and "usage:" in out, command
        if command == "predict":  # the batch predictor's options, and where Lightning's predict is
            assert "--out" in out and "--config" in out


def _one_line_error(capsys, args):
    """`vitlab ARGS` in this process: exit status 2 and one line on stderr, `vitlab: error: ...`; that line."""
    from vitlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("vitlab: error: "), err[-3000:]
    return lines[0]


@pytest.fixture()
def corrupt_checkpoints(trained_ckpt, tmp_path):
    """A real checkpoint cut in half, cut 100 bytes short, an empty file and bytes that are no checkpoint."""
    good = trained_ckpt.read_bytes()
    files = {"half.ckpt": good[: len(good) // 2], "short.ckpt": good[:-100], "empty.ckpt": b"",
             "junk.ckpt": b"\x00garbage" * 100}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / name for name in files]


def test_corrupt_checkpoint_is_one_line_in_predict_export_and_test(corrupt_checkpoints, fmnist_test, tmp_path,
                                                                   capsys):
    from PIL import Image

    Image.fromarray(fmnist_test[0][0]).save(tmp_path / "a.png")
    for ckpt in corrupt_checkpoints:
        line = _one_line_error(capsys, ["predict", str(ckpt), str(tmp_path / "a.png"), "--out",
                                        str(tmp_path / "p.jsonl")])
        assert str(ckpt) in line
        assert str(ckpt) in _one_line_error(capsys, ["export", str(ckpt), "--out", str(tmp_path / "onnx")])
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "onnx").exists()
    root = f"--trainer.default_root_dir={tmp_path / 'run'}"
    for ckpt in corrupt_checkpoints:  # Lightning reads --ckpt_path itself, with torch.load
        line = _one_line_error(capsys, ["test", "--config", CFG, root, f"--ckpt_path={ckpt}"])
        assert str(ckpt) in line
        assert ("refusing to load" if ckpt.name == "junk.ckpt" else "truncated or corrupt") in line
    from vitlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["test", "--config", CFG, root, f"--ckpt_path={tmp_path / 'none.ckpt'}"])
    err = capsys.readouterr().err  # (after Lightning's own lines about the trainer)
    assert e.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"vitlab: error: checkpoint file not found: {tmp_path / 'none.ckpt'}"


def test_options_out_of_range_are_one_line_errors(trained_ckpt, fmnist_test, tmp_path, capsys):
    import torch
    from PIL import Image

    from vitlab.tasks import DiffusionTask

    Image.fromarray(fmnist_test[0][0]).save(tmp_path / "a.png")
    for size in ("0", "-4"):
        line = _one_line_error(capsys, ["predict", str(trained_ckpt), str(tmp_path / "a.png"), "--out",
                                        str(tmp_path / "p.jsonl"), "--batch-size", size])
        assert line == f"vitlab: error: --batch-size must be >= 1, got {size}"
    assert not (tmp_path / "p.jsonl").exists()
    task = DiffusionTask("dit_fmnist_tiny", class_names=[f"c{i}" for i in range(10)], sample_steps=2)
    ckpt = tmp_path / "diffusion.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "vitlab_task": "DiffusionTask"}, ckpt)
    for option, value in (("--per-class", "0"), ("--per-class", "-1"), ("--steps", "0")):
        line = _one_line_error(capsys, ["sample", str(ckpt), "--labels", "1", option, value, "--out",
                                        str(tmp_path / "s")] if option == "--steps" else
                               ["sample", str(ckpt), option, value, "--out", str(tmp_path / "s")])
        assert line == f"vitlab: error: {option} must be >= 1, got {value}"
    assert not (tmp_path / "s").exists()
