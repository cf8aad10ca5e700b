"""torch -> ONNX export: end-to-end graphs with fused attention, fp16/int8 variants, metadata, parity reports."""

from vitlab.onnx.export import ExportResult, export_onnx
from vitlab.onnx.graph import count_fused_attention, rewrite_to_ort_mha

__all__ = ["ExportResult", "count_fused_attention", "export_onnx", "rewrite_to_ort_mha"]
