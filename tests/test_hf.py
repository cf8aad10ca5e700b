"""Hugging Face transformers ViT / ViT-MSN / DeiT folders: vitlab builds the same model (logits parity with
transformers' own forward), ``pretrained=FOLDER`` loads into other heads, load warnings, errors, ONNX export."""

import json
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import transformers
from transformers import ViTImageProcessor

import vitlab
from vitlab.errors import VitlabError
from vitlab.models.backbone import WeightsWarning
from vitlab.onnx import count_fused_attention
from vitlab.onnx.graph import export_graph

LABELS = ["cat", "dog", "bird", "fish", "frog"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
ATOL = 1e-4


def _save_hf(folder, cls_name="ViTForImageClassification", config_name="ViTConfig", fmt="safetensors"):
    """A small random HF model (hidden 32, 2 layers, 2 heads, patch 8, 32x32 RGB, 5 named labels) + its
    preprocessor, saved like ``save_pretrained`` does; weights are drawn wide so the logits are far from zero."""
    config = getattr(transformers, config_name)(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8, image_size=32,
        num_channels=3, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.3)
    if fmt == "bin":  # transformers 4.x with safe_serialization=False: a plain torch.save'd state dict
        model.config.architectures = [cls_name]
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:  # "safetensors": the hub's (4.x) tensor names; "safetensors-v5": transformers 5.x's own names
        model.save_pretrained(folder, save_original_format=fmt != "safetensors-v5",
                              max_shard_size="40KB" if fmt == "sharded" else "50GB")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD).save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_vit")
    return folder, _save_hf(folder)


def _images(n=4):
    """Model-size uint8 images [N, 3, 32, 32]: a gradient plus noise, so HF's resize never runs."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 32, dtype=np.float32)[None, None, None, :]
    return np.clip(ramp + rng.integers(0, 56, (n, 3, 32, 32)), 0, 255).astype(np.uint8)


def _hf_forward(model, folder, images):
    """transformers' own pipeline: its processor (no resize: the images are already 32x32), then the model."""
    processor = ViTImageProcessor.from_pretrained(folder)
    assert processor.size == {"height": 32, "width": 32}
    pixels = processor(list(images.transpose(0, 2, 3, 1)), do_resize=False, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels, output_hidden_states=True)


def _max_diff(a, b):
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())


@pytest.mark.parametrize("cls_name,config_name,fmt", [
    ("ViTForImageClassification", "ViTConfig", "safetensors"),
    ("ViTForImageClassification", "ViTConfig", "bin"),
    ("ViTForImageClassification", "ViTConfig", "safetensors-v5"),
    ("ViTForImageClassification", "ViTConfig", "sharded"),
    ("ViTMSNForImageClassification", "ViTMSNConfig", "safetensors"),
    ("DeiTForImageClassification", "DeiTConfig", "safetensors"),
])
def test_folder_builds_the_same_model(tmp_path, cls_name, config_name, fmt):
    hf = _save_hf(tmp_path, cls_name, config_name, fmt)
    assert fmt != "sharded" or (tmp_path / "model.safetensors.index.json").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightsWarning)  # a clean load says nothing
        model = vitlab.create_model(tmp_path).eval()
    assert model.num_classes == 5 and model.preprocess.labels == tuple(LABELS)
    assert model.preprocess.input_size == (3, 32, 32) and model.backbone.depth == 2
    np.testing.assert_allclose(model.preprocess.mean, MEAN) and np.testing.assert_allclose(model.preprocess.std, STD)
    images = _images()
    ref = _hf_forward(hf, tmp_path, images).logits
    assert ref.abs().max() > 1.0 and ref.std(0).mean() > 0.1  # logits far from zero and differing per image
    with torch.no_grad():
        assert _max_diff(model(torch.from_numpy(images)), ref) <= ATOL


