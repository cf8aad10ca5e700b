"""fp16 and int8 variants of an exported fp32 graph.

fp16: weights and activations in half precision with the I/O kept (uint8 in, fp32 out); LayerNormalization and
Softmax stay fp32. int8: ``dynamic`` quantises MatMul/Gemm weights per channel
and their activations per batch at run time (no calibration); ``static`` writes QDQ pairs calibrated on training
images. Both touch MatMul/Gemm only: ONNX Runtime's default op list would turn the standard ``Attention`` node
into ``com.microsoft.QAttention``, which rejects that op's attributes ("Unrecognized attribute: is_causal").
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


def to_fp16(model):
    """fp16 copy of ``model`` (fp32 I/O kept)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(_unshare_initializers(model), keep_io_types=True, op_block_list=FP32_OPS)


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


def to_int8(model, calibration: np.ndarray | None = None):
    """int8 copy of ``model``: dynamic quantisation, or static QDQ when ``calibration`` images are given."""
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
            quantize_dynamic(src, dst, op_types_to_quantize=INT8_OPS, per_channel=True, weight_type=QuantType.QInt8,
                             extra_options=options)
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
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            extra_options=options)
        return onnx.load(dst)
