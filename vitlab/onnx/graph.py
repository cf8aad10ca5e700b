"""torch -> ONNX: the end-to-end graph (uint8 pixels in, probabilities and logits out; ``export_module`` for any
task's wrapper, a denoiser step's float inputs too), the fused attention check, the rewrite to ONNX Runtime's
MultiHeadAttention, and the ``vitlab`` metadata document.

timm's attention runs through ``scaled_dot_product_attention``; the dynamo exporter at opset >= 23 turns each
call into ONE standard ONNX ``Attention`` node on 4-D heads, which ``attention_to_3d`` turns into the same op on
the 3-D token layout (no head transposes left around it). Opsets 26-28 write models that fail the checker with torch
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
    model = attention_to_3d(program.model_proto)
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


def attention_to_3d(model):
    """Each standard 4-D ``Attention`` (Q/K/V ``[B, heads, S, d]``, as the exporter writes it) -> the same op on
    3-D ``[B, S, heads*d]`` tensors (``q_num_heads`` / ``kv_num_heads``). Where Q/K/V are the usual head split of
    one QKV projection (``reshape(B, S, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)``) and the output is merged
    back with ``transpose(1, 2).reshape(B, S, heads*d)``, those become one ``Split`` of the projection and nothing:
    no Transposes, Squeezes or Reshapes are left per block (faster on the CPU: see the README's figures).
    Other 4-D nodes get Transposes and Reshapes around them, which ONNX Runtime's optimiser folds. A node whose
    heads or head size is not static stays 4-D."""
    return _rewrite_attention(model, mha=False)


def rewrite_to_ort_mha(model):
    """Each standard ``Attention`` (3-D, or 4-D ``[B, heads, S, d]``) -> ``com.microsoft.MultiHeadAttention`` on
    ``[B, S, heads*d]``, whose CUDA kernels use flash / memory-efficient attention."""
    return _rewrite_attention(model, mha=True)


def _rewrite_attention(model, mha: bool):
    import onnx_ir as ir
    import onnx_ir.passes.common

    graph_model = ir.serde.deserialize_model(model)
    graph = graph_model.graph
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
            if not mha:
                continue
            raise VitlabError(f"attention node {node.name!r} uses masks, causality or extra outputs that "
                              "MultiHeadAttention cannot express; export with attention='onnx'")
        three_d = len(q.shape) == 3 if q.shape is not None else "q_num_heads" in attrs  # ours carry no shape
        if three_d:
            if not mha:
                continue
            heads, kv_heads = attrs.get("q_num_heads"), attrs.get("kv_num_heads")
            if heads != kv_heads:
                raise VitlabError(f"attention node {node.name!r} has {heads} query and {kv_heads} key/value "
                                  "heads; MultiHeadAttention needs them equal; export with attention='onnx'")
        elif q.shape is None or len(q.shape) != 4 or not all(isinstance(t.shape[i], int) for t in (q, k, v)
                                                              for i in (1, 3)):
            if not mha:
                continue
            raise VitlabError(f"attention node {node.name!r}: query shape {q.shape} is not [B, heads, S, d] with "
                              "static heads and d; export with attention='onnx'")
        else:
            heads, kv_heads = q.shape[1], k.shape[1]
        tape = ir.tape.Tape()
        split = None if three_d or mha else _qkv_split(q, k, v, heads, q.shape[3])
        merged = None if split is None else _head_merge(node.outputs[0], heads * v.shape[3])
        if three_d:
            flat = [q, k, v]
        elif merged is not None:
            x, order = split
            sizes = tape.initializer(ir.tensor(np.array([heads * q.shape[3]] * 3, np.int64)), name=f"{node.name}_qkv")
            parts = tape.op_multi_out("Split", [x, sizes], {"axis": -1}, num_outputs=3)
            flat = [parts[i] for i in order]
        else:
            if bsd is None:
                bsd = ir.Value(name="vitlab_attention_bsd", const_value=ir.tensor(np.array([0, 0, -1], np.int64)))
                graph.register_initializer(bsd)
            flat = [tape.op("Reshape", [tape.op("Transpose", [t], {"perm": [0, 2, 1, 3]}), bsd]) for t in (q, k, v)]
        new_attrs: dict[str, Any] = {"num_heads": heads} if mha else {"q_num_heads": heads, "kv_num_heads": kv_heads}
        if "scale" in attrs:
            new_attrs["scale"] = attrs["scale"]
        out = tape.op("MultiHeadAttention", flat, new_attrs, domain="com.microsoft") if mha \
            else tape.op("Attention", flat, new_attrs)  # [B, S, heads*d_v]
        if three_d or merged is not None:
            y, replaced = out, merged if merged is not None else node.outputs[0]
        else:
            heads_shape = tape.initializer(ir.tensor(np.array([0, 0, heads, v.shape[3]], np.int64)),
                                           name=f"{node.name}_bsnh")
            y, replaced = tape.op("Transpose", [tape.op("Reshape", [out, heads_shape])], {"perm": [0, 2, 1, 3]}), \
                node.outputs[0]
        y.shape, y.type = replaced.shape, replaced.type
        graph.insert_before(node, tape.nodes)
        for init in tape.initializers:
            graph.register_initializer(init)
        # the old node (and a replaced head split and merge) is left without uses: RemoveUnusedNodesPass drops it
        ir.convenience.replace_all_uses_with(replaced, y, replace_graph_outputs=True)
        rewritten += 1
    if mha:
        graph.opset_imports.setdefault("com.microsoft", 1)
    ir.passes.common.RemoveUnusedNodesPass()(graph_model)
    log.info("rewrote %d Attention nodes to %s", rewritten,
             "com.microsoft.MultiHeadAttention" if mha else "3-D Attention")
    return ir.serde.serialize_model(graph_model)


def _const(value) -> list[int] | None:
    return None if value is None or value.const_value is None else value.const_value.numpy().reshape(-1).tolist()


def _qkv_split(q, k, v, heads: int, head_dim: int):
    """``(x, order)`` when Q, K and V are ``Squeeze(Slice|Gather(Transpose(Reshape(x, [., ., 3, heads, head_dim]),
    perm=[2, 0, 3, 1, 4]), index i, axis 0), axis 0)`` of one 3-D ``x`` (``order``: Q's, K's and V's index);
    else None."""
    source, order = None, []
    for t in (q, k, v):
        squeeze = t.producer()
        pick = squeeze.inputs[0].producer() if squeeze is not None and squeeze.op_type == "Squeeze" else None
        if pick is None or _const(squeeze.inputs[1] if len(squeeze.inputs) > 1 else None) != [0]:
            return None
        if pick.op_type == "Slice" and len(pick.inputs) >= 4 and _const(pick.inputs[3]) == [0] \
                and (len(pick.inputs) < 5 or _const(pick.inputs[4]) in (None, [1])):
            start, end = _const(pick.inputs[1]), _const(pick.inputs[2])
            if start is None or end != [start[0] + 1]:
                return None
            order.append(start[0])
        elif pick.op_type == "Gather" and pick.attributes.get_int("axis", 0) == 0 and \
                _const(pick.inputs[1]) in ([0], [1], [2]) and pick.inputs[1].shape is not None \
                and len(pick.inputs[1].shape) == 0:
            order.append(_const(pick.inputs[1])[0])
        else:
            return None
        permute = pick.inputs[0].producer()
        if source not in (None, permute) or permute is None or permute.op_type != "Transpose" \
                or list(permute.attributes.get_ints("perm", [])) != [2, 0, 3, 1, 4]:
            return None
        source = permute
    reshape = source.inputs[0].producer()
    if sorted(order) != [0, 1, 2] or reshape is None or reshape.op_type != "Reshape":
        return None
    target, x = _const(reshape.inputs[1]), reshape.inputs[0]
    if target is None or len(target) != 5 or target[2:] != [3, heads, head_dim] or x.shape is None \
            or len(x.shape) != 3 or x.shape[2] != 3 * heads * head_dim or not _keeps_batch_and_seq(target, x) \
            or reshape.attributes.get_int("allowzero", 0) and 0 in target:
        return None
    return x, order


def _head_merge(y, width: int):
    """The output of ``Reshape(Transpose(y, perm=[0, 2, 1, 3]), [B, S, width])``, ``y``'s only use; else None."""
    uses = list(y.uses())
    if len(uses) != 1 or uses[0].node.op_type != "Transpose" \
            or list(uses[0].node.attributes.get_ints("perm", [])) != [0, 2, 1, 3]:
        return None
    t = uses[0].node.outputs[0]
    uses = list(t.uses())
    if len(uses) != 1 or uses[0].node.op_type != "Reshape" or uses[0].idx != 0:
        return None
    reshape = uses[0].node
    merged, target = reshape.outputs[0], _const(reshape.inputs[1])
    if target is None or len(target) != 3 or target[2] != width or merged.shape is None \
            or reshape.attributes.get_int("allowzero", 0) and 0 in target or not _keeps_batch_and_seq(target, merged):
        return None
    return merged


def _keeps_batch_and_seq(target: list[int], x) -> bool:
    """Whether a Reshape ``target`` keeps ``x``'s (3-D, batch-first) first two axes as its first two (a 0 in
    ``target`` copies the input's axis: callers reject ``allowzero`` targets with zeros)."""
    seq = x.shape[1] if isinstance(x.shape[1], int) else None
    return target[0] == 0 and target[1] in (0, -1) or target[0] == -1 and target[1] in (0, seq) and seq is not None


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
