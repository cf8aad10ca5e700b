"""fp16 and int8 variants of an exported fp32 graph.

fp16: weights and activations in half precision with the I/O kept (uint8 in, fp32 out); LayerNormalization and
Softmax stay fp32, and so does a detector's post-processing (box decoding, top-k, NMS). int8: ``dynamic``
quantises MatMul/Gemm weights per channel and their activations per batch at run time (no calibration);
``static`` writes QDQ pairs calibrated on training images. Both touch MatMul/Gemm only: ONNX Runtime's default
op list would turn the standard ``Attention`` node into ``com.microsoft.QAttention``, which rejects that
op's attributes ("Unrecognized attribute: is_causal").

Weights are quantised to 7 bits ([-64, 64], ``reduce_range``) by default, so that every runtime computes the same
integer products. ONNX Runtime's x86 kernel for uint8 activations x int8 weights on CPUs without VNNI (AVX2,
AVX-512 without VNNI) multiplies with ``vpmaddubsw``, which adds two neighbouring u8 x s8 products into a
*saturating* int16: with 8-bit weights a pair can reach 2 x 255 x 127 = 64,770 > 32,767, and the sum is clipped.
VNNI CPUs, ARM and onnxruntime-web's WebAssembly kernels compute exactly, so the same file answered differently
there (measured on an AVX2 EPYC: 636 of one MatMulInteger's int32 outputs off by up to 16,755; probabilities up to
0.15 apart from onnxruntime-web, a top-1 flip in 18 photos). With 7-bit weights a pair is at most 2 x 255 x 64 =
32,640: exact everywhere, at the same speed (same kernels) and, measured, the same accuracy.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
FP32_OPS = ["LayerNormalization", "Softmax"]  # numerically sensitive: statistics over a whole row
INT8_OPS = ["MatMul", "Gemm"]


def to_fp16(model, fp32_nodes: list[str] | None = None):
    """fp16 copy of ``model`` (fp32 I/O kept); ``fp32_nodes``: names of nodes that compute in fp32 from end to end
    (a detector's post-processing: one Cast in from the fp16 network, none between them or before the outputs).
    Ops without fp16 kernels (``NonMaxSuppression``, ``TopK``, ...) stay fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    src = _unshare_initializers(model)
    if fp32_nodes:  # values without a declared type are left alone: no fp16 round trip between fp32 nodes
        keep = set(fp32_nodes)
        produced = {o for n in src.graph.node if n.name in keep for o in n.output}
        kept = [v for v in src.graph.value_info if v.name not in produced]
        del src.graph.value_info[:]
        src.graph.value_info.extend(kept)
    # shape inference would re-declare the values just left untyped (the exporter's value_info is complete)
    half = convert_float_to_float16(src, keep_io_types=True, op_block_list=FP32_OPS + DEFAULT_OP_BLOCK_LIST,
                                    node_block_list=fp32_nodes, disable_shape_infer=bool(fp32_nodes))
    return _skip_output_round_trips(_drop_duplicate_nodes(half))


def _drop_duplicate_nodes(model):
    """The converter gives a fp16 value read by two fp32 nodes two identical Casts (same name, same output): keep
    the first."""
    seen, keep = set(), []
    for node in model.graph.node:
        key = node.SerializeToString()
        if key not in seen:
            seen.add(key)
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _skip_output_round_trips(model):
    """A float output computed in fp32 reaches the graph through Cast(fp16) -> Cast(fp32): read the fp32 value."""
    import onnx

    producer = {o: n for n in model.graph.node for o in n.output}
    to = {n.name: next((a.i for a in n.attribute if a.name == "to"), None) for n in model.graph.node}
    for out in model.graph.output:
        last = producer.get(out.name)
        first = producer.get(last.input[0]) if last is not None and last.op_type == "Cast" else None
        if first is not None and first.op_type == "Cast" and to[first.name] == onnx.TensorProto.FLOAT16 \
                and to[last.name] == onnx.TensorProto.FLOAT and _is_fp32(model, first.input[0], producer):
            last.input[0] = first.input[0]
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    dead = [n for n in model.graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
    for n in dead:
        model.graph.node.remove(n)
    return model


def _is_fp32(model, name: str, producer: dict) -> bool:
    """Whether ``name`` is a float32 value: the output of a node kept fp32 (no fp16 type declared for it)."""
    import onnx

    declared = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    return name in producer and declared.get(name, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT


def _unshare_initializers(model):
    """A copy where every initializer feeds one node input. The exporter merges equal constants (e.g. the LayerNorm
    weights of an untrained model, or mean == std); the fp16 converter then gives the Casts it adds for two kept-fp32
    consumers the same name and output, an invalid graph."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    seen: dict[str, int] = {}
    for node in out.graph.node:
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__use{seen[name]}"
                out.graph.initializer.append(copy)
                node.input[i] = copy.name
    return out


def _without_value_info(model):
    """A copy without intermediate shape annotations: ORT's quantiser re-infers shapes and trips over some of
    the dynamo exporter's (for the classifier's Gemm), while the inferred ones are complete."""
    import onnx

    clean = onnx.ModelProto()
    clean.CopyFrom(model)
    del clean.graph.value_info[:]
    return clean


@contextlib.contextmanager
def _quiet_root_logger():
    """ORT's quantiser logs through the root logger (and so would install a stderr handler on first use)."""
    root = logging.getLogger()
    level, guard = root.level, logging.NullHandler()
    root.addHandler(guard)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(guard)
        root.setLevel(level)


def to_int8(model, calibration: np.ndarray | None = None, per_channel: bool = True, reduce_range: bool = True):
    """int8 copy of ``model``: dynamic quantisation, or static QDQ when ``calibration`` images are given; weights
    per output channel (default) or per tensor, in 7 bits (``reduce_range``, default: exact integer products on
    every runtime, see the module's docstring) or over the full int8 range (``reduce_range=False``: what ONNX
    Runtime computes then depends on the CPU)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    with tempfile.TemporaryDirectory(prefix="vitlab-int8-") as tmp, _quiet_root_logger():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(_without_value_info(model), src)
        # shape inference cannot type the outputs of com.microsoft ops (the ort-mha path): they are float
        options = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        if calibration is None:
            quantize_dynamic(src, dst, op_types_to_quantize=INT8_OPS, per_channel=per_channel,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8, extra_options=options)
        else:
            name = model.graph.input[0].name

            class Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    chunks = max(1, len(calibration) // 32)
                    self.batches: Iterator[np.ndarray] = iter(np.array_split(calibration, chunks))

                def get_next(self):
                    batch = next(self.batches, None)
                    return None if batch is None else {name: batch}

            quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=INT8_OPS,
                            per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, extra_options=options)
        return onnx.load(dst)
