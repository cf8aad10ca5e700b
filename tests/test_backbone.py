import pickle

import pytest
import torch
from safetensors.torch import save_file

import vitlab
from vitlab.errors import VitlabError
from vitlab.models.backbone import WeightsWarning, canonical_keys, read_state_dict


@pytest.mark.parametrize("opts,prefix", [({}, 0), ({"class_token": True, "global_pool": "token"}, 1),
                                         ({"class_token": True, "reg_tokens": 4, "global_pool": "token"}, 5)])
def test_backbone_contract(opts, prefix):
    bb = vitlab.create_backbone("vitlab_tiny", **opts).eval()
    out = bb(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert bb.num_prefix_tokens == prefix and bb.patch_size == 8 and bb.strides == (8,)
    assert out["tokens"].shape == (2, prefix + 16, bb.out_channels)
    assert out["pooled"].shape == (2, bb.out_channels)
    assert out["map"].shape == (2, bb.out_channels, 4, 4)
    # the map is the patch tokens laid out on the grid, row-major
    assert torch.equal(out["map"][:, :, 1, 2], out["tokens"][:, prefix + 1 * 4 + 2])


def test_normalisation_is_inside_and_dtype_agnostic():
    bb = vitlab.create_backbone("vitlab_tiny").eval()
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(bb(x)["pooled"], bb(x.float())["pooled"])
    expected = (x.float() / 255 - 0.5) / 0.5
    assert torch.allclose(bb.normalize(x), expected, atol=1e-6)


def _timm_state(**kw):
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw).state_dict()


def test_local_safetensors_resamples_pos_embed_and_drops_head(tmp_path):
    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, global_pool="avg", class_token=False)
    state = _timm_state(num_classes=5, **kw)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.warns(WeightsWarning, match=r"2 missing \(head.weight, head.bias\).*head dropped"):
        model = vitlab.create_model("vitlab_tiny", num_classes=3, img_size=64, pretrained=str(path))
    # 4x4 grid -> 8x8 grid; the head (5 classes) cannot fill 3 classes and is dropped
    assert model.backbone.vit.pos_embed.shape == (1, 64, 32)
    assert torch.equal(model.backbone.vit.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    same = vitlab.create_model("vitlab_tiny", num_classes=5, pretrained=str(path))
    assert torch.equal(same.head.weight, state["head.weight"])


def test_lightning_checkpoint_keys_are_remapped(tmp_path):
    model = vitlab.create_model("vitlab_tiny", num_classes=3)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 1}
    torch.save(ckpt, tmp_path / "m.ckpt")
    again = vitlab.create_model("vitlab_tiny", num_classes=3, pretrained=tmp_path / "m.ckpt")
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(model.eval()(x), again.eval()(x))


def test_rgb_weights_adapt_to_grayscale(tmp_path):
    model = vitlab.create_model("vitlab_tiny", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "rgb.pth")
    grey = vitlab.create_model("vitlab_tiny", num_classes=3, in_chans=1, pretrained=tmp_path / "rgb.pth")
    assert grey.backbone.vit.patch_embed.proj.weight.shape[1] == 1
    assert grey(torch.zeros(1, 1, 32, 32)).shape == (1, 3)


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickle_payload_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.ckpt", "wb") as f:
        pickle.dump({"state_dict": {}, "x": _Payload()}, f)
    with pytest.raises(VitlabError, match="refusing to load"):
        read_state_dict("evil.ckpt")
    with pytest.raises(VitlabError, match="refusing to load"):
        vitlab.load("evil.ckpt")
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_missing_weights_file_is_one_clear_error():
    with pytest.raises(VitlabError, match="does not exist"):
        vitlab.create_model("vitlab_tiny", pretrained="/nonexistent/w.safetensors")


def test_hub_name_offline_fails_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VitlabError, match="could not fetch pretrained weights.*local file") as e:
        vitlab.create_model("vit_tiny_patch16_224", num_classes=3, pretrained=True)
    assert "\n" not in str(e.value)


def test_canonical_keys_strip_wrappers():
    t = torch.zeros(1)
    keys = canonical_keys({"model.backbone.vit.blocks.0.x": t, "module._orig_mod.head.weight": t})
    assert set(keys) == {"blocks.0.x", "head.weight"}
