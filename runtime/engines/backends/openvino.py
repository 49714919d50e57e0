"""OpenVINO backend (CPU by default; ``device`` may name GPU or NPU).

The IR is saved with a dynamic batch; the backend reshapes it to the static
batch it is called with and compiles once per batch size, because a static
shape is markedly faster on CPU (measured while building edgetl, on a 2-core
AVX-512 x86: with default settings the dynamic-batch model ran 45% slower
than a static one, which came within a few percent of ``benchmark_app``).
A text model's sequence length stays dynamic: one compilation per length
would cost more than it saves.
Inputs are shared with OpenVINO without a copy.

Nothing that changes numerics or speed is left to the plugin: OpenVINO's CPU
plugin computes an "fp32" IR in bf16 by itself on CPUs with AVX512_BF16 or
AMX, so the inference precision is always the artifact's own (:func:`compile_config`),
as are the execution mode, streams, threads, pinning and denormal handling.
What the compiled model reports back is kept in ``settings``.  A
``cache_dir`` makes OpenVINO keep compiled models across processes (a
one-shot command then skips most of the compile).
"""

from __future__ import annotations

import numpy as np

from ...deps import require
from ...errors import BundleError
from ...machine import cpu_facts
from .base import Backend

#: Artifact precision -> OpenVINO inference precision.  int8 IRs compute their non-quantized parts in f32.
INFERENCE_PRECISION = {"fp32": "f32", "int8": "f32", "bf16": "bf16", "fp16": "f16"}
#: What OpenVINO's OPTIMIZATION_CAPABILITIES must list for a precision to run natively.
NATIVE_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}


def import_openvino():
    return require("openvino", "openvino", "the OpenVINO backend")


