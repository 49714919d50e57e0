"""ONNX artifacts derived from the fp32 export: fp16 and three int8 flavours.

* ``onnx-fp16``: weights and compute in fp16, graph inputs/outputs fp32 (for
  GPUs and TensorRT; ONNX Runtime on CPU gains nothing from it).
* ``onnx-int8``: static post-training quantization for CPUs: Q/DQ, uint8
  activations, int8 per-channel weights.  Weights use 7 bits
  (``reduce_range`` / NNCF's overflow fix) so that CPUs without VNNI (AVX2
  only) do not saturate in the u8*s8 multiply; the model then gives the same
  results on every x86.  Attempts: ONNX Runtime's quantizer; NNCF's (bias
  correction, better ranges) when installed; NNCF with the stem and last
  convolution kept in float and twice the calibration images.
* ``onnx-int8-vnni``: the same with 8-bit weights, for CPUs with VNNI/AMX.
* ``onnx-int8-trt``: the form TensorRT consumes for explicit quantization:
  Q/DQ, int8 symmetric activations, int8 symmetric per-channel weights.
* ``onnx-int8-dynamic``: weights int8 (7 bits, as ``onnx-int8``'s: ONNX
  Runtime's u8 x s8 kernels saturate 8-bit weights on CPUs without VNNI),
  activations quantized at run time; needs no calibration.  It suits MatMul-heavy (transformer, RNN) models;
  on a CNN, ONNX Runtime's dynamic ConvInteger loses much accuracy (measured
  on Lite0 / digits: 0.71 against 0.97), which the gate reports.

Each builder takes an ``attempt`` number: later attempts are the accuracy
gate's fallbacks (keep the stem and the last convolution in float, then
double the calibration sample).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from edgetl.runtime.deps import require
from edgetl.runtime.errors import EdgetlError

from .context import BuildContext, BuildResult
from .onnx import INPUT_NAME
from .quiet import quiet

INT8_ATTEMPTS = 3


def _onnx():
    return require("onnx", "host", "ONNX quantization")


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader protocol over decoded images, one at a time."""

    def __init__(self, images: np.ndarray, input_name: str):
        self._images = images
        self._input_name = input_name
        self._position = 0

    def get_next(self):
        if self._position >= len(self._images):
            return None
        item = {self._input_name: np.ascontiguousarray(self._images[self._position:self._position + 1])}
        self._position += 1
        return item

    def rewind(self) -> None:
        self._position = 0


def stem_and_last_conv(path: Path) -> list[str]:
    convs = [n.name for n in _onnx().load(str(path)).graph.node if n.op_type == "Conv"]
    return [convs[0], convs[-1]] if len(convs) >= 2 else convs


#: The int8 flavours: ONNX Runtime quantizer settings and what the manifest says about them.
FLAVOURS = {
    "cpu": ("Q/DQ U8S8, per-channel 7-bit weights (reduce_range): exact on every x86, AVX2 included",
            dict(activation_type="QUInt8", weight_type="QInt8", per_channel=True, reduce_range=True)),
    "vnni": ("Q/DQ U8S8, per-channel 8-bit weights: for CPUs with VNNI/AMX (saturates on AVX2-only CPUs)",
             dict(activation_type="QUInt8", weight_type="QInt8", per_channel=True, reduce_range=False)),
    "trt": ("Q/DQ S8S8, symmetric activations, per-channel symmetric weights",
            dict(activation_type="QInt8", weight_type="QInt8", per_channel=True,
                 extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})),
}


def _static_int8(ctx: BuildContext, out: Path, attempt: int, flavour: str) -> BuildResult:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    source = ctx.prepared_onnx()
    calibration = ctx.data.calibration(ctx.data.calibration_size * (2 if attempt >= 2 else 1))
    excluded = stem_and_last_conv(source) if attempt >= 1 else []
    note, settings = FLAVOURS[flavour]
    settings = {k: getattr(QuantType, v) if k.endswith("_type") else v for k, v in settings.items()}
    with quiet():
        quantize_static(str(source), str(out), _CalibrationReader(calibration, INPUT_NAME),
                        quant_format=QuantFormat.QDQ, nodes_to_exclude=excluded, **settings)
    notes = [note, f"MinMax calibration on {len(calibration)} training images"]
    if excluded:
        notes.append(f"kept in float: {', '.join(excluded)} (stem and last convolution)")
    return BuildResult([out.name], notes)


def build_int8(ctx: BuildContext, out: Path, attempt: int) -> BuildResult:
    """7-bit weights, for every x86 CPU: ONNX Runtime's quantizer, then NNCF's (bias correction, measured on
    digits: 0.9295 -> 0.961 where ORT's MinMax loses 3.7 points), then NNCF with stem and last conv in float."""
    if attempt == 0 or importlib.util.find_spec("nncf") is None:
        return _static_int8(ctx, out, attempt, "cpu")
    return _nncf_int8(ctx, out, attempt, seven_bit=True)


