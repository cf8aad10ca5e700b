"""The task contract: every task is declared once (``vitlab.tasks.spec``), and every task's checkpoint goes through
every verb — ``vitlab.load``, ``Predictor``, ``vitlab predict``, ``vitlab export``, ``vitlab sample``,
``vitlab reconstruct`` — served, or refused in one line that names what to use instead (exit 2, no traceback)."""

import json

import numpy as np
import pytest
import torch

import vitlab
from vitlab.cli import main
from vitlab.errors import VitlabError
from vitlab.inference import DetectionPrediction, EmbeddingPrediction, Prediction, Predictor
from vitlab.tasks import ClassificationTask, DetectionTask, DiffusionTask, MAETask
from vitlab.tasks.spec import TaskSpec, get_task, list_tasks, register_task, task_of_module

SERVED = {"classification": Prediction, "detection": DetectionPrediction, "mae": EmbeddingPrediction}


def save_ckpt(task, path):
    """A checkpoint as Lightning writes it (hyper-parameters, state dict, the task's class name)."""
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "vitlab_task": type(task).__name__}, path)
    return path


def make_task(name: str):
    torch.manual_seed(0)
    if name == "classification":
        return ClassificationTask("vitlab_tiny", 3, ["a", "b", "c"])
    if name == "detection":
        return DetectionTask("vitdet_scenes_cs", 2, ["a", "b"], {"img_size": 64, "depth": 1})
    if name == "mae":
        return MAETask("vitlab_tiny", decoder_dim=32, decoder_depth=1)
    return DiffusionTask("dit_fmnist_tiny", class_names=[f"c{i}" for i in range(10)], sample_steps=2)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {name: save_ckpt(make_task(name), root / f"{name}.ckpt")
            for name in ("classification", "detection", "mae", "generation")}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photographs (scikit-image's) in assorted sizes and modes."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea", "camera", "rocket"):
        Image.fromarray(getattr(data, name)()).save(root / f"{name}.png")
    return root


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """Run ``vitlab ARGV`` in-process: it must exit 2 with exactly one ``vitlab: error:`` line naming ``needles``."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("vitlab: error: "), err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


# --- the registry --------------------------------------------------------------------------------------------
def test_every_task_is_declared_once_and_found_by_name_alias_and_checkpoint_class():
    assert set(list_tasks()) == {"classification", "detection", "mae", "generation", "embedding"}
    assert vitlab.list_tasks() == list_tasks()
    for alias, name in {"classify": "classification", "detect": "detection", "diffusion": "generation",
                        "embed": "embedding", None: "classification"}.items():
        assert get_task(alias).name == name
    for cls in (ClassificationTask, DetectionTask, MAETask, DiffusionTask):
        assert task_of_module(cls.__name__).module is cls
    with pytest.raises(VitlabError, match="unknown task 'segmentation'; vitlab knows"):
        get_task("segmentation")
    with pytest.raises(ValueError, match="already registered"):
        register_task(TaskSpec("detect"))  # an alias is a name too


def test_every_task_that_answers_images_has_a_result_type_and_a_records_decoder_of_the_same_fields():
    """What the Predictor returns and what the edge kit writes are the same record for every served task."""
    import dataclasses

    from vitlab_edge.tasks import EDGE_TASKS, decoder_for

    for name in list_tasks():
        spec = get_task(name)
        if spec.exporter is not None:  # every exported task is one the edge kit knows; its records read its outputs
            edge = EDGE_TASKS[name]
            assert edge.decoder is None or set(edge.decoder.outputs) <= set(edge.outputs), name
        if spec.outputs is None:
            continue
        fields = {f.name for f in dataclasses.fields(spec.load("result"))}
        assert set(decoder_for(name).fields) <= fields, name
        assert spec.exporter is not None and spec.load("exporter") is not None, name


# --- every checkpoint on every verb ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["classification", "detection", "mae", "generation"])
def test_every_checkpoint_loads_as_its_task(ckpts, name):
    assert type(vitlab.load(ckpts[name])) is get_task(name).module


@pytest.mark.parametrize("name", ["classification", "detection", "mae"])
def test_predictor_serves_every_checkpoint_that_answers_images(ckpts, photos, name):
    preds = Predictor.load(ckpts[name]).predict(photos, num_workers=0)
    assert len(preds) == 5 and all(type(p) is SERVED[name] and p.error is None for p in preds)
    if name == "mae":  # an MAE checkpoint answers with its encoder's embeddings
        assert all(abs(np.linalg.norm(p.embedding) - 1) < 1e-5 for p in preds)


def test_predictor_refuses_a_diffusion_checkpoint_in_one_line_naming_vitlab_sample(ckpts):
    with pytest.raises(VitlabError, match=r"generation model: predict does not apply to it; .*vitlab sample") as e:
        Predictor.load(ckpts["generation"])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["classification", "detection", "mae"])
def test_every_backbone_checkpoint_gives_unit_embeddings_that_are_its_pooled_features(ckpts, photos, name):
    task = vitlab.load(ckpts[name])
    predictor = Predictor.load(ckpts[name], task="embedding")
    preds = predictor.predict(photos, num_workers=0)
    emb = np.array([p.embedding for p in preds], np.float32)
    assert emb.shape == (5, task.model.backbone.out_channels)
    batch = torch.from_numpy(np.stack([predictor.preprocess.prepare(np.asarray(_read(p.source))) for p in preds]))
    with torch.no_grad():
        pooled = task.model.backbone(batch)["pooled"]
    expect = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    np.testing.assert_allclose(emb, expect, atol=1e-5)
    assert len({tuple(np.round(e, 4)) for e in emb}) == 5  # five photos, five different vectors


def _read(path):
    from vitlab_edge.imaging import read_image

    return read_image(path)


def test_cli_predict_serves_or_refuses_every_checkpoint(ckpts, photos, tmp_path, capsys):
    for name in ("classification", "detection", "mae"):
        out = tmp_path / f"{name}.jsonl"
        main(["predict", str(ckpts[name]), str(photos), "--out", str(out), "--workers", "0"])
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(records) == 5 and all(r["error"] is None for r in records), name
        key = {"classification": "label", "detection": "boxes", "mae": "embedding"}[name]
        assert all(key in r for r in records), name
    capsys.readouterr()
    one_line_error(capsys, ["predict", str(ckpts["generation"]), str(photos), "--out", str(tmp_path / "g.jsonl")],
                   "generation model", "vitlab sample")
    assert not (tmp_path / "g.jsonl").exists()
    one_line_error(capsys, ["predict", str(ckpts["generation"]), str(photos), "--out", str(tmp_path / "g.jsonl"),
                            "--task", "embedding"], "generation model", "vitlab sample")
    one_line_error(capsys, ["predict", str(ckpts["classification"]), str(photos), "--out",
                            str(tmp_path / "d.jsonl"), "--task", "detection"], "classification model", "not detection")


def test_cli_sample_and_reconstruct_refuse_other_tasks_in_one_line(ckpts, photos, tmp_path, capsys):
    for name in ("classification", "detection", "mae"):
        one_line_error(capsys, ["sample", str(ckpts[name]), "--per-class", "1", "--out", str(tmp_path / "s")],
                       str(ckpts[name]), "DiffusionTask")
    for name in ("classification", "detection", "generation"):
        one_line_error(capsys, ["reconstruct", str(ckpts[name]), str(photos), "--out", str(tmp_path / "r.png")],
                       str(ckpts[name]), "MAETask")


def test_cli_export_refuses_what_it_cannot_export_in_one_line(ckpts, tmp_path, capsys):
    one_line_error(capsys, ["export", str(ckpts["generation"]), "--out", str(tmp_path / "e"), "--task",
                            "embedding"], "generation model", "vitlab sample")
    one_line_error(capsys, ["export", str(ckpts["mae"]), "--out", str(tmp_path / "e"), "--task", "detection"],
                   "mae model", "not detection")
    # an embedding of a non-28x28 model needs real images to check the file on
    one_line_error(capsys, ["export", str(ckpts["classification"]), "--out", str(tmp_path / "e"), "--task",
                            "embedding"], "--eval-data")
    assert not (tmp_path / "e" / "model.onnx").exists()


# --- embeddings: checkpoint, ONNX and the edge kit agree ---------------------------------------------------------
@pytest.fixture(scope="module")
def garments(tmp_path_factory, fmnist_test):
    """60 real Fashion-MNIST test images as PNG files, 6 per class."""
    from PIL import Image

    images, labels = fmnist_test
    root = tmp_path_factory.mktemp("garments")
    for c in range(10):
        for k, i in enumerate(np.flatnonzero(labels == c)[:6]):
            Image.fromarray(images[i]).save(root / f"c{c}_{k}.png")
    return root


@pytest.fixture(scope="module")
def mae_export(tmp_path_factory, fmnist_test):
    """An MAE checkpoint on the demo backbone (2 blocks) and its default export: the embedding graph, fp32 + int8."""
    from vitlab.onnx import export_onnx

    root = tmp_path_factory.mktemp("mae_export")
    torch.manual_seed(0)
    ckpt = save_ckpt(MAETask("vitlab_fmnist", {"depth": 2}, decoder_dim=32, decoder_depth=1), root / "mae.ckpt")
    results = export_onnx(ckpt, root / "onnx", ["fp32", "int8"], num_eval=500)
    return ckpt, results


def test_an_mae_checkpoint_exports_as_an_embedding_graph_gated_on_cosine(mae_export):
    import onnx
    from vitlab_edge.metadata import parse_metadata

    from vitlab.onnx.graph import get_metadata

    _, results = mae_export
    for result in results.values():
        meta = get_metadata(onnx.load(result.path))
        assert meta["task"] == "embedding" and meta["outputs"] == ["embedding"] and meta["embedding_dim"] == 96
        assert parse_metadata(json.dumps(meta), "x")["task"] == "embedding"
        rep = result.report
        assert rep["status"] == "ok" and rep["num_images"] == 500, rep
        assert rep["fused_attention_nodes"] == 2
    assert results["fp32"].report["cosine_min"] >= 0.9999
    assert results["int8"].report["cosine_min"] < results["fp32"].report["cosine_min"]  # int8 is measured, not fp32


def test_embeddings_from_checkpoint_onnx_and_edge_kit_agree(mae_export, garments):
    from vitlab_edge import EdgeModel

    ckpt, results = mae_export
    files = sorted(garments.glob("*.png"))
    torch_emb = np.array([p.embedding for p in Predictor.load(ckpt).predict(files, num_workers=0)])
    onnx_emb = np.array([p.embedding for p in Predictor.load(results["fp32"].path).predict(files, num_workers=0)])
    edge_emb = np.array([r["embedding"] for r in EdgeModel(results["fp32"].path).predict(files)])
    for other in (onnx_emb, edge_emb):
        assert (np.sum(torch_emb * other, axis=1) >= 0.9999).all()
    int8_emb = np.array([r["embedding"] for r in EdgeModel(results["int8"].path).predict(files)])
    assert (np.sum(torch_emb * int8_emb, axis=1) >= results["int8"].report["cosine_min"] - 1e-3).all()


def test_retrieval_example_nearest_neighbours_of_a_query_image(mae_export, garments, tmp_path):
    """The README's retrieval recipe: embed a folder once (``--out emb.npy``), then rank it by cosine to a query."""
    ckpt, results = mae_export
    main(["predict", str(results["fp32"].path), str(garments), "--out", str(tmp_path / "emb.npy"), "--workers", "0"])
    emb = np.load(tmp_path / "emb.npy")
    sources = (tmp_path / "emb.sources.txt").read_text().splitlines()
    assert emb.shape == (60, 96) and len(sources) == 60 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    query = Predictor.load(ckpt).predict([garments / "c3_0.png"], num_workers=0)[0].embedding
    ranked = np.argsort(-(emb @ np.asarray(query, np.float32)))
    assert sources[ranked[0]].endswith("c3_0.png")  # the query itself first (cosine 1)


def test_a_timm_backbone_by_name_gives_embeddings(garments):
    preds = Predictor.load("vitlab_fmnist", task="embedding").predict(sorted(garments.glob("*.png"))[:4],
                                                                      num_workers=0)
    assert [len(p.embedding) for p in preds] == [96] * 4
    with pytest.raises(VitlabError, match="does not exist"):
        Predictor.load("vitlab_fmnist.ckpt")  # a missing file, not a model name


@pytest.mark.parametrize("name", vitlab.list_models(include_timm=False))
def test_every_registered_variant_builds_and_answers_with_its_tasks_outputs(name):
    """Each registered variant, built for the task it was registered for, gives exactly the outputs the edge
    kit's records decoder of that task reads (the torch path and the exported graph answer alike); a denoiser
    answers no images and steps ``x, t, y`` instead."""
    from vitlab_edge.tasks import decoder_for

    from vitlab.registry import variant_spec

    task = get_task(variant_spec(name).preprocess.task)
    assert name in vitlab.list_models(task=task.name, include_timm=False)
    if task.name == "generation":
        from vitlab.models.diffusion import Denoiser, denoiser_cfg

        assert task.outputs is None and task.exporter is not None
        model = Denoiser(denoiser_cfg(name)).eval()
        x = torch.randn(2, model.cfg.in_chans, model.cfg.img_size, model.cfg.img_size)
        with torch.no_grad():
            assert model(x, torch.rand(2), torch.tensor([0, model.cfg.num_classes])).shape == x.shape
        with pytest.raises(VitlabError, match="is a denoiser, not a ViT backbone"):
            vitlab.create_backbone(name)
        return
    model = vitlab.create_detector(name, num_classes=2) if task.name == "detection" else \
        vitlab.create_model(name, num_classes=3)
    images = torch.randint(0, 256, (1, *model.preprocess.input_size), dtype=torch.uint8)
    with torch.no_grad():
        out = task.outputs(model.eval(), images, **({"max_det": 5} if task.options else {}))
    assert set(decoder_for(task.name).outputs) <= set(out), (name, list(out))


def test_predictor_from_an_in_memory_task_or_model(ckpts, photos):
    """``Predictor.from_model``: a trained task answers its own task; a model asked for embeddings gives its
    backbone's; a model asked for a task it does not answer is one line."""
    task = vitlab.load(ckpts["classification"])
    from_task = Predictor.from_model(task).predict(photos, num_workers=0)
    from_file = Predictor.load(ckpts["classification"]).predict(photos, num_workers=0)
    assert [p.topk for p in from_task] == [p.topk for p in from_file]
    emb = Predictor.from_model(task.model, task="embedding").predict(photos, num_workers=0)
    again = Predictor.load(ckpts["classification"], task="embedding").predict(photos, num_workers=0)
    np.testing.assert_allclose([p.embedding for p in emb], [p.embedding for p in again], atol=1e-6)
    with pytest.raises(VitlabError, match="does not answer detection"):
        Predictor.from_model(task.model, task="detection")
