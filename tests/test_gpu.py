"""GPU-only: the exported graphs' compute nodes all run on ONNX Runtime's CUDA provider."""

import importlib.util

import pytest
import torch

from tests.conftest import REPO

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def check_cuda():
    spec = importlib.util.spec_from_file_location("check_cuda", REPO / "export" / "check_cuda.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_classifier_node_runs_on_cuda(check_cuda, tmp_path):
    rows: list[dict] = []
    check_cuda.check_classifier("vitlab_fmnist", [1, 8], tmp_path, 0.2, rows, None)
    assert len(rows) == 8 and all(r["fused_attention"] == 4 and r["cuda_only"] for r in rows)  # strict sessions
    assert all(r["max_abs_diff_logits"] < (5e-2 if r["graph"].startswith("fp16") else 5e-3) for r in rows)


def test_detector_compute_nodes_and_nms_run_on_cuda(check_cuda, tmp_path):
    rows: list[dict] = []
    check_cuda.check_detector("vitdet_scenes", [1, 4], tmp_path, 0.2, rows, None)
    assert len(rows) == 4 and all(r["nms_nodes"] == 1 and not r["placement"]["cpu_compute"] for r in rows)
