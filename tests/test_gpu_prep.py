"""What issue 27's GPU work does on a CPU: the edge kit's provider settings and their one-line failover, I/O binding,
the Predictor's GPU path (inert on CPU, its pipeline driven by a stand-in backend) and its throughput report, and
``export/check_cuda.py --dry-run`` (the whole ``--all`` plan on the CPU, tiny models). Nothing here needs CUDA."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from unittest import mock

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from vitlab_edge import providers as P
from vitlab_edge import session as S
from vitlab_edge.binding import BoundRunner, fixed_batch_options, open_bound
from vitlab_edge.providers import (
    CPU,
    CUDA,
    TENSORRT,
    CudaOptions,
    TensorRTOptions,
    batch_profile,
    expand,
    make_cache,
)
from vitlab_edge.session import create_session

from tests.conftest import REPO

ORT_NOISE = ("[E:onnxruntime", "[W:onnxruntime", "EP Error", "Falling back", "Failed to load")


@pytest.fixture()
def tiny_onnx(tmp_path):
    """``images`` uint8 [batch, 3, 4, 4] -> ``mean`` float [batch, 3] and ``doubled`` float [batch, 3, 4, 4]."""
    x = helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 3, 4, 4])
    nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f", "axes"], ["mean"], keepdims=0),
             helper.make_node("Add", ["f", "f"], ["doubled"])]
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    graph = helper.make_graph(nodes, "tiny", [x], [helper.make_tensor_value_info("mean", TensorProto.FLOAT,
                                                                                  ["batch", 3]),
                                                   helper.make_tensor_value_info("doubled", TensorProto.FLOAT,
                                                                                 ["batch", 3, 4, 4])], [axes])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)
    return path


@pytest.fixture(autouse=True)
def fresh_lines():
    """Every test sees its own one-line messages (they are said once per process)."""
    S._said.clear()
    yield
    S._said.clear()


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 4, 4), dtype=np.uint8)


def test_short_names_expand_with_their_fallbacks_and_options_become_pairs(tmp_path):
    assert expand(["cuda"]) == [CUDA, CPU] and expand("cpu") == [CPU]
    trt = expand("TensorRT,cuda,cpu")
    assert [p if isinstance(p, str) else p[0] for p in trt] == [TENSORRT, CUDA, CPU]
    assert trt[0][1]["trt_fp16_enable"] == "1" and trt[0][1]["trt_engine_cache_enable"] == "1"
    assert expand([CudaOptions(), "cpu"]) == [CUDA, CPU]  # ONNX Runtime's defaults: nothing to pass
    graph = expand([CudaOptions(enable_cuda_graph=True, cudnn_conv_algo_search="HEURISTIC"), CUDA])
    assert graph == [(CUDA, {"enable_cuda_graph": "1", "cudnn_conv_algo_search": "HEURISTIC"})]
    with pytest.raises(ValueError, match="cudnn_conv_algo_search"):
        CudaOptions(cudnn_conv_algo_search="FAST").provider()
    name, opts = TensorRTOptions(fp16=False, cache_dir=str(tmp_path / "engines"),
                                 profile=batch_profile("images", (3, 224, 224), 1024, 256)).provider()
    assert name == TENSORRT and opts["trt_fp16_enable"] == "0" and not (tmp_path / "engines").exists()
    assert make_cache((name, opts)) is None and (tmp_path / "engines").is_dir()  # made when TensorRT is kept
    (tmp_path / "file").touch()
    unwritable = TensorRTOptions(cache_dir=str(tmp_path / "file" / "engines")).provider()
    assert "engine cache folder" in make_cache(unwritable) and "VITLAB_TRT_CACHE" in make_cache(unwritable)
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(tmp_path / "engines")
    assert opts["trt_profile_opt_shapes"] == "images:256x3x224x224" and opts["trt_profile_min_shapes"].startswith(
        "images:1x")


def test_no_gpu_is_one_line_and_no_onnxruntime_output(tiny_onnx, caplog, capfd):
    if P.cuda_driver_present():
        pytest.skip("this machine has an NVIDIA driver")
    with caplog.at_level(logging.DEBUG, logger="vitlab_edge"):
        sessions = [create_session(tiny_onnx, p) for p in (["tensorrt"], ["tensorrt"], "cuda", None, ["cpu"])]
    assert all(s.get_providers() == [CPU] for s in sessions)
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.getMessage() for r in lines] == [
        "TensorRT and CUDA execution providers not used (no NVIDIA driver found); running on CPU",
        "CUDA execution provider not used (no NVIDIA driver found); running on CPU",
    ]  # said once each; the default request's line repeats the second, so it is not said again
    assert [r.levelno for r in lines] == [logging.WARNING, logging.WARNING]
    out, err = capfd.readouterr()
    assert not any(noise in out + err for noise in ORT_NOISE), out + err


def test_default_request_without_driver_is_info(tiny_onnx, caplog):
    if P.cuda_driver_present():
        pytest.skip("this machine has an NVIDIA driver")
    with caplog.at_level(logging.DEBUG, logger="vitlab_edge"):
        create_session(tiny_onnx)
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert msgs == [(logging.INFO, "CUDA execution provider not used (no NVIDIA driver found); running on CPU")]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="vitlab_edge"):
        create_session(tiny_onnx)  # said already: nothing
        create_session(tiny_onnx, "cuda")  # asked for by name: the same line as a warning
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert msgs == [(logging.WARNING, "CUDA execution provider not used (no NVIDIA driver found); running on CPU")]


def test_missing_tensorrt_libraries_are_named():
    with mock.patch.object(P, "_tensorrt_sonames", return_value=["libnvinfer_vitlab_test.so.97"]):
        P.tensorrt_missing.cache_clear()
        try:
            why = P.tensorrt_missing("/nonexistent")
        finally:
            P.tensorrt_missing.cache_clear()
    assert why.startswith("TensorRT library libnvinfer_vitlab_test.so.97 not found:") and "97." in why


def test_providers_onnxruntime_cannot_start_are_dropped_in_one_line(tiny_onnx, caplog, capfd):
    """A driver that seems present and TensorRT libraries that seem found: ONNX Runtime then tries, and fails, to
    load its GPU provider libraries; the session still opens, on the CPU, with one line and no ORT output."""
    import onnxruntime as ort

    if P.cuda_driver_present() or TENSORRT not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu on a machine without an NVIDIA driver")
    with mock.patch.object(P, "cuda_driver_present", return_value=True), \
            mock.patch.object(P, "tensorrt_missing", return_value=None), \
            caplog.at_level(logging.INFO, logger="vitlab_edge"):
        session = create_session(tiny_onnx, ["tensorrt"])
    assert session.get_providers() == [CPU]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1 and lines[0].startswith("TensorRT execution provider not used (") and \
        "CUDA execution provider not used (" in lines[0] and lines[0].endswith("running on CPU"), lines
    out, err = capfd.readouterr()
    assert not any(noise in out + err for noise in ORT_NOISE), out + err


def test_a_broken_model_still_raises_onnxruntimes_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(Exception, match="(?i)protobuf|parse|load"):
        create_session(bad, ["cpu"])


def test_bound_runner_matches_session_run_at_any_batch(tiny_onnx):
    session = create_session(tiny_onnx, ["cpu"])
    runner = BoundRunner(session)
    assert runner.device == "cpu"
    for n in (4, 2, 2, 5):  # the outputs are re-bound when the batch size changes
        x = batch(n, n)
        got, ref = runner(x), session.run(None, {"images": x})
        assert got["mean"].shape == (n, 3) and np.array_equal(got["mean"], ref[0])
        assert np.array_equal(got["doubled"], ref[1])


def test_fixed_batch_pads_and_cuts_and_cuda_graph_options_fall_back(tiny_onnx, caplog):
    opts = fixed_batch_options(8)
    assert create_session(tiny_onnx, ["cpu"], opts).get_inputs()[0].shape == [8, 3, 4, 4]
    with caplog.at_level(logging.INFO, logger="vitlab_edge"):
        runner = open_bound(tiny_onnx, [CudaOptions(enable_cuda_graph=True), "cpu"], batch=8)
    if not P.cuda_driver_present():
        assert runner.session.get_providers() == [CPU] and len(caplog.records) == 1
    ref = create_session(tiny_onnx, ["cpu"])
    for n in (8, 3, 8, 1):
        x = batch(n, n)
        got = runner(x)
        assert got["mean"].shape == (n, 3) and np.array_equal(got["mean"], ref.run(["mean"], {"images": x})[0])
    with pytest.raises(ValueError, match="fixed at 8"):
        runner(batch(9))


@pytest.fixture(scope="module")
def tiny_model():
    import vitlab

    return vitlab.create_model("vitlab_tiny", num_classes=10).eval()


def images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (20 + k, 24, 3), dtype=np.uint8) for k in range(n)]


def test_cpu_predictor_keeps_its_loop_and_reports_throughput(tiny_model):
    import vitlab
    from vitlab.inference import predictor as pred_mod

    predictor = vitlab.Predictor.from_model(tiny_model, device="cpu")
    assert predictor.backend.on_gpu is False
    with mock.patch.object(pred_mod, "pipelined", side_effect=AssertionError("GPU path on a CPU backend")):
        results = predictor.predict(images(10), batch_size=4, num_workers=0)
    report = predictor.throughput
    assert len(results) == 10 and report["images"] == 10 and report["batches"] == 3
    assert report["pipelined"] is False and report["backend"] == "torch[cpu]"
    assert report["img_s"] > 0 and 0 < report["busy_share"] <= 1 and 0 < report["model_s"] <= report["seconds"]
    assert report["steady_img_s"] > 0 and report["first_batch_s"] >= 0


def test_autocast_is_for_cuda_and_ort_stages_on_the_host_without_cuda(tiny_model):
    import torch

    from vitlab.errors import VitlabError
    from vitlab.inference.backends import TorchBackend

    with pytest.raises(VitlabError, match="CUDA"):
        TorchBackend(tiny_model, "cpu", autocast="bfloat16")
    with pytest.raises(VitlabError, match="float16 or bfloat16"):
        TorchBackend(tiny_model, "cpu", autocast="int8")
    if not torch.cuda.is_available():
        from vitlab.inference.backends import OrtBackend

        backend = object.__new__(OrtBackend)  # stage() needs no session when torch has no CUDA
        staged = backend.stage(np.zeros((2, 3, 4, 4), np.uint8))
        assert staged.ready is None and staged.rows == 2 and isinstance(staged.images, np.ndarray)


class StandInGpu:
    """A CPU backend that claims a GPU: drives the Predictor's pipelined path (stage, run one batch ahead on the
    inference thread) without CUDA, recording the order of calls."""

    def __init__(self, backend) -> None:
        self.backend, self.preprocess, self.name = backend, backend.preprocess, "stand-in[gpu]"
        self.on_gpu, self.on_cpu, self.threads, self.calls = True, False, None, []

    def __call__(self, batch):
        raise AssertionError("the pipelined path calls run_staged, not the backend")

    def stage(self, images):
        from vitlab.inference.gpu import Staged

        self.calls.append(("stage", len(images)))
        return Staged(images.copy(), len(images))

    def run_staged(self, staged):
        self.calls.append(("run", staged.rows))
        return self.backend(staged.images), 0.001


def test_pipelined_path_gives_the_cpu_answers_in_order(tiny_model):
    import vitlab
    from vitlab.inference.backends import TorchBackend

    cpu = vitlab.Predictor(TorchBackend(tiny_model, "cpu"))
    bad = REPO / "no-such-image.png"
    inputs = [*images(5), str(bad), *images(4)]
    ref = cpu.predict(inputs, batch_size=3, num_workers=0)
    stand_in = StandInGpu(TorchBackend(tiny_model, "cpu"))
    gpu = vitlab.Predictor(stand_in)
    got = gpu.predict(inputs, batch_size=3, num_workers=0)
    assert [(r.index, r.label, r.error is None) for r in got] == [(r.index, r.label, r.error is None) for r in ref]
    assert all(abs(a.prob - b.prob) < 1e-6 for a, b in zip(got, ref) if a.error is None)
    assert got[5].error and got[0].infer_ms == pytest.approx(1 / 3, abs=1e-3)  # 1 ms over 3 images
    stand_in.calls.clear()
    first = next(gpu.stream(inputs, batch_size=3, num_workers=0))  # batch 2 staged before batch 1 is handed out
    assert first.index == 0 and [c for c in stand_in.calls if c[0] == "stage"] == [("stage", 3), ("stage", 2)]
    stand_in.calls.clear()
    list(gpu.stream(inputs, batch_size=3, num_workers=0))
    assert [c for c in stand_in.calls if c[0] == "run"] == [("run", 3), ("run", 2), ("run", 3), ("run", 1)]
    report = gpu.throughput
    assert report["pipelined"] is True and report["images"] == 10 and report["model_s"] == pytest.approx(0.004)


def test_gpu_predictor_defaults_to_more_decode_workers():
    from vitlab.inference.predictor import default_workers

    with mock.patch("os.cpu_count", return_value=32):
        assert default_workers() == 4 and default_workers(gpu=True) == 16
    with mock.patch("os.cpu_count", return_value=2):
        assert default_workers() == default_workers(gpu=True) == 1


@pytest.mark.slow
def test_check_cuda_dry_run_writes_every_section(tmp_path):
    """The whole ``--all`` plan on the CPU with tiny models: exit 0 and a JSON document with a row for every job,
    variant and check (figures on a CPU mean nothing; the structure is what a GPU run will fill in)."""
    out = tmp_path / "dry.json"
    proc = subprocess.run([sys.executable, str(REPO / "export" / "check_cuda.py"), "--dry-run", "--json", str(out),
                           "--budget-s", "900"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plan (dry run" in proc.stdout
    doc = json.loads(out.read_text())
    assert {"machine", "gpu", "command", "date", "plan", "rows", "budget_s"} <= set(doc) and doc["dry_run"] is True
    assert doc["machine"]["cores"] and doc["gpu"]["onnxruntime"] and "tensorrt" in doc["gpu"]
    rows = doc["rows"]
    jobs = [r for r in rows if r["check"] == "job"]
    assert len(jobs) == len(doc["plan"]) == 10 and not [j for j in jobs if "error" in j or "skipped" in j]
    sys.path.insert(0, str(REPO / "export"))
    from cuda_timing import ORT_VARIANTS, TORCH_VARIANTS

    speed = [r for r in rows if r["check"] == "speed"]
    assert {r["variant"] for r in speed} == set(ORT_VARIANTS) | set(TORCH_VARIANTS)
    assert all(r["img_s"] > 0 for r in speed), [r for r in speed if "error" in r]
    assert all(r["providers"] == [CPU] for r in speed if r["variant"].startswith("ort/"))  # CUDA/TensorRT fell back
    assert {r["graph"] for r in rows if r["check"] == "placement"} == {"fp32/onnx", "fp32/ort-mha", "fp16/onnx",
                                                                       "fp16/ort-mha"}
    assert all(r["placement"] == {"skipped": "no CUDA (dry run)"} for r in rows if "placement" in r)
    predictor = {r["backend"]: r for r in rows if r["check"] == "predictor"}
    assert set(predictor) == {"torch", "onnxruntime"}
    assert all(r["predictor_img_s"] > 0 and 0 < r["busy_share"] <= 1 and r["vs_model_only"] > 0 and r["errors"] == 0
               for r in predictor.values())
    assert {r["graph"] for r in rows if r["check"] == "detector"} == {"detect/fp32", "detect/fp16"}
    assert all("torch_img_s" in r for r in rows if r["check"] == "detector")
    assert {r["graph"] for r in rows if r["check"] == "generator"} == {"generate/fp32", "generate/fp16"}
    assert all("torch_step_img_s" in r for r in rows if r["check"] == "generator")
    assert {(r["model"], r["batch"]) for r in rows if r["check"] == "summary"} == {("vitlab_tiny", 1),
                                                                                   ("vitlab_tiny", 2)}


@pytest.mark.parametrize("graph", [False, True], ids=["iobinding", "cuda-graph"])
@pytest.mark.gpu
def test_bound_runner_on_cuda_matches_the_cpu_provider(tiny_onnx, graph):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    runner = open_bound(tiny_onnx, [CudaOptions(enable_cuda_graph=graph)], batch=8 if graph else None)
    assert runner.device == "cuda" and runner.session.get_providers()[0] == CUDA
    cpu = create_session(tiny_onnx, ["cpu"])
    for n in (8, 5, 8):
        x = batch(n, n)
        assert np.allclose(runner(x)["mean"], cpu.run(["mean"], {"images": x})[0], atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("autocast", [None, "bfloat16"])
def test_pipelined_predictor_on_cuda_matches_cpu(tiny_model, autocast):
    import torch

    import vitlab
    from vitlab.inference.backends import TorchBackend

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    inputs = images(37)
    ref = vitlab.Predictor(TorchBackend(tiny_model, "cpu")).predict(inputs, batch_size=8, num_workers=0)
    gpu = vitlab.Predictor(TorchBackend(tiny_model, "cuda", autocast=autocast))
    got = gpu.predict(inputs, batch_size=8, num_workers=2)
    agree = np.mean([a.label == b.label for a, b in zip(got, ref)])
    assert agree >= (1.0 if autocast is None else 0.9) and gpu.throughput["pipelined"] is True
    assert 0 < gpu.throughput["busy_share"] <= 1 and gpu.throughput["images"] == 37