def build_int8_vnni(ctx: BuildContext, out: Path, attempt: int) -> BuildResult:
    """8-bit weights, for CPUs with int8 dot products (measured on digits: 0.9666, no drop)."""
    if attempt == 0 or importlib.util.find_spec("nncf") is None:
        return _static_int8(ctx, out, attempt, "vnni")
    return _nncf_int8(ctx, out, attempt, seven_bit=False)


def _nncf_int8(ctx: BuildContext, out: Path, attempt: int, seven_bit: bool) -> BuildResult:
    """NNCF's post-training quantization of the ONNX graph, in the form ONNX Runtime's x86 kernels run.

    Two settings make NNCF's graph fast on ONNX Runtime (measured at 64 px: 3.75 ms -> 0.51 ms, fp32 0.66):
    per-tensor activation scales (QLinearConv takes one input scale) and unsigned activations, which
    :func:`unsigned_activations` gets by an exact zero-point shift (ONNX Runtime fuses no int8 x int8
    convolution on x86)."""
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )

    onnx = _onnx()
    source = ctx.fp32_onnx
    calibration = ctx.data.calibration(ctx.data.calibration_size * (2 if attempt >= 2 else 1))
    excluded = stem_and_last_conv(source) if attempt >= 2 else []
    dataset = nncf.Dataset([{INPUT_NAME: calibration[i:i + 1]} for i in range(len(calibration))])
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.ENABLE if seven_bit else OverflowFix.DISABLE,
        activations_quantization_params=QuantizationParameters(per_channel=False))
    with quiet():
        quantized = nncf.quantize(
            onnx.load(str(source)), dataset, subset_size=len(calibration), fast_bias_correction=False,
            ignored_scope=nncf.IgnoredScope(names=excluded) if excluded else None, advanced_parameters=advanced,
        )
    shifted = unsigned_activations(quantized)
    onnx.save(quantized, str(out))
    weights = "7-bit weights (overflow fix)" if seven_bit else "8-bit weights"
    notes = [f"NNCF Q/DQ U8S8, per-tensor activations, {weights}, full bias correction",
             f"calibration on {len(calibration)} training images"]
    if shifted:
        notes.append(f"{shifted} signed activation quantizers shifted to uint8 (exact)")
    if excluded:
        notes.append(f"kept in float: {', '.join(excluded)} (stem and last convolution)")
    return BuildResult([out.name], notes)


def unsigned_activations(model) -> int:
    """Turn int8 activation Q/DQ pairs into the equivalent uint8 ones, in place; returns how many.

    ``q = clamp(round(x / s) + z, -128, 127)`` over int8 equals ``q + 128`` over uint8 with zero point
    ``z + 128``: the same grid, the same values after dequantization.  Weights (constant DQ inputs) stay
    int8.  Recorded intermediate types are dropped so ONNX Runtime infers the new ones.
    """
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    weight_zero_points = {n.input[2] for n in model.graph.node
                          if n.op_type == "DequantizeLinear" and n.input[0] in initializers and len(n.input) > 2}
    shifted = set()
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        name = node.input[2]
        if name in weight_zero_points or name in shifted or name not in initializers:
            continue
        values = numpy_helper.to_array(initializers[name])
        if values.dtype != np.int8:
            continue
        initializers[name].CopyFrom(numpy_helper.from_array((values.astype(np.int16) + 128).astype(np.uint8), name))
        shifted.add(name)
    if shifted:
        del model.graph.value_info[:]
    return len(shifted)


def build_int8_tensorrt(ctx: BuildContext, out: Path, attempt: int) -> BuildResult:
    return _static_int8(ctx, out, attempt, "trt")


def build_int8_dynamic(ctx: BuildContext, out: Path, attempt: int) -> BuildResult:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = ctx.prepared_onnx()
    excluded = stem_and_last_conv(source) if attempt >= 1 else []
    with quiet():
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         nodes_to_exclude=excluded)
    notes = ["dynamic: int8 per-channel weights (7 bits, exact on every x86), activations quantized at run time"]
    if excluded:
        notes.append(f"kept in float: {', '.join(excluded)}")
    return BuildResult([out.name], notes)


def sort_topologically(graph) -> None:
    """Reorder ``graph.node`` so every input is produced before it is used (ONNX requires it; TensorRT's
    parser and onnx's checker enforce it, ONNX Runtime does not).  The fp16 converter appends the Cast of a
    kept-fp32 graph input after its consumers."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise EdgetlError(f"the converted ONNX graph cannot be ordered: {len(pending)} node(s) read inputs "
                              f"nothing produces (first: {pending[0].name}); the conversion broke the graph")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def build_fp16(ctx: BuildContext, out: Path, attempt: int) -> BuildResult:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx = _onnx()
    model = onnx.load(str(ctx.fp32_onnx))
    blocked = stem_and_last_conv(ctx.fp32_onnx) if attempt >= 1 else None
    with quiet():
        converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked)
    sort_topologically(converted.graph)
    onnx.checker.check_model(converted, full_check=True)
    onnx.save(converted, str(out))
    notes = ["fp16 weights and compute, fp32 graph inputs and outputs"]
    if blocked:
        notes.append(f"kept in fp32: {', '.join(blocked)}")
    return BuildResult([out.name], notes)