def test_deit_with_teacher_uses_the_class_token_head(tmp_path):
    """HF averages two heads (class and distillation token); vitlab's classifier has one: the class-token head."""
    hf = _save_hf(tmp_path, "DeiTForImageClassificationWithTeacher", "DeiTConfig")
    with pytest.warns(WeightsWarning, match=r"2 unexpected \(distillation_classifier"):
        model = vitlab.create_model(tmp_path).eval()
    assert model.backbone.num_prefix_tokens == 2  # [cls, distillation, patches]
    images = _images()
    with torch.no_grad():
        assert _max_diff(model(torch.from_numpy(images)), _hf_forward(hf, tmp_path, images).cls_logits) <= ATOL
    # timm's distilled DeiT takes the same folder: the distillation token lands in its dist_token
    with pytest.warns(WeightsWarning, match="distillation_classifier"):
        deit = vitlab.create_backbone("deit_tiny_distilled_patch16_224", pretrained=tmp_path, img_size=32,
                                      patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    assert torch.equal(deit.vit.dist_token, hf.deit.embeddings.distillation_token)


def test_backbone_from_folder_pools_the_class_token(vit_folder):
    folder, hf = vit_folder
    backbone = vitlab.create_backbone(folder).eval()
    images = _images(2)
    with torch.no_grad():
        out = backbone(torch.from_numpy(images))
    ref = _hf_forward(hf, folder, images).hidden_states[-1]  # before the final LayerNorm
    assert out["map"].shape == (2, 32, 4, 4)
    with torch.no_grad():
        assert _max_diff(out["pooled"], hf.vit.layernorm(ref)[:, 0]) <= ATOL


def test_vit_model_folder_without_classifier(tmp_path):
    """A bare ViTModel (pooler included): the backbone loads, the pooler is reported unused, the head is new."""
    hf = _save_hf(tmp_path, "ViTModel")
    assert (tmp_path / "model.safetensors").is_file()
    with pytest.warns(WeightsWarning, match=r"2 unexpected \(pooler\.dense"):
        backbone = vitlab.create_backbone(tmp_path).eval()
    images = _images(2)
    with torch.no_grad():
        assert _max_diff(backbone(torch.from_numpy(images))["pooled"],
                         _hf_forward(hf, tmp_path, images).last_hidden_state[:, 0]) <= ATOL
    with pytest.warns(WeightsWarning, match=r"2 missing \(head.weight, head.bias\), 2 unexpected"):
        assert vitlab.create_model(tmp_path).num_classes == 1000  # no classifier: id2label means nothing


def test_pretrained_folder_into_another_head_drops_it_with_a_warning(vit_folder):
    folder, hf = vit_folder
    with pytest.warns(WeightsWarning, match=r"2 missing \(head.weight, head.bias\).*head dropped"):
        model = vitlab.create_model(folder, num_classes=3).eval()
    assert model.num_classes == 3 and model.preprocess.labels == ()  # the folder's 5 names do not fit 3 outputs
    q, k, v = (getattr(hf.vit.layers[1].attention, f"{p}_proj").weight for p in "qkv")
    assert torch.equal(model.backbone.vit.blocks[1].attn.qkv.weight, torch.cat([q, k, v]))
    # a timm name + pretrained=FOLDER (the configs' `pretrained:`), through the task as `vitlab fit` builds it
    from vitlab.tasks import ClassificationTask

    opts = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    with pytest.warns(WeightsWarning, match="head dropped"):
        task = ClassificationTask("vit_tiny_patch16_224", 3, model_options=opts, pretrained=str(folder))
    backbone = task.model.eval().backbone
    x = torch.from_numpy(_images(2))
    with torch.no_grad():  # the timm name brings its own mean/std (0.5) and LayerNorm eps (1e-6, HF: 1e-12)
        ref = hf(pixel_values=backbone.normalize(x), output_hidden_states=True).hidden_states[-1]
        assert _max_diff(backbone(x)["pooled"], hf.vit.layernorm(ref)[:, 0]) <= 1e-3


def test_weights_file_with_missing_keys_warns_once_with_counts(tmp_path):
    model = vitlab.create_model("vitlab_tiny", num_classes=3)
    state = {k: v for k, v in model.state_dict().items() if "blocks.1." not in k}
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pth")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(2):
            vitlab.create_model("vitlab_tiny", num_classes=3, pretrained=tmp_path / "partial.pth")
    msgs = [str(w.message) for w in caught if issubclass(w.category, WeightsWarning)]
    assert len(msgs) == 1 and "\n" not in msgs[0]
    assert "12 missing (blocks.1." in msgs[0] and ", ...)" in msgs[0] and "1 unexpected (extra.weight)" in msgs[0]


def test_checkpoint_of_a_folder_model_reloads(vit_folder, tmp_path):
    from vitlab.tasks import ClassificationTask

    folder, _ = vit_folder
    task = ClassificationTask(str(folder), 5, model_options={}).eval()
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, tmp_path / "t.ckpt")
    again = vitlab.load(tmp_path / "t.ckpt")
    x = torch.from_numpy(_images(2))
    with torch.no_grad():
        assert torch.equal(again.model(x), task.model(x))
    assert again.preprocess.labels == tuple(LABELS)


def test_onnx_export_has_one_fused_attention_per_block(vit_folder):
    folder, hf = vit_folder
    model = vitlab.create_model(folder).eval()
    graph = export_graph(model)
    assert count_fused_attention(graph) == model.backbone.depth == 2
    images = _images(3)
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"images": images})[0]
    assert _max_diff(logits, _hf_forward(hf, folder, images).logits) <= ATOL


def test_shape_mismatch_is_one_clear_error(vit_folder):
    folder, _ = vit_folder
    with pytest.raises(VitlabError, match=r"cls_token is \(1, 1, 32\) in the weights but \(1, 1, 48\) in the model"):
        vitlab.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_heads=2, embed_dim=48,
                            pretrained=folder)


def test_unsupported_folders_are_one_line_errors(tmp_path, vit_folder):
    folder, _ = vit_folder
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VitlabError, match="without config.json"):
        vitlab.create_model(empty)
    with pytest.raises(VitlabError, match="does not exist"):
        vitlab.create_model(tmp_path / "nope")
    with pytest.raises(VitlabError, match="is a weights file, not a model: pass it as pretrained="):
        vitlab.create_model(folder / "model.safetensors")
    beit = tmp_path / "beit"
    beit.mkdir()
    (beit / "config.json").write_text(json.dumps({"model_type": "beit"}))
    with pytest.raises(VitlabError, match=r"config.json: model_type 'beit' is not supported"):
        vitlab.create_model(beit)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(VitlabError, match="holds no model.safetensors or pytorch_model.bin") as e:
        vitlab.create_model(no_weights)
    assert "\n" not in str(e.value)
    assert vitlab.create_model(no_weights, pretrained=False).num_classes == 5  # the architecture alone
