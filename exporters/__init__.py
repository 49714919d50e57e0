"""Exporters: a run directory in, a verified bundle out (``edgetl.exporters``).

:data:`EXPORT_FORMATS` is the declarative table of formats: name, file
suffix, precision, the runtime backends that run it (the first one is its
intended target; the artifact is measured here with the first one that is
installed), its builder, how many fallback attempts the accuracy gate may
make, the parity tolerance against torch (fp32 formats only), the options
it accepts and the CPU features it needs to run as stated.

Two int8 variants per engine, because CPUs differ (measured on digits, the
same Q/DQ file): full 8-bit weights are exact where the CPU multiplies u8 x s8
into int32 (VNNI, AMX) and saturate without it (AVX2: 0.9666 -> 0.8089);
7-bit weights are exact on both (0.9295 on both) but lose accuracy.  So
``onnx-int8`` / ``openvino-int8`` run on every x86 and ``*-int8-vnni`` only
where the CPU has int8 dot products.
"""

from __future__ import annotations

from edgetl.runtime.machine import BF16_FLAGS, INT8_DOT_FLAGS

from .formats import ExportFormat, parse_formats
from .onnx_variants import (
    INT8_ATTEMPTS,
    build_fp16,
    build_int8,
    build_int8_dynamic,
    build_int8_tensorrt,
    build_int8_vnni,
)
from .openvino import (
    OPENVINO_INT8_ATTEMPTS,
    build_openvino,
    build_openvino_bf16,
    build_openvino_int8,
    build_openvino_int8_vnni,
)

FP32_TOLERANCE = 1e-4
#: Static Q/DQ int8 in ONNX is built for CNNs: on MiniLM (banking77, 8 intents) ONNX Runtime's MinMax calibration
#: lost 32 points; an encoder's int8 is onnx-int8-dynamic (or NNCF's transformer scheme, openvino-int8).
IMAGE_ONLY = ("image",)

EXPORT_FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("onnx", ".onnx", "fp32", ("onnxruntime",), None, 1, FP32_TOLERANCE),
        ExportFormat("onnx-fp16", ".onnx", "fp16", ("tensorrt", "onnxruntime"), build_fp16, 2, None),
        ExportFormat("onnx-int8", ".onnx", "int8", ("onnxruntime",), build_int8, INT8_ATTEMPTS, None,
                     modalities=IMAGE_ONLY),
        ExportFormat("onnx-int8-vnni", ".onnx", "int8", ("onnxruntime", "onnxruntime-reference"), build_int8_vnni,
                     INT8_ATTEMPTS, None, requires_cpu=INT8_DOT_FLAGS,
                     gate_hint="onnx-int8 (7-bit weights) runs on every CPU", modalities=IMAGE_ONLY),
        ExportFormat("onnx-int8-trt", ".onnx", "int8", ("tensorrt", "onnxruntime-reference"), build_int8_tensorrt,
                     INT8_ATTEMPTS, None, modalities=IMAGE_ONLY),
        ExportFormat("onnx-int8-dynamic", ".onnx", "int8", ("onnxruntime",), build_int8_dynamic, 2, None,
                     gate_hint="dynamic quantization suits transformer and RNN models; for a CNN use onnx-int8"),
        ExportFormat("openvino", ".xml", "fp32", ("openvino",), build_openvino, 1, FP32_TOLERANCE,
                     frozenset({"fp16"})),
        ExportFormat("openvino-bf16", ".xml", "bf16", ("openvino",), build_openvino_bf16, 1, None,
                     requires_cpu=BF16_FLAGS),
        ExportFormat("openvino-int8", ".xml", "int8", ("openvino",), build_openvino_int8,
                     OPENVINO_INT8_ATTEMPTS, None),
        ExportFormat("openvino-int8-vnni", ".xml", "int8", ("openvino",), build_openvino_int8_vnni,
                     OPENVINO_INT8_ATTEMPTS, None, requires_cpu=INT8_DOT_FLAGS,
                     gate_hint="openvino-int8 (7-bit weights) runs on every CPU"),
    )
}

DEFAULT_FORMATS = "onnx"


def resolve_formats(text: str, options: dict | None = None) -> list[ExportFormat]:
    return parse_formats(text, EXPORT_FORMATS, options or {})


__all__ = ["EXPORT_FORMATS", "DEFAULT_FORMATS", "ExportFormat", "resolve_formats"]
