"""MAE: masking, the masked encoder pass, the loss on hidden patches only, reconstruction, and starting a
classifier or detector from an MAE checkpoint."""

import warnings

import numpy as np
import pytest
import torch

import vitlab
from vitlab.models.backbone import WeightsWarning
from vitlab.models.mae import MaskedAutoencoder, random_masking
from vitlab.tasks import ClassificationTask, MAETask


def mae(name="vitlab_fmnist", **opts) -> MaskedAutoencoder:
    return MaskedAutoencoder(vitlab.create_backbone(name, **opts), decoder_dim=32, decoder_depth=1, decoder_heads=4)


@pytest.fixture()
def mae_ckpt(tmp_path):
    """An MAE checkpoint as Lightning writes it (hyper-parameters, state dict, task name)."""
    torch.manual_seed(0)
    task = MAETask("vitlab_fmnist", decoder_dim=32, decoder_depth=1)
    path = tmp_path / "mae.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams), "vitlab_task": "MAETask"},
               path)
    return task, path


def test_masking_shapes_split_and_restore_order():
    m = random_masking(3, 16, 0.75, torch.Generator().manual_seed(0))
    assert m["keep"].shape == (3, 4) and m["restore"].shape == (3, 16) and m["mask"].shape == (3, 16)
    assert (m["mask"].sum(1) == 12).all()
    for i in range(3):  # visible = exactly the kept patches
        assert torch.equal(torch.nonzero(~m["mask"][i]).flatten(), m["keep"][i].sort().values)
    values = torch.arange(16).expand(3, -1)  # [visible, hidden] in shuffle order, restored to patch order
    shuffled = torch.cat([values.gather(1, m["keep"]), values.gather(1, m["restore"].argsort(1)[:, 4:])], 1)
    assert torch.equal(shuffled.gather(1, m["restore"]), values)


def test_masking_is_fixed_by_the_seed_and_differs_between_samples():
    a = random_masking(4, 49, 0.75, torch.Generator().manual_seed(7))
    b = random_masking(4, 49, 0.75, torch.Generator().manual_seed(7))
    c = random_masking(4, 49, 0.75, torch.Generator().manual_seed(8))
    assert torch.equal(a["mask"], b["mask"]) and not torch.equal(a["mask"], c["mask"])
    assert len({tuple(r.tolist()) for r in a["mask"]}) == 4
    with pytest.raises(vitlab.VitlabError, match="mask_ratio"):
        random_masking(1, 16, 1.0)


@pytest.mark.parametrize("opts", [{}, {"class_token": True, "global_pool": "token"},
                                  {"class_token": True, "global_pool": "token", "reg_tokens": 2,
                                   "no_embed_class": True}])
def test_masked_encoder_on_every_patch_equals_the_plain_forward(opts):
    backbone = vitlab.create_backbone("vitlab_tiny", **opts).eval()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    keep = torch.arange(16).expand(2, -1)
    torch.testing.assert_close(backbone.forward_masked(x, keep), backbone(x)["tokens"], rtol=0, atol=0)
    part = backbone.forward_masked(x, keep[:, :4])
    assert part.shape == (2, backbone.num_prefix_tokens + 4, backbone.out_channels)


def test_patchify_round_trip_and_layout():
    model = mae()
    x = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 1, 28, 28)
    patches = model.patchify(x)
    assert patches.shape == (1, 16, 49)
    assert torch.equal(patches[0, 1], x[0, 0, :7, 7:14].reshape(-1))  # row-major patches
    assert torch.equal(model.unpatchify(patches), x)


def test_loss_counts_masked_patches_only():
    pred, target = torch.zeros(2, 16, 49), torch.ones(2, 16, 49)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :12] = True
    base = MaskedAutoencoder.loss(pred, target, mask)
    visible_changed = pred.clone()
    visible_changed[:, 12:] = 5.0
    assert MaskedAutoencoder.loss(visible_changed, target, mask) == base == 1.0
    hidden_changed = pred.clone()
    hidden_changed[:, 0] = 1.0
    assert MaskedAutoencoder.loss(hidden_changed, target, mask) < base


