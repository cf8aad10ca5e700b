"""Diffusion: the rectified-flow pair, the numpy sampler (exact on a known field), classifier-free guidance, EMA in
the checkpoint, FID plumbing, the Sampler API and `vitlab sample`."""

import numpy as np
import pytest
import torch
from vitlab_edge.sampling import initial_noise, sample, to_uint8

import vitlab
from tests.conftest import needs_fmnist
from vitlab.metrics import generation_scores
from vitlab.models.diffusion import Denoiser, denoiser_cfg, flow_pair, to_model_space
from vitlab.tasks import DiffusionTask


@pytest.fixture(scope="module")
def diffusion_ckpt(tmp_path_factory):
    """A tiny DiffusionTask trained a few steps (so that its EMA differs from its weights), saved as Lightning
    writes checkpoints."""
    torch.manual_seed(0)
    task = DiffusionTask("dit_fmnist_tiny", class_names=[f"c{i}" for i in range(10)], ema_decay=0.5,
                         sample_steps=4)
    opt = torch.optim.AdamW(task.model.parameters(), lr=1e-2)
    batch = {"image": torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8), "target": torch.arange(16) % 10}
    for step in range(3):
        loss = task._loss(task.model, batch, drop_labels=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        task.on_train_batch_end(None, batch, step)
    path = tmp_path_factory.mktemp("diffusion") / "diffusion.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "vitlab_task": "DiffusionTask"}, path)
    return task, path


def test_flow_pair_interpolates_data_and_noise_and_targets_the_velocity():
    x0, noise = torch.rand(3, 1, 4, 4) * 2 - 1, torch.randn(3, 1, 4, 4)
    xt, v = flow_pair(x0, torch.tensor([0.0, 1.0, 0.25]), noise)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], noise[1])
    torch.testing.assert_close(xt[2], 0.75 * x0[2] + 0.25 * noise[2])
    torch.testing.assert_close(v, noise - x0)
    torch.testing.assert_close(xt[2] - 0.25 * v[2], x0[2])  # one exact step back to the data
    assert to_model_space(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_sampler_is_exact_on_the_flow_of_a_single_image(method, steps):
    """With all data at one image x*, the rectified-flow velocity is (x - x*) / t and its path is a straight
    line, which Euler and Heun integrate exactly: every seed must land on x*."""
    target = np.linspace(-1, 1, 2 * 3 * 5, dtype=np.float32).reshape(1, 2, 3, 5)
    calls = []

    def step(x, t, y, g):
        calls.append(float(t[0]))
        return (x - target) / t[:, None, None, None]

    images = sample(step, [0, 1, 2], (2, 3, 5), steps=steps, method=method, seed=7)
    assert images.shape == (3, 3, 5, 2) and images.dtype == np.uint8
    assert (images == to_uint8(target)).all()
    assert min(calls) > 0 and len(calls) == (2 * steps - 1 if method == "heun" else steps)  # never at t = 0


def test_noise_is_the_seeds_and_independent_of_the_batch_size():
    expected = np.random.default_rng(3).standard_normal((4, 1, 2, 2), dtype=np.float32)
    assert np.array_equal(initial_noise(4, (1, 2, 2), 3), expected)

    def step(x, t, y, g):
        return x * 0.5 + y[:, None, None, None] * 0.01

    a = sample(step, list(range(10)), (1, 4, 4), steps=3, seed=1, batch_size=3)
    assert np.array_equal(a, sample(step, list(range(10)), (1, 4, 4), steps=3, seed=1, batch_size=10))
    assert not np.array_equal(a, sample(step, list(range(10)), (1, 4, 4), steps=3, seed=2))


def test_guidance_mixes_the_conditional_and_unconditional_predictions_in_one_batch():
    torch.manual_seed(0)
    model = Denoiser(denoiser_cfg("dit_fmnist_tiny")).eval()
    for p in model.parameters():  # adaLN-Zero starts at zero: give the class embedding something to do
        torch.nn.init.normal_(p, std=0.05)
    x, t, y = torch.randn(3, 1, 28, 28), torch.rand(3), torch.tensor([1, 4, 9])
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, model.null_class))
        g = torch.tensor([0.0, 1.0, 3.0])
        torch.testing.assert_close(model.guided(x, t, y, g), uncond + g.view(-1, 1, 1, 1) * (cond - uncond),
                                   rtol=1e-4, atol=1e-5)
    assert not torch.allclose(cond, uncond)


def test_checkpoint_holds_the_ema_and_sampling_uses_it(diffusion_ckpt):
    task, path = diffusion_ckpt
    state = torch.load(path, weights_only=True)["state_dict"]
    ema_keys = [k for k in state if k.startswith("ema.")]
    assert ema_keys and any(not torch.equal(state[k], state["model." + k[4:]]) for k in ema_keys)
    loaded = vitlab.load(str(path))
    assert all(torch.equal(v, state[f"ema.{k}"]) for k, v in loaded.ema.state_dict().items())
    images = loaded.sample([0, 3], seed=5)
    assert images.shape == (2, 28, 28, 1) and np.array_equal(images, task.sample([0, 3], seed=5))
    swapped = vitlab.load(str(path))
    swapped.ema.load_state_dict(swapped.model.state_dict())  # the raw weights give other images
    assert not np.array_equal(images, swapped.sample([0, 3], seed=5))


