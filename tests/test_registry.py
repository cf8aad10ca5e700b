import pytest
import torch

import vitlab
from vitlab.errors import VitlabError
from vitlab.models.stem import conv_stem
from vitlab.registry import BACKBONE_OPTIONS, ModelSpec, register_model


def test_list_models_has_variants_and_timm_vits():
    names = vitlab.list_models()
    assert {"vitlab_tiny", "vitlab_fmnist", "vitlab_fmnist_s", "vitlab_fmnist_cs",
            "vitlab_fmnist_cs_tiny"} <= set(names)
    assert "vit_small_patch16_224" in names and "deit_tiny_patch16_224" in names
    assert all(n.startswith("vit_small") for n in vitlab.list_models("vit_small*"))
    assert "resnet50" not in names


def test_backbone_options_exist_in_timm_signature():
    import inspect

    from timm.models.vision_transformer import VisionTransformer

    assert set(BACKBONE_OPTIONS) <= set(inspect.signature(VisionTransformer.__init__).parameters)


def test_unknown_name_suggests_close_names():
    with pytest.raises(VitlabError, match=r"unknown model 'vitlab_fmnst'.*vitlab_fmnist"):
        vitlab.create_model("vitlab_fmnst")


def test_non_vit_timm_model_is_refused():
    with pytest.raises(VitlabError, match="not a Vision Transformer"):
        vitlab.create_model("resnet18")


def test_unsupported_option_names_the_key():
    with pytest.raises(VitlabError, match="'patchsize' is not supported"):
        vitlab.create_model("vitlab_tiny", patchsize=4)


def test_duplicate_registration_raises():
    def vitlab_tiny():  # same name as the built-in variant
        return ModelSpec("vit_tiny_patch16_224", {}, vitlab.PreprocessCfg())

    with pytest.raises(ValueError, match="already registered"):
        register_model(vitlab_tiny)


@pytest.mark.parametrize("name,opts,shape", [
    ("vitlab_tiny", {}, (2, 3, 32, 32)),
    ("vitlab_fmnist", {}, (2, 1, 28, 28)),
    ("vitlab_fmnist_s", {}, (2, 1, 28, 28)),
    ("vitlab_fmnist_cs", {}, (2, 1, 28, 28)),
    ("vitlab_fmnist_cs_tiny", {}, (2, 1, 28, 28)),
    ("vitlab_tiny", {"img_size": 48, "patch_size": 12, "in_chans": 1}, (2, 1, 48, 48)),
    ("vit_tiny_patch16_224", {"img_size": 64, "depth": 2, "reg_tokens": 2}, (2, 3, 64, 64)),
    ("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 1}, (2, 3, 32, 32)),
    ("vit_tiny_patch16_224.augreg_in21k", {"img_size": 32, "depth": 1}, (2, 3, 32, 32)),
])
def test_create_model_forward_and_preprocess_follow_options(name, opts, shape):
    model = vitlab.create_model(name, num_classes=7, **opts).eval()
    assert model.preprocess.input_size == shape[1:]
    assert len(model.preprocess.mean) == shape[1]
    out = model(torch.randint(0, 256, shape, dtype=torch.uint8))
    assert out.shape == (2, 7)


def test_dynamic_img_size_accepts_other_sizes():
    model = vitlab.create_model("vitlab_tiny", num_classes=3, dynamic_img_size=True).eval()
    assert model(torch.zeros(1, 3, 48, 64)).shape == (1, 3)


def test_drop_path_rate_reaches_timm_blocks():
    model = vitlab.create_model("vitlab_tiny", num_classes=3, drop_path_rate=0.2)
    assert model.backbone.vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)


def test_labels_must_match_num_classes():
    with pytest.raises(ValueError, match="2 labels"):
        vitlab.create_model("vitlab_tiny", num_classes=3, labels=["a", "b"])


def test_conv_stem_replaces_patchify_and_keeps_the_contract():
    model = vitlab.create_model("vitlab_fmnist_cs", num_classes=10).eval()
    convs = [m for m in model.backbone.vit.patch_embed.proj if isinstance(m, torch.nn.Conv2d)]
    # 28 -> 28 -> 14 -> 7 -> 4, then 1x1 to width
    assert [c.stride for c in convs] == [(1, 1), (2, 2), (2, 2), (2, 2), (1, 1)]
    out = model.backbone(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert out["tokens"].shape == (2, 16, 128) and out["map"].shape == (2, 128, 4, 4)
    with pytest.raises(VitlabError, match="implies"):
        vitlab.create_model("vitlab_fmnist_cs", num_classes=10, patch_size=4)  # 7x7 grid: the stem makes 4x4
    with pytest.raises(VitlabError, match="must be 1 or 2"):
        conv_stem((16, 32), strides=(1, 3))(img_size=28, patch_size=14, in_chans=1, embed_dim=8)
