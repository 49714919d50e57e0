"""TensorRT backend: a serialized engine built on this device by ``edgetl-rt build-engine``.

Before deserializing, the sidecar JSON is checked against the TensorRT
release and the GPU here; an engine built elsewhere is refused with the
command that rebuilds it.  I/O uses the TensorRT 10/11 tensor API
(``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``, in
TensorRT since 8.5) on one CUDA stream, with device buffers sized for the
engine's maximum batch.

Engines are *built* through Polygraphy (:mod:`edgetl.runtime.tools.engine_build`) but run
by these few calls, not Polygraphy's ``TrtRunner``: its ``infer`` imports
torch wherever torch is installed (to check whether an input is a torch
tensor, polygraphy 0.53), which the torch-free device runtime must not do,
and Polygraphy says its runners are not meant for deployment.  Checked
against a stand-in of that tensor API and of the CUDA runtime
(tests/runtime/test_tensorrt_backend.py); never run on a GPU here.
"""

from __future__ import annotations

import numpy as np

from ...deps import require
from ...errors import BundleError, ConfigError
from ..cuda import CudaRuntime
from ..sidecar import check_engine_compatible, read_sidecar
from .base import Backend


class TensorRTBackend(Backend):
    name = "tensorrt"

    def _open_impl(self) -> None:
        trt = require("tensorrt", "tensorrt", "the TensorRT backend")
        meta = read_sidecar(self.path)
        self._cuda = CudaRuntime()
        check_engine_compatible(meta, trt.__version__, self._cuda.compute_capability(0),
                                bundle=str(self.path.parent.parent))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise BundleError(f"TensorRT could not deserialize {self.path.name}; rebuild it with "
                              "edgetl-rt build-engine")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(f"{self.path.name} has inputs {inputs} and outputs {outputs}; expected one of each")
        self.input_name, self._output_name = inputs[0], outputs[0]
        self._max_shape = tuple(meta.max_shape)
        self.input_shape = (None,) + self._max_shape[1:]
        self._input_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self.input_name)))
        self._output_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._output_name)))
        self._stream = self._cuda.stream()
        self._context.set_input_shape(self.input_name, self._max_shape)
        self._max_output = tuple(self._context.get_tensor_shape(self._output_name))
        self._device_in = self._cuda.malloc(int(np.prod(self._max_shape)) * self._input_dtype.itemsize)
        self._device_out = self._cuda.malloc(int(np.prod(self._max_output)) * self._output_dtype.itemsize)
        self._version = trt.__version__
        self._meta = meta

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] > self._max_shape[0]:
            raise ConfigError(f"{self.path.name} was built for batches up to {self._max_shape[0]}, got "
                              f"{batch.shape[0]}; rebuild with a larger --max-batch")
        host_in = np.ascontiguousarray(batch, dtype=self._input_dtype)
        self._context.set_input_shape(self.input_name, host_in.shape)
        out_shape = tuple(self._context.get_tensor_shape(self._output_name))
        host_out = np.empty(out_shape, dtype=self._output_dtype)
        self._cuda.to_device(self._device_in, host_in.ctypes.data, host_in.nbytes, self._stream)
        self._context.set_tensor_address(self.input_name, self._device_in)
        self._context.set_tensor_address(self._output_name, self._device_out)
        if not self._context.execute_async_v3(self._stream):
            raise BundleError(f"TensorRT failed to run {self.path.name}")
        self._cuda.to_host(host_out.ctypes.data, self._device_out, host_out.nbytes, self._stream)
        self._cuda.synchronize(self._stream)
        return host_out.astype(np.float32, copy=False)

    def _close_impl(self) -> None:
        self._cuda.free(self._device_in)
        self._cuda.free(self._device_out)
        self._cuda.destroy_stream(self._stream)
        del self._context, self._engine, self._runtime

    def describe(self) -> dict:
        info = super().describe()
        meta = getattr(self, "_meta", None)
        info.update(version=getattr(self, "_version", None),
                    compute_capability=meta.compute_capability if meta else None,
                    dla_core=meta.dla_core if meta else None)
        return info