def test_fid_plumbing_identical_sets_give_zero_and_shifted_sets_more(fmnist_test):
    torch.manual_seed(0)
    classifier = vitlab.create_model("vitlab_fmnist", num_classes=10).eval()
    real = fmnist_test[0][:400][:, None]
    same = generation_scores(classifier, real, real, other_real=real)
    assert abs(same["fid_floor"]) < 1e-3  # the floor from the real features computed once
    brighter = np.clip(real.astype(int) + 60, 0, 255).astype(np.uint8)
    labels = fmnist_test[1][:400]
    shifted = generation_scores(classifier, real, brighter, labels=labels)
    assert abs(same["fid"]) < 1e-3 and shifted["fid"] > 1.0
    with torch.no_grad():  # class consistency: the classifier's top-1 accuracy on the fakes, computed here
        predicted = classifier(torch.from_numpy(brighter)).argmax(1).numpy()
    assert shifted["class_acc"] == pytest.approx(100.0 * (predicted == labels).mean())


def test_sampler_api_and_cli(diffusion_ckpt, tmp_path, capsys):
    from PIL import Image

    from vitlab.cli import main

    task, path = diffusion_ckpt
    sampler = vitlab.Sampler.load(path, device="cpu")
    assert sampler.labels == [f"c{i}" for i in range(10)] and sampler.input_size == (1, 28, 28)
    by_name = sampler.sample(["c2", "c7"], seed=3)
    assert np.array_equal(by_name, sampler.sample([2, 7], seed=3))
    unconditional = sampler.sample([10, 2], seed=3)  # id 10 is "no label", as the edge kit's Sampler takes it
    assert sampler.num_classes == 10
    assert np.array_equal(unconditional, task.sample([10, 2], seed=3))
    assert not np.array_equal(unconditional[0], by_name[0])
    with pytest.raises(vitlab.VitlabError, match=r"not a class of this model: .*0\.\.\.9 \(10: no label\)"):
        sampler.sample([11])
    main(["sample", str(path), "--per-class", "2", "--steps", "2", "--out", str(tmp_path / "s")])
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert len(files) == 21 and "grid.png" in files and "00019_class9.png" in files
    assert Image.open(tmp_path / "s" / "grid.png").size == (2 * 56 + 3 * 2, 10 * 56 + 11 * 2)
    assert "20 images [torch (cpu)]" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["sample", str(path), "--labels", "shoe", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "'shoe' is not a class" in capsys.readouterr().err


def test_vitlab_test_logs_fid_floor_and_class_consistency(trained_ckpt, tmp_path):
    """`vitlab test` on the demo diffusion config with a classifier checkpoint: test/fid, test/fid_floor and
    test/class_acc are logged and a grid of samples is written."""
    import sys
    from unittest import mock

    from tests.conftest import REPO
    from vitlab.cli import run_cli

    args = ["test", "--config", str(REPO / "configs/generate/fmnist_diffusion_demo.yaml"),
            "--trainer.fast_dev_run=true", "--data.init_args.limit=64", "--data.init_args.eval_batch_size=32",
            "--model.init_args.model_name=dit_fmnist_tiny", "--model.init_args.sample_steps=2",
            "--model.init_args.num_preview=1", f"--model.init_args.eval_classifier={trained_ckpt}",
            "--model.init_args.eval_samples=32", f"--trainer.default_root_dir={tmp_path}"]
    with mock.patch.object(sys, "argv", ["vitlab"]):
        cli = run_cli(args)
    metrics = cli.trainer.callback_metrics
    assert {"test/loss", "test/fid", "test/fid_floor", "test/class_acc"} <= set(metrics)
    # class consistency recomputed here: the classifier on the test's 32 samples (labels 0..9 cycled, seed 1)
    labels = np.arange(32) % 10
    fake = torch.from_numpy(cli.model.sample(labels, seed=1)).permute(0, 3, 1, 2)
    with torch.no_grad():
        predicted = vitlab.load(trained_ckpt).model(fake).argmax(1).numpy()
    assert float(metrics["test/class_acc"]) == pytest.approx(100.0 * (predicted == labels).mean())
    # an untrained denoiser's samples are far from real images: measured FID 141 vs the real-vs-real floor 21
    assert float(metrics["test/fid"]) > 3 * float(metrics["test/fid_floor"]) > 0
    assert (tmp_path / "test_report" / "samples_test.png").is_file()


def test_diffusion_configs_score_with_the_classifier_make_demo_writes():
    import yaml

    from tests.conftest import REPO
    from vitlab.demo import demo_tasks

    _, out, _ = demo_tasks()["classify"].demo  # `make demo` = `vitlab demo`: OUT/checkpoints/last.ckpt
    for name in ("fmnist_diffusion.yaml", "fmnist_diffusion_demo.yaml"):
        cfg = yaml.safe_load((REPO / "configs/generate" / name).read_text())
        assert cfg["model"]["init_args"]["eval_classifier"] == f"{out}/checkpoints/last.ckpt", name


@needs_fmnist
def test_missing_eval_classifier_stops_test_before_the_first_step(tmp_path, monkeypatch):
    import sys
    from unittest import mock

    from tests.conftest import REPO
    from vitlab.cli import run_cli

    steps = []
    monkeypatch.setattr(DiffusionTask, "test_step", lambda self, batch, batch_idx: steps.append(batch_idx))
    missing = tmp_path / "runs/demo/checkpoints/last.ckpt"
    args = ["test", "--config", str(REPO / "configs/generate/fmnist_diffusion_demo.yaml"),
            "--trainer.fast_dev_run=true", "--data.init_args.limit=64", "--model.init_args.model_name=dit_fmnist_tiny",
            f"--model.init_args.eval_classifier={missing}", f"--trainer.default_root_dir={tmp_path}"]
    with mock.patch.object(sys, "argv", ["vitlab"]), pytest.raises(vitlab.VitlabError) as e:
        run_cli(args)
    assert str(e.value).startswith("model.init_args.eval_classifier: ") and "`make demo`" in str(e.value)
    assert str(missing) in str(e.value) and "\n" not in str(e.value)
    assert steps == []  # before the first test batch, not after the samples are generated
