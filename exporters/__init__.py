"""Exporters: a run directory in, a verified bundle out (``edgetl.exporters``).

:data:`EXPORT_FORMATS` is the declarative table of formats: name, file
suffix, precision, the runtime backends that run it (the first one is its
intended target; the artifact is measured here with the first one that is
installed), its builder, how many fallback attempts the accuracy gate may
make, the parity tolerance against torch (fp32 formats only) and the options
it accepts.
"""

from __future__ import annotations

from .formats import ExportFormat, parse_formats
from .onnx_variants import INT8_ATTEMPTS, build_fp16, build_int8, build_int8_dynamic, build_int8_tensorrt
from .openvino import OPENVINO_INT8_ATTEMPTS, build_openvino, build_openvino_int8

FP32_TOLERANCE = 1e-4

EXPORT_FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("onnx", ".onnx", "fp32", ("onnxruntime",), None, 1, FP32_TOLERANCE),
        ExportFormat("onnx-fp16", ".onnx", "fp16", ("tensorrt", "onnxruntime"), build_fp16, 2, None),
        ExportFormat("onnx-int8", ".onnx", "int8", ("onnxruntime",), build_int8, INT8_ATTEMPTS, None),
        ExportFormat("onnx-int8-trt", ".onnx", "int8", ("tensorrt", "onnxruntime-reference"), build_int8_tensorrt,
                     INT8_ATTEMPTS, None),
        ExportFormat("onnx-int8-dynamic", ".onnx", "int8", ("onnxruntime",), build_int8_dynamic, 2, None,
                     gate_hint="dynamic quantization suits transformer and RNN models; for a CNN use onnx-int8"),
        ExportFormat("openvino", ".xml", "fp32", ("openvino",), build_openvino, 1, FP32_TOLERANCE,
                     frozenset({"fp16"})),
        ExportFormat("openvino-int8", ".xml", "int8", ("openvino",), build_openvino_int8,
                     OPENVINO_INT8_ATTEMPTS, None),
    )
}

DEFAULT_FORMATS = "onnx"


def resolve_formats(text: str, options: dict | None = None) -> list[ExportFormat]:
    return parse_formats(text, EXPORT_FORMATS, options or {})


__all__ = ["EXPORT_FORMATS", "DEFAULT_FORMATS", "ExportFormat", "resolve_formats"]
