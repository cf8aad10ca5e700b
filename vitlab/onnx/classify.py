"""The classification piece of the exporter: ``EndToEnd`` graph (``probs``, ``logits``), Fashion-MNIST or folder
eval images, and the top-1 accuracy gate (see ``vitlab.onnx.report``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from torch import nn

from vitlab.onnx.graph import OUTPUTS, export_graph
from vitlab.onnx.report import EvalSet, load_eval_set, onnx_outputs, parity_report, torch_outputs


class ClassificationExport:
    """A classifier's graph, eval set, torch reference and gate (``TaskSpec.exporter`` of classification)."""

    outputs = OUTPUTS

    def __init__(self, model: nn.Module, options: dict[str, Any]) -> None:
        self.model = model.eval()
        self.depth = model.backbone.depth
        self.eval_set: EvalSet | None = None
        self.ref: np.ndarray | None = None

    def graph(self, opset: int):
        return export_graph(self.model, opset)

    def images(self, data: str | os.PathLike | None, split: str, limit: int) -> EvalSet:
        """The eval (``split="test"``) or calibration (``"train"``) images ``data`` names (``load_eval_set``)."""
        return load_eval_set(data, self.model.preprocess, split=split, limit=limit)

    def prepare(self, eval_data: str | os.PathLike | None, num_eval: int) -> str:
        """Read the held-out images and run the torch model on them; returns where they came from."""
        self.eval_set = self.images(eval_data, "test", num_eval)
        self.ref = torch_outputs(self.model, self.eval_set.images)
        return f"{len(self.eval_set.images)} images from {self.eval_set.source}"

    def calibration(self, calib_data: str | os.PathLike, num_calib: int) -> np.ndarray:
        return self.images(calib_data, "train", num_calib).images

    def metadata(self) -> dict[str, Any]:
        return {}

    def fp32_nodes(self, model) -> list[str]:
        return []

    def evaluate(self, session, precision: str) -> dict[str, Any]:
        """The parity report of ``session`` against torch; ``gate_drop_pp`` / ``gate_budget_pp`` say the gate."""
        assert self.eval_set is not None and self.ref is not None
        probs, logits = onnx_outputs(session, self.eval_set.images)
        rep = parity_report(self.ref, probs, logits, self.eval_set, precision)
        drop = rep.get("accuracy_drop_pp", rep.get("accuracy_drop_bound_pp"))
        return {**rep, "gate": "accuracy", "gate_drop_pp": drop, "gate_budget_pp": rep["max_accuracy_drop_pp"]}

    @staticmethod
    def summary(rep: dict[str, Any]) -> str:
        acc = rep.get("accuracy_onnx_pct")
        return (f"agreement {rep['top1_agreement_pct']:.2f}%"
                + (f"  accuracy {acc:.2f}% (torch {rep['accuracy_torch_pct']:.2f}%)" if acc is not None else ""))
