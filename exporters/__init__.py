"""Exporters: a run directory in, a verified bundle out (``edgetl.exporters``)."""

from __future__ import annotations

from .formats import ExportFormat, parse_formats
from .onnx import export_onnx

EXPORT_FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(
        name="onnx", suffix=".onnx", precision="fp32", backends=("onnxruntime",),
        export=export_onnx, tolerance=1e-4,
    ),
}

DEFAULT_FORMATS = "onnx"


def resolve_formats(text: str) -> list[ExportFormat]:
    return parse_formats(text, EXPORT_FORMATS)


__all__ = ["EXPORT_FORMATS", "DEFAULT_FORMATS", "ExportFormat", "resolve_formats"]