def compile_config(precision: str, threads: int, device: str = "CPU", physical_cores: int | None = None,
                   cache_dir: str | None = None) -> dict:
    """The explicit OpenVINO settings for one artifact precision on ``device`` (a pure function).

    fp16 on a CPU means fp16 weights computed in f32, on every CPU (some Arm and AMX-FP16 CPUs could compute
    in f16, which the export did not measure); on a GPU it is f16.  bf16 is always asked for as bf16, and
    the caller reads back whether it ran natively.
    """
    hint = INFERENCE_PRECISION[precision]
    if precision == "fp16" and device == "CPU":
        hint = "f32"
    config: dict = {"INFERENCE_PRECISION_HINT": hint, "EXECUTION_MODE_HINT": "PERFORMANCE",
                    "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if device == "CPU":
        config.update({"INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": True,
                       "ENABLE_HYPER_THREADING": bool(physical_cores and threads > physical_cores),
                       "SCHEDULING_CORE_TYPE": "ANY_CORE", "CPU_DENORMALS_OPTIMIZATION": False})
    if cache_dir:
        config["CACHE_DIR"] = str(cache_dir)
    return config


def benchmark_app_command(model: str, input_size: int, batch: int, precision: str, threads: int,
                          device: str = "CPU", seconds: int | None = None) -> list[str]:
    """OpenVINO's benchmark_app with the settings this backend uses: one stream, the same threads, the same
    inference precision, synchronous calls on a static shape (``-hint none`` keeps the plugin's latency mode;
    benchmark_app accepts explicit threads only without a hint)."""
    config = compile_config(precision, threads, device, physical_cores=cpu_facts()["physical_cores_usable"])
    command = ["benchmark_app", "-m", model, "-d", device, "-hint", "none", "-nstreams", "1",
               "-infer_precision", config["INFERENCE_PRECISION_HINT"], "-api", "sync",
               "-shape", f"[{batch},3,{input_size},{input_size}]"]
    if device == "CPU":
        command += ["-nthreads", str(threads), "-pin", "YES"]
    if seconds:
        command += ["-t", str(seconds)]
    return command


def _as_str(value) -> str:
    """OpenVINO property values (element types, enums, lists) as plain strings for the record."""
    if hasattr(value, "get_type_name"):
        return value.get_type_name()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return value.name if hasattr(value, "name") and not isinstance(value, str) else str(value)


class OpenVINOBackend(Backend):
    name = "openvino"

    def _open_impl(self) -> None:
        ov = import_openvino()
        self._core = ov.Core()
        # A device the target profile asks for (an iGPU) is used when present; otherwise the CPU.
        wanted = self.requested_device or "CPU"
        self.device = wanted if wanted in self._core.available_devices else "CPU"
        self.device_note = "" if self.device == wanted else f"{wanted} not available here, ran on CPU"
        try:
            self._model = self._core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for bad files
            raise BundleError(f"OpenVINO cannot read {self.path.name}: {exc}") from exc
        model_input = self._model.inputs[0]
        self.input_name = model_input.get_any_name()
        shape = model_input.get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in shape)
        self.input_dtype = np.int64 if model_input.get_element_type() == ov.Type.i64 else np.float32
        self._capabilities = tuple(self._core.get_property(self.device, "OPTIMIZATION_CAPABILITIES"))
        self._config = compile_config(self.precision, self.threads, self.device, cpu_facts()["physical_cores_usable"],
                                      str(self.cache_dir) if self.cache_dir else None)
        self._compiled: dict[int, object] = {}
        self._version = ov.get_version()
        self._ov = ov
        self.settings = {"requested": {k: v for k, v in self._config.items() if k != "CACHE_DIR"},
                         "model_cache": bool(self.cache_dir), "effective_precision": self.precision}

    def _request(self, batch: int):
        if batch not in self._compiled:
            model = self._model.clone()
            dims = [-1 if d is None else d for d in self.input_shape]    # a text model's length stays dynamic
            dims[0] = batch
            model.reshape({self._model.inputs[0].get_any_name(): self._ov.PartialShape(dims)})
            compiled = self._core.compile_model(model, self.device, self._config)
            if not self._compiled:
                self._read_back(compiled)
            self._compiled[batch] = compiled.create_infer_request()
        return self._compiled[batch]

    def _read_back(self, compiled) -> None:
        """Record what the plugin actually uses; flag bf16/fp16 that the hardware does not run natively."""
        effective = {}
        for key in ("INFERENCE_PRECISION_HINT", "EXECUTION_MODE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS",
                    "ENABLE_CPU_PINNING", "EXECUTION_DEVICES"):
            try:
                effective[key] = _as_str(compiled.get_property(key))
            except Exception:  # not every device reports every property
                continue
        ran = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(effective.get("INFERENCE_PRECISION_HINT", ""))
        precision = self.precision
        if self.precision in NATIVE_CAPABILITY:
            native = NATIVE_CAPABILITY[self.precision] in self._capabilities
            self.settings["native"] = native
            if self.precision == "fp16" and ran == "fp32":
                self.settings["precision_note"] = "fp16 weights computed in f32 (this device has no native fp16)"
            elif ran != self.precision:
                precision = ran or "unknown"
                self.settings["precision_note"] = (f"OpenVINO runs this {self.precision} artifact in {ran} on "
                                                   f"{self.device}: the hardware has no {self.precision}")
            elif not native:
                self.settings["precision_note"] = (f"{self.precision} is emulated here (no native "
                                                   f"{self.precision}): the numerics are {self.precision}'s, "
                                                   "the speed is not")
        self.settings.update(effective=effective, effective_precision=precision)

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        # Set the input as a tensor over the caller's memory and read the output tensor directly: half
        # the per-call Python overhead of infer({0: batch}) with its result dict (0.1 ms vs 0.2 ms measured).
        request = self._request(batch.shape[0])
        request.set_input_tensor(self._ov.Tensor(batch, shared_memory=True))
        request.infer()
        return request.get_output_tensor(0).data.copy()

    def _close_impl(self) -> None:
        self._compiled.clear()
        del self._model, self._core, self._ov

    def describe(self) -> dict:
        info = super().describe()
        info.update(version=getattr(self, "_version", None), device=getattr(self, "device", None))
        if getattr(self, "device_note", ""):
            info["device_note"] = self.device_note
        return info