def test_mae_learns_a_small_batch(fmnist_test):
    torch.manual_seed(0)
    task = MAETask("vitlab_fmnist", decoder_dim=32, decoder_depth=1, lr=2e-3)
    x = torch.from_numpy(fmnist_test[0][:64])[:, None]
    opt = torch.optim.AdamW(task.parameters(), lr=2e-3)
    losses = []
    for step in range(40):
        loss = task._losses(x, torch.Generator().manual_seed(step % 4))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_reconstruct_api_from_a_checkpoint(mae_ckpt, fmnist_test):
    _, path = mae_ckpt
    task = vitlab.load(str(path))
    assert isinstance(task, MAETask)
    images = fmnist_test[0][:3]  # [3, 28, 28] uint8
    out = task.reconstruct(images, seed=1)
    assert {k: v.shape for k, v in out.items()} == {"original": (3, 1, 28, 28), "masked": (3, 1, 28, 28),
                                                     "reconstruction": (3, 1, 28, 28), "pasted": (3, 1, 28, 28),
                                                     "mask": (3, 4, 4)}
    assert np.array_equal(out["original"][:, 0], images)
    assert out["reconstruction"].dtype == np.uint8 and out["mask"].sum() == 3 * 12
    visible = ~np.kron(out["mask"], np.ones((7, 7), dtype=bool))[:, None]  # [3, 1, 28, 28]
    assert np.abs(out["pasted"][visible].astype(int) - images[:, None][visible]).max() <= 1  # put back (rounding)
    again = task.reconstruct(images, seed=1)
    assert all(np.array_equal(out[k], again[k]) for k in out)
    assert not np.array_equal(task.reconstruct(images, seed=2)["mask"], out["mask"])
    assert task.reconstruct(images, mask_ratio=0.5)["mask"].sum() == 3 * 8
    with pytest.raises(vitlab.VitlabError, match="28x28"):
        task.reconstruct(np.zeros((2, 32, 32), np.uint8))


def test_classifier_starts_from_the_mae_encoder_with_a_key_report(mae_ckpt):
    task, path = mae_ckpt
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = ClassificationTask("vitlab_fmnist", 10, pretrained=str(path), layer_decay=0.75)
    report = [str(w.message) for w in caught if issubclass(w.category, WeightsWarning)]
    assert len(report) == 1 and "2 missing (head.weight, head.bias)" in report[0] and "0 unexpected" in report[0]
    assert "MAE decoder and mask token dropped" in report[0]
    mine, theirs = clf.model.backbone.vit.state_dict(), task.model.backbone.vit.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    opt, _ = clf.build_optimizer(10, 5)  # layer decay over the MAE-initialised blocks
    assert len({g["lr"] for g in opt.param_groups}) > 2


def test_detector_starts_from_the_mae_encoder(mae_ckpt):
    task, path = mae_ckpt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeightsWarning)
        det = vitlab.create_detector("vitlab_fmnist", num_classes=3, pretrained=str(path), in_chans=1,
                                     fpn_channels=16, num_convs=1, scale_factors=(2, 1))
    w = "blocks.0.attn.qkv.weight"
    assert torch.equal(det.backbone.vit.state_dict()[w], task.model.backbone.vit.state_dict()[w])


def test_reconstruct_command_writes_a_grid_and_refuses_bad_input(mae_ckpt, image_folder, tmp_path, capsys):
    from PIL import Image

    from vitlab.cli import main

    _, path = mae_ckpt
    out = tmp_path / "grid.png"
    main(["reconstruct", str(path), str(image_folder / "class_0"), "--out", str(out), "--seed", "3"])
    assert Image.open(out).size == (4 * 84 + 5 * 2, 8 * 84 + 9 * 2)  # 4 columns, 8 images, 28 px shown at 3x
    assert "8 images, 75% of patches masked" in capsys.readouterr().out
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(SystemExit) as e:
        main(["reconstruct", str(path), str(bad), "--out", str(tmp_path / "x.png")])
    assert e.value.code == 2 and "bad.png" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
