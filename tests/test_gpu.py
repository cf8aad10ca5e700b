"""GPU-only: the exported graphs run entirely on ONNX Runtime's CUDA provider (no CPU fallback)."""

import importlib.util

import pytest
import torch

from tests.conftest import REPO

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_every_node_runs_on_cuda(tmp_path):
    spec = importlib.util.spec_from_file_location("check_cuda", REPO / "export" / "check_cuda.py")
    check_cuda = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_cuda)
    rows = check_cuda.check_model("vitlab_fmnist", [1, 8], tmp_path)  # raises if any node falls back to CPU
    assert len(rows) == 8 and all(r["fused_attention"] == 4 for r in rows)
    assert all(r["max_abs_diff_logits"] < (5e-2 if r["graph"].startswith("fp16") else 1e-3) for r in rows)
