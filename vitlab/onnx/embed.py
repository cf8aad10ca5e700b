"""The embedding piece of the exporter: ``images`` uint8 -> ``embedding`` ``[N, D]`` (L2-normalised pooled features,
``vitlab.models.embed.Embedder``), gated on the cosine similarity of each image's ONNX embedding with torch's, and
reporting how often each image's nearest neighbour in the eval set is the same for both (what a search returns)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vitlab.errors import VitlabError
from vitlab.onnx.classify import ClassificationExport
from vitlab.onnx.graph import export_module
from vitlab.onnx.report import EvalSet, counted_slices, load_eval_set

OUTPUTS = ["embedding"]
# the smallest cosine similarity with torch's embedding that a variant may give on any eval image
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98}


class EmbeddingExport(ClassificationExport):
    """An ``Embedder``'s graph, eval images, torch reference and cosine gate (``TaskSpec.exporter`` of
    ``embedding``). The eval and calibration images, the torch reference and the fp32 nodes are the classification
    piece's; the images need no labels, and the gate compares vectors."""

    outputs = OUTPUTS

    def graph(self, opset: int):
        return export_module(self.model, self.model.preprocess.input_size, OUTPUTS, opset, "the embedding model")

    def images(self, data: str | os.PathLike | None, split: str, limit: int) -> EvalSet:
        if data is None and tuple(self.model.preprocess.input_size) != (1, 28, 28):
            raise VitlabError("an embedding export is checked on real images: pass --eval-data FOLDER (images the "
                              "model did not train on)")
        return load_eval_set(data or "fashion-mnist", self.model.preprocess.replace(labels=()), split, limit)

    def metadata(self) -> dict[str, Any]:
        return {"embedding_dim": int(self.model.dim)}

    def evaluate(self, session, precision: str) -> dict[str, Any]:
        """Cosine similarity of ONNX and torch embeddings per image (min, mean) and nearest-neighbour agreement;
        ``passed`` when the smallest cosine reaches ``MIN_COSINE[precision]``."""
        assert self.eval_set is not None and self.ref is not None
        name = session.get_inputs()[0].name
        images = self.eval_set.images
        got = np.concatenate([session.run(OUTPUTS, {name: images[s]})[0]
                              for s in counted_slices(len(images), 256, f"eval onnx {precision}")])
        cos = np.sum(got * self.ref, axis=1) / np.maximum(
            np.linalg.norm(got, axis=1) * np.linalg.norm(self.ref, axis=1), 1e-12)
        nn_agree = float(np.mean(_nearest(got) == _nearest(self.ref))) * 100 if len(got) > 1 else 100.0
        budget = MIN_COSINE[precision]
        return {"num_images": len(got), "cosine_min": round(float(cos.min()), 6),
                "cosine_mean": round(float(cos.mean()), 6), "nearest_neighbour_agreement_pct": round(nn_agree, 2),
                "passed": bool(cos.min() >= budget), "gate": "1 - min cosine",
                "gate_drop_pp": round(1.0 - float(cos.min()), 6), "gate_budget_pp": round(1.0 - budget, 6),
                "gate_unit": "(1 - cosine)"}

    @staticmethod
    def summary(rep: dict[str, Any]) -> str:
        return (f"cosine min {rep['cosine_min']:.6f} mean {rep['cosine_mean']:.6f}, nearest neighbour "
                f"{rep['nearest_neighbour_agreement_pct']:.2f}% the same")


def _nearest(emb: np.ndarray) -> np.ndarray:
    """Each row's nearest other row by cosine (rows are unit vectors), 1,024 rows at a time."""
    out = np.empty(len(emb), np.int64)
    for start in range(0, len(emb), 1024):
        sim = emb[start:start + 1024] @ emb.T  # [B, N]
        sim[np.arange(len(sim)), np.arange(start, start + len(sim))] = -np.inf
        out[start:start + len(sim)] = sim.argmax(1)
    return out
