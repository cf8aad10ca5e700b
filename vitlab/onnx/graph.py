"""torch -> ONNX: the end-to-end graph (uint8 pixels in, probabilities and logits out; ``export_module`` for any
task's wrapper, a denoiser step's float inputs too), the fused attention check, the rewrite to ONNX Runtime's
MultiHeadAttention, and the ``vitlab`` metadata document.

timm's attention runs through ``scaled_dot_product_attention``; the dynamo exporter at opset >= 23 turns each
call into ONE standard ONNX ``Attention`` node. Opsets 26-28 write models that fail the checker with torch
2.14, and opsets below 23 have no ``Attention`` op, so the exporter accepts 23-25 only.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections import Counter
from contextlib import redirect_stdout
from typing import Any

import numpy as np
import torch
from torch import nn

from vitlab.errors import VitlabError

log = logging.getLogger(__name__)

SUPPORTED_OPSETS = (23, 24, 25)
ATTENTION_PATHS = ("onnx", "ort-mha")
FUSED_ATTENTION = {("", "Attention"), ("com.microsoft", "MultiHeadAttention")}
INPUTS, OUTPUTS = ["images"], ["probs", "logits"]


class EndToEnd(nn.Module):
    """``images`` uint8 ``[N, C, H, W]`` -> (``probs`` ``[N, K]``, ``logits`` ``[N, K]``); normalisation is inside
    the classifier, so the graph takes raw pixels."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(images)  # [N, K]
        return logits.softmax(-1), logits


def export_graph(classifier: nn.Module, opset: int = 23):
    """The fp32 ``onnx.ModelProto`` of ``EndToEnd(classifier)`` with a dynamic batch axis."""
    return export_module(EndToEnd(classifier), classifier.preprocess.input_size, OUTPUTS, opset,
                         type(classifier).__name__)


def export_module(module: nn.Module, input_size: tuple[int, int, int], outputs: list[str], opset: int = 23,
                  what: str | None = None, examples: dict[str, torch.Tensor] | None = None):
    """The fp32 ``onnx.ModelProto`` of an end-to-end ``module`` (uint8 ``images [N, *input_size]`` in, ``outputs``
    out) with a dynamic batch axis, traced at batch 2. ``examples``: other inputs instead, by name (each with the
    batch as its first axis, e.g. a denoiser's ``x``, ``t``, ``y``, ``guidance``)."""
    import onnx

    if opset not in SUPPORTED_OPSETS:
        raise VitlabError(f"opset {opset} is not supported; use one of {SUPPORTED_OPSETS} (23 is the first with the "
                          "fused Attention op; 26-28 produce invalid models with this torch)")
    examples = examples or {INPUTS[0]: torch.randint(0, 256, (2, *input_size), dtype=torch.uint8)}
    module = module.eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with torch.no_grad(), warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, tuple(examples.values()), dynamo=True, opset_version=opset,
                                        input_names=list(examples), output_names=list(outputs),
                                        dynamic_shapes=tuple({0: batch} for _ in examples), optimize=True,
                                        verbose=False)
    except Exception as e:  # torch.export / onnxscript raise many types; the first line is the useful part
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise VitlabError(f"could not export {what or type(module).__name__} to ONNX: {first[:300]}") from None
    model = program.model_proto
    onnx.checker.check_model(model, full_check=False)
    static = [i.name for i in model.graph.input if not i.type.tensor_type.shape.dim[0].dim_param]
    if static:  # the exporter falls back to fixed shapes when torch.export cannot keep the batch symbolic
        raise VitlabError(f"could not export {what or type(module).__name__} to ONNX with a dynamic batch: input(s) "
                          f"{', '.join(static)} got a fixed batch size")
    return model


def op_counts(model) -> dict[str, int]:
    """Node counts by type (``domain:Op`` for non-standard domains), main graph only."""
    return dict(Counter(f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                        for n in model.graph.node))


def count_fused_attention(model) -> int:
    """How many nodes compute a whole attention core: ONNX ``Attention`` or ORT ``MultiHeadAttention``."""
    return sum((n.domain if n.domain != "ai.onnx" else "", n.op_type) in FUSED_ATTENTION for n in model.graph.node)


