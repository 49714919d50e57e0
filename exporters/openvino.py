"""OpenVINO IR artifacts: fp32 (or fp16-compressed weights), bf16 and NNCF int8.

The IR is converted from the checked fp32 ONNX export, so all formats share
one source graph.  bf16 is not a different file but a different compile
setting of the fp32 IR (the runtime states the inference precision of every
artifact), so ``openvino-bf16`` shares the ``openvino`` IR when both are
built.  ``openvino-int8`` uses NNCF post-training quantization on the same
calibration sample as the ONNX int8 formats; its last fallback is NNCF's
accuracy-control quantization, which keeps the layers that cost the most
accuracy in float until the drop is within the limit.  ``openvino-int8-vnni``
is the same with 8-bit weights, for CPUs with int8 dot products.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.runtime.data.text import TextPreprocess
from edgetl.runtime.deps import require
from edgetl.runtime.metrics import top1_accuracy

from .calibration import calibration_items
from .context import BuildContext, BuildResult
from .onnx_variants import stem_and_last_conv
from .quiet import quiet

OPENVINO_INT8_ATTEMPTS = 4


def _openvino():
    return require("openvino", "openvino", "OpenVINO export")


def _nncf():
    return require("nncf", "quantize", "OpenVINO int8 quantization")


def _bin_name(out: Path) -> str:
    return out.with_suffix(".bin").name


def build_openvino(ctx: BuildContext, out: Path, attempt: int) -> BuildResult:
    ov = _openvino()
    compress = bool(ctx.options.get("fp16"))
    model = ov.convert_model(str(ctx.fp32_onnx))
    ov.save_model(model, str(out), compress_to_fp16=compress)
    notes = ["IR converted from the checked fp32 ONNX, dynamic batch"]
    notes.append("weights compressed to fp16 (compute precision chosen by the device)" if compress else "fp32 weights")
    return BuildResult([out.name, _bin_name(out)], notes)


def build_openvino_bf16(ctx: BuildContext, out: Path, attempt: int) -> BuildResult:
    fp32 = ctx.staging / "backbone-openvino.xml"
    if fp32.is_file() and not ctx.options.get("fp16"):
        return BuildResult([fp32.name, _bin_name(fp32)], ["the fp32 IR of 'openvino', compiled with bf16 inference "
                                                          "precision (no second copy)"])
    ov = _openvino()
    ov.save_model(ov.convert_model(str(ctx.fp32_onnx)), str(out), compress_to_fp16=False)
    return BuildResult([out.name, _bin_name(out)], ["IR converted from the checked fp32 ONNX, fp32 weights, "
                                                    "compiled with bf16 inference precision"])


def build_openvino_int8(ctx: BuildContext, out: Path, attempt: int) -> BuildResult:
    return _nncf_openvino_int8(ctx, out, attempt, seven_bit=True)


def build_openvino_int8_vnni(ctx: BuildContext, out: Path, attempt: int) -> BuildResult:
    return _nncf_openvino_int8(ctx, out, attempt, seven_bit=False)


def _nncf_openvino_int8(ctx: BuildContext, out: Path, attempt: int, seven_bit: bool) -> BuildResult:
    """NNCF int8.  Attempts: fast bias correction; full bias correction (measured on digits:
    drop 1.48 -> 0.37 points); that with the stem and last conv in float and twice the
    calibration images; accuracy-aware quantization against labelled training images.
    ``seven_bit``: NNCF's overflow fix on every layer, so CPUs without VNNI do not saturate
    (costs up to 0.7 points on digits against 8-bit weights)."""
    ov, nncf = _openvino(), _nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    model = ov.convert_model(str(ctx.fp32_onnx))
    text = isinstance(ctx.data.preprocess, TextPreprocess)
    size = ctx.data.calibration_size * (2 if attempt >= 2 else 1)
    calibration = ctx.data.calibration(size)
    calibration_set = nncf.Dataset(calibration_items(calibration, ctx.data.preprocess))
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE if seven_bit else OverflowFix.DISABLE)
    full_bias_correction = attempt >= 1
    notes = ["NNCF int8 with overflow fix (7-bit weights)" if seven_bit else "NNCF int8, 8-bit weights (VNNI/AMX)",
             f"calibration on {len(calibration)} training {'texts' if text else 'images'}"]
    if full_bias_correction:
        notes.append("full bias correction")
    if text:
        notes.append("NNCF's transformer scheme (SmoothQuant; softmax and normalizations kept in float)")
    with quiet():
        if attempt < 3:
            excluded = [f"{name}/WithoutBiases" for name in stem_and_last_conv(ctx.fp32_onnx)] if attempt == 2 else []
            quantized = nncf.quantize(
                model, calibration_set, subset_size=len(calibration), advanced_parameters=advanced,
                model_type=nncf.ModelType.TRANSFORMER if text else None,
                fast_bias_correction=not full_bias_correction,
                ignored_scope=nncf.IgnoredScope(names=excluded, validate=False) if excluded else None,
            )
            if excluded:
                notes.append("kept in float: stem and last convolution")
        else:
            images, labels = ctx.data.train_check(size)  # not the val split the gate reports on

            def validate(compiled, items) -> float:
                logits = np.concatenate([ctx.head.logits(compiled(image)[0]) for image, _ in items])
                return top1_accuracy(logits, np.array([label for _, label in items]))

            validation_set = nncf.Dataset(list(zip(calibration_items(images, ctx.data.preprocess), labels)))
            # the training sample is easier than unseen data, so ask for a quarter of the allowed drop
            quantized = nncf.quantize_with_accuracy_control(
                model, calibration_set, validation_set, validate, subset_size=len(calibration),
                max_drop=ctx.max_accuracy_drop / 400.0, advanced_quantization_parameters=advanced,
                fast_bias_correction=False, model_type=nncf.ModelType.TRANSFORMER if text else None,
            )
            notes.append(f"accuracy-control: layers reverted to float until the drop on {len(labels)} "
                         "labelled training samples is within a quarter of the limit")
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return BuildResult([out.name, _bin_name(out)], notes)
