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


@pytest.mark.parametrize("train", [False, True])
def test_hidden_pixels_cannot_reach_the_encoder_through_a_conv_stem(train):
    """The conv stem convolves across patch borders (and, training, pools BatchNorm statistics over the batch):
    changing only the hidden patches' pixels must leave the encoder's visible tokens exactly as they were."""
    torch.manual_seed(0)
    backbone = vitlab.create_backbone("vitlab_fmnist_cs").train(train)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    masking = random_masking(4, 16, 0.75, torch.Generator().manual_seed(0))
    hidden = masking["mask"].view(4, 1, 4, 4).repeat_interleave(7, 2).repeat_interleave(7, 3)  # [4, 1, 28, 28]
    other = torch.where(hidden, 255 - x, x)
    with torch.no_grad():
        a, b = backbone.forward_masked(x, masking["keep"]), backbone.forward_masked(other, masking["keep"])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.shape == (4, 4, backbone.out_channels)


@pytest.mark.parametrize("name", ["vitlab_fmnist", "vitlab_fmnist_cs"])
def test_reconstruction_of_hidden_patches_uses_visible_pixels_only(name):
    """What ``reconstruct`` shows (and ``val/mse`` scores) for a hidden patch may depend on the visible pixels only:
    not on the hidden pixels through a conv stem, nor on the hidden patch's own mean and std (``norm_pix_loss``)."""
    torch.manual_seed(0)
    model = mae(name).eval()
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    out = model.reconstruct(x, seed=3)
    hidden = torch.from_numpy(np.kron(out["mask"].numpy(), np.ones((7, 7), dtype=bool)))[:, None]
    other = torch.where(hidden, (x // 4 + 100).to(torch.uint8), x)  # the hidden patches dimmer, lower contrast
    again = model.reconstruct(other, seed=3)
    assert torch.equal(again["mask"], out["mask"])
    for key in ("reconstruction", "pasted", "masked"):
        assert torch.equal(again[key], out[key]), key


def test_mse_denormalises_hidden_patches_with_the_visible_patches_statistics():
    """``val/mse`` recomputed in numpy: every hidden patch's prediction de-normalised with the mean of the visible
    patches' means and stds (of the same image), squared error against the true normalised pixels."""
    torch.manual_seed(0)
    task = MAETask("vitlab_fmnist", decoder_dim=32, decoder_depth=1).eval()
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        mse = float(task._losses(x, torch.Generator().manual_seed(5))["mse"])
        out = task(x, torch.Generator().manual_seed(5))
    pred, mask = out["pred"].numpy().astype(np.float64), out["mask"].numpy()  # [4, 16, 49], [4, 16]
    pixels = (x.numpy()[:, 0].astype(np.float64) - 0.286 * 255) / (0.353 * 255)
    patches = pixels.reshape(4, 4, 7, 4, 7).transpose(0, 1, 3, 2, 4).reshape(4, 16, 49)
    means, stds = patches.mean(-1), np.sqrt(patches.var(-1, ddof=1) + 1e-6)  # [4, 16]
    errors = []
    for i in range(4):
        vis = ~mask[i]
        shown = pred[i][mask[i]] * stds[i][vis].mean() + means[i][vis].mean()
        errors.append(((shown - patches[i][mask[i]]) ** 2).mean(-1))
    assert mse == pytest.approx(np.concatenate(errors).mean(), rel=1e-4)


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
    task = MAETask("vitlab_fmnist", decoder_dim=32, decoder_depth=1, optim={"lr": 2e-3})
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


def test_reconstruct_decodes_pil_images_as_files(mae_ckpt, tmp_path):
    """PIL images go through the one decoder: EXIF orientation, alpha composited on white, palettes, as files do."""
    from PIL import Image
    from vitlab_edge.imaging import to_hwc_uint8

    _, path = mae_ckpt
    task = vitlab.load(str(path))
    rgba = np.zeros((40, 20, 4), np.uint8)
    rgba[:20, :, 3] = 255  # top half opaque black, bottom half transparent: white once composited
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned by 90 degrees
    grey = np.repeat(np.linspace(0, 255, 40, dtype=np.uint8)[:, None], 20, 1)
    Image.fromarray(grey).convert("RGB").save(tmp_path / "turned.jpg", exif=exif, quality=95)
    Image.fromarray(grey).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "palette.png")
    for name in ("alpha.png", "turned.jpg", "palette.png"):
        file = tmp_path / name
        expected = task.preprocess.prepare(to_hwc_uint8(str(file)))  # what the Predictor feeds the model
        with Image.open(file) as img:
            from_pil = task.reconstruct(img, seed=0)["original"][0]
        assert np.array_equal(from_pil, expected), name
        assert np.array_equal(task.reconstruct([str(file)], seed=0)["original"][0], expected), name


def test_classifier_starts_from_the_mae_encoder_with_a_key_report(mae_ckpt):
    task, path = mae_ckpt
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = ClassificationTask("vitlab_fmnist", 10, pretrained=str(path), optim={"layer_decay": 0.75})
    report = [str(w.message) for w in caught if issubclass(w.category, WeightsWarning)]
    assert len(report) == 1 and "2 missing (head.weight, head.bias)" in report[0] and "0 unexpected" in report[0]
    assert "tensors of the checkpoint's own head dropped (decoder_blocks, decoder_embed, decoder_norm, " \
           "decoder_pred, mask_token)" in report[0]
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