def rewrite_to_ort_mha(model):
    """Each standard ``Attention`` (4-D Q/K/V ``[B, heads, S, d]``) -> ``com.microsoft.MultiHeadAttention`` on
    ``[B, S, heads*d]``, whose CUDA kernels use flash / memory-efficient attention. Transposes around it keep the
    surrounding graph unchanged; ONNX Runtime's optimiser folds them into the neighbouring ones."""
    import onnx_ir as ir

    graph_model = ir.serde.deserialize_model(model)
    graph = graph_model.graph
    shape3 = ir.tensor(np.array([0, 0, -1], np.int64), name="vitlab_mha_bsd")
    bsd = None
    rewritten = 0
    for node in list(graph):
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
            continue
        q, k, v = node.inputs[:3]
        attrs = {a.name: a.value for a in node.attributes.values()}
        if any(x is not None for x in node.inputs[3:]) or attrs.get("is_causal", 0) or attrs.get("softcap", 0.0) \
                or attrs.get("qk_matmul_output_mode", 0) or len(node.outputs) > 1 and any(
                    o.uses() for o in node.outputs[1:]):
            raise VitlabError(f"attention node {node.name!r} uses masks, causality or extra outputs that "
                              "MultiHeadAttention cannot express; export with attention='onnx'")
        if q.shape is None or len(q.shape) != 4 or not isinstance(q.shape[1], int) or not isinstance(q.shape[3], int):
            raise VitlabError(f"attention node {node.name!r}: query shape {q.shape} is not [B, heads, S, d] with "
                              "static heads and d; export with attention='onnx'")
        heads, head_dim = q.shape[1], q.shape[3]
        if bsd is None:
            bsd = ir.Value(name="vitlab_mha_bsd", const_value=shape3)
            graph.register_initializer(bsd)
        tape = ir.tape.Tape()
        flat = [tape.op("Reshape", [tape.op("Transpose", [t], {"perm": [0, 2, 1, 3]}), bsd]) for t in (q, k, v)]
        mha_attrs: dict[str, Any] = {"num_heads": heads}
        if "scale" in attrs:
            mha_attrs["scale"] = attrs["scale"]
        out = tape.op("MultiHeadAttention", flat, mha_attrs, domain="com.microsoft")  # [B, S, heads*d]
        heads_shape = tape.initializer(ir.tensor(np.array([0, 0, heads, head_dim], np.int64)),
                                       name=f"{node.name}_bsnh")
        y = tape.op("Transpose", [tape.op("Reshape", [out, heads_shape])], {"perm": [0, 2, 1, 3]})
        y.shape, y.type = node.outputs[0].shape, node.outputs[0].type
        graph.insert_before(node, tape.nodes)
        for init in tape.initializers:
            graph.register_initializer(init)
        ir.convenience.replace_all_uses_with(node.outputs[0], y, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        rewritten += 1
    graph.opset_imports.setdefault("com.microsoft", 1)
    log.info("rewrote %d Attention nodes to com.microsoft.MultiHeadAttention", rewritten)
    return ir.serde.serialize_model(graph_model)


def model_metadata(classifier: nn.Module, name: str, attention: str = "onnx", opset: int = 23,
                   precision: str = "fp32", outputs: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """The ``vitlab`` metadata document for an exported model (see vitlab_edge.metadata for the keys).
    ``classifier``: anything with a ``preprocess``; ``extra`` adds keys and replaces defaults (a model without a
    timm ``backbone`` passes ``arch`` and ``depth``; a generator its ``inputs`` and ``input_dtype``)."""
    import vitlab

    backbone = getattr(classifier, "backbone", None)
    base = {"inputs": INPUTS, "input_dtype": "uint8"}
    if backbone is not None:
        base.update(arch=backbone.arch, depth=backbone.depth)
    return {"format": 1, **classifier.preprocess.to_dict(), **base, "outputs": list(outputs or OUTPUTS),
            "backbone": name, "attention": attention, "opset": opset, "precision": precision,
            "vitlab_version": vitlab.__version__, **extra}


def set_metadata(model, meta: dict[str, Any]) -> None:
    """Store ``meta`` as one JSON document under ``vitlab`` in the model's metadata_props (replacing any)."""
    from vitlab_edge.metadata import METADATA_KEY

    keep = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for key, value in [*keep, (METADATA_KEY, json.dumps(meta, sort_keys=True))]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def get_metadata(model) -> dict[str, Any]:
    from vitlab_edge.metadata import METADATA_KEY, parse_metadata

    props = {p.key: p.value for p in model.metadata_props}
    return parse_metadata(props.get(METADATA_KEY), "model")
