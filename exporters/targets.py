"""What to build for a device profile: formats and options from its backends and precisions.

A profile says "TensorRT then ONNX Runtime, int8 then fp16 then fp32"; this
module turns that into export formats (``onnx-int8-trt``, ``onnx-fp16``,
``onnx``) and into the ``target`` block of the bundle manifest: the
preference the runtime uses to pick an artifact, the TensorRT build
settings, and the equivalent ``trtexec`` command lines.
"""

from __future__ import annotations

from dataclasses import asdict

from edgetl.devices import DeviceProfile
from edgetl.runtime.tools.engine_plan import engine_filename, source_format, trtexec_command

#: (backend, precision) -> (export format, options it needs).  ONNX Runtime on a CPU gains nothing from
#: fp16 and has no bf16 convolutions, so those pairs build nothing; OpenVINO's fp16 is its fp32 IR with
#: weights compressed to fp16 and its bf16 the fp32 IR compiled in bf16.  CPU int8 has two variants: 7-bit
#: weights for any x86, 8-bit where the profile guarantees int8 dot products (``VNNI_VARIANT``).
FORMAT_FOR: dict[tuple[str, str], tuple[str, dict] | None] = {
    ("onnxruntime", "fp32"): ("onnx", {}),
    ("onnxruntime", "fp16"): None,
    ("onnxruntime", "bf16"): None,
    ("onnxruntime", "int8"): ("onnx-int8", {}),
    ("openvino", "fp32"): ("openvino", {}),
    ("openvino", "fp16"): ("openvino", {"fp16": True}),
    ("openvino", "bf16"): ("openvino-bf16", {}),
    ("openvino", "int8"): ("openvino-int8", {}),
    ("tensorrt", "fp32"): ("onnx", {}),
    ("tensorrt", "fp16"): ("onnx-fp16", {}),
    ("tensorrt", "bf16"): None,
    ("tensorrt", "int8"): ("onnx-int8-trt", {}),
}
VNNI_VARIANT = {"onnx-int8": "onnx-int8-vnni", "openvino-int8": "openvino-int8-vnni"}


def target_choices(profile: DeviceProfile) -> list[tuple[str, str, str, dict]]:
    """(format, backend, precision, options) the profile asks for, in its order of preference (its runtime picks
    in this order).  The profile's precisions go to its preferred (first) backend; the other backends are
    fallbacks and get fp32 only; a VNNI profile gets the 8-bit int8 variant, an AVX2 one the 7-bit."""
    choices = []
    primary = profile.deploy.backends[0]
    for backend in profile.deploy.backends:
        for precision in profile.deploy.precisions if backend == primary else ("fp32",):
            choice = FORMAT_FOR[(backend, precision)]
            if choice is None:
                continue
            name, extra = choice
            if profile.hardware.int8_dot:
                name = VNNI_VARIANT.get(name, name)
            choices.append((name, backend, precision, extra))
    return choices


def formats_for_target(profile: DeviceProfile) -> tuple[str, dict]:
    """The ``--format`` list and options that build everything ``profile`` asks for.

    A Jetson bundle thus holds the fp16 and Q/DQ int8 sources of its engines plus fp32 ONNX for ONNX Runtime
    (in every bundle anyway), not a CPU int8 model it would never prefer.
    """
    names = ["onnx"]
    options: dict = {}
    for name, _, _, extra in target_choices(profile):
        if name not in names:
            names.append(name)
        options.update(extra)
    return ",".join(names), options


def target_block(profile: DeviceProfile, input_size: int) -> dict:
    """The manifest's ``target``: the profile, and how to build its TensorRT engine if it has one."""
    block = {"name": profile.name, "description": profile.description,
             "backends": list(profile.deploy.backends), "precisions": list(profile.deploy.precisions),
             "profile": asdict(profile)}
    if "tensorrt" in profile.deploy.backends:
        precision = profile.deploy.engine_precision or "fp16"
        major = profile.software.tensorrt_major
        dla = 0 if profile.hardware.dla_cores else None
        block["tensorrt"] = {
            "version": profile.software.tensorrt,
            "precision": precision,
            "max_batch": profile.deploy.max_batch,
            "dla_cores": profile.hardware.dla_cores,
            "source_format": source_format(precision),
            "trtexec": {
                p: trtexec_command(p, input_size, profile.deploy.max_batch, major, dla_core=None)
                for p in ("fp16", "int8")
            },
        }
        if dla is not None:
            block["tensorrt"]["trtexec_dla"] = trtexec_command(precision, input_size, profile.deploy.max_batch,
                                                               major, dla_core=dla)
        block["tensorrt"]["engine_file"] = engine_filename(precision, None)
    return block
