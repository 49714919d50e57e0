"""The TensorRT backend against a stand-in of the tensor API TensorRT has kept from 8.5 to 11 (the version string
and engine precision vary; the API the stand-in offers does not) and of the CUDA runtime: no GPU
here, so the stand-in checks what the real ones would refuse (a shape not set before running, an address not
set, a copy past a buffer's end) and computes on its "device" memory, so a wrong size, order or dtype shows as
a wrong result or a failure.

The backend keeps its own ~60 lines over TensorRT instead of Polygraphy's ``TrtRunner``: the runner's ``infer``
imports torch wherever torch is installed (``polygraphy.util.array.is_torch`` imports it to check a type), which
the torch-free device runtime must not do, and Polygraphy says its runners are not meant for deployment."""

from __future__ import annotations

import ctypes
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from edgetl.runtime.engines.backends import tensorrt as backend_module
from edgetl.runtime.engines.backends.tensorrt import TensorRTBackend
from edgetl.runtime.engines.sidecar import EngineMetadata
from edgetl.runtime.errors import BundleError, ConfigError

MAX_SHAPE = [4, 3, 8, 8]


class Device:
    """The CUDA runtime's calls the backend makes, over "device" memory kept as byte arrays."""

    def __init__(self, capability="8.7"):
        self.capability, self.memory, self.freed, self.streams, self.next = capability, {}, [], [], 0x1000

    def compute_capability(self, device=0):
        return self.capability

    def malloc(self, nbytes):
        self.next += 0x100000
        self.memory[self.next] = bytearray(nbytes)
        return self.next

    def free(self, pointer):
        self.memory.pop(pointer)          # a pointer freed twice, or never allocated, fails here
        self.freed.append(pointer)

    def stream(self):
        self.streams.append("open")
        return 7

    def destroy_stream(self, stream):
        self.streams.append("destroyed")

    def synchronize(self, stream):
        assert stream == 7

    def to_device(self, device, host_pointer, nbytes, stream):
        assert nbytes <= len(self.memory[device]), "copy past the end of the input buffer"
        self.memory[device][:nbytes] = ctypes.string_at(host_pointer, nbytes)

    def to_host(self, host_pointer, device, nbytes, stream):
        assert nbytes <= len(self.memory[device]), "copy past the end of the output buffer"
        ctypes.memmove(host_pointer, bytes(self.memory[device][:nbytes]), nbytes)


def stand_in_tensorrt(version: str, device: Device, dtype=np.float32, engine_bytes=b"engine"):
    """TensorRT's Python API as the backend uses it; the engine maps (N, 3, 8, 8) images to their channel means."""
    modes = SimpleNamespace(INPUT="input", OUTPUT="output")

    class Context:
        def __init__(self):
            self.shape, self.addresses = None, {}

        def set_input_shape(self, name, shape):
            assert name == "images" and len(shape) == 4 and 1 <= shape[0] <= MAX_SHAPE[0]
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            assert self.shape is not None, "a shape is read before the input shape is set"
            return self.shape if name == "images" else (self.shape[0], 3)

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def execute_async_v3(self, stream):
            assert stream == 7 and set(self.addresses) == {"images", "features"}
            count = int(np.prod(self.shape))
            images = np.frombuffer(device.memory[self.addresses["images"]], dtype=dtype, count=count)
            means = images.reshape(self.shape).astype(np.float32).mean(axis=(2, 3)).astype(dtype)
            out = device.memory[self.addresses["features"]]
            assert means.nbytes <= len(out), "the output buffer is too small"
            out[:means.nbytes] = means.tobytes()
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, index):
            return ("images", "features")[index]

        def get_tensor_mode(self, name):
            return modes.INPUT if name == "images" else modes.OUTPUT

        def get_tensor_dtype(self, name):
            return dtype

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == engine_bytes else None

    class Logger:
        WARNING = 2

        def __init__(self, level):
            assert level == self.WARNING

    return SimpleNamespace(__version__=version, Logger=Logger, Runtime=Runtime, TensorIOMode=modes,
                           nptype=lambda t: t)


def _engine(tmp_path, built_with: str, capability="8.7", data=b"engine"):
    path = tmp_path / "engines" / "backbone.engine"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    meta = EngineMetadata(tensorrt_version=built_with, compute_capability=capability, gpu_name="Orin",
                          precision="fp16", strongly_typed=False, builder_flags=["FP16"], dla_core=None,
                          input_name="images", output_name="features", min_shape=[1, 3, 8, 8],
                          opt_shape=[4, 3, 8, 8], max_shape=MAX_SHAPE, source_artifact="backbone.onnx",
                          source_sha256="0" * 64, engine_sha256="1" * 64)
    path.with_name(path.name + ".json").write_text(meta.to_json())
    return path


def _install(monkeypatch, trt, device):
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(backend_module, "CudaRuntime", lambda: device)


@pytest.mark.parametrize("version,dtype", [("8.5.2.2", np.float16), ("10.3.0", np.float32), ("11.0.0", np.float16)])
def test_batches_up_to_the_engines_maximum_come_back_right_and_every_buffer_is_freed(monkeypatch, tmp_path, version,
                                                                                       dtype):
    device = Device()
    _install(monkeypatch, stand_in_tensorrt(version, device, dtype), device)
    images = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    expected = images.astype(dtype).astype(np.float32).mean(axis=(2, 3))
    with TensorRTBackend(_engine(tmp_path, version)) as engine:
        assert engine.input_shape == (None, 3, 8, 8)
        for batch in (1, 3, 4):
            got = engine.infer(images[:batch])
            assert got.dtype == np.float32 and got.shape == (batch, 3)
            np.testing.assert_allclose(got, expected[:batch], rtol=2e-3 if dtype == np.float16 else 1e-6, atol=1e-3)
        with pytest.raises(ConfigError, match="batches up to 4, got 5; rebuild with a larger --max-batch"):
            engine.infer(np.zeros((5, 3, 8, 8), np.float32))
        assert engine.describe()["compute_capability"] == "8.7"
    assert device.memory == {} and len(device.freed) == 2 and device.streams == ["open", "destroyed"]


@pytest.mark.parametrize("built_with,capability,message", [
    ("10.3.0", "8.7", "TensorRT 10.3.0 built it, this device has TensorRT 10.4.0"),
    ("10.4.0", "7.2", "built for a GPU of compute capability 7.2 \\(Orin\\), this GPU has 8.7"),
])
def test_an_engine_from_another_release_or_gpu_is_refused_before_it_is_deserialized(monkeypatch, tmp_path, built_with,
                                                                                     capability, message):
    device = Device()
    trt = stand_in_tensorrt("10.4.0", device)
    trt.Runtime = None            # deserializing would fail the test
    _install(monkeypatch, trt, device)
    with pytest.raises(BundleError, match=message + ".*edgetl-rt build-engine .* --precision fp16"):
        TensorRTBackend(_engine(tmp_path, built_with, capability)).open()


def test_an_engine_tensorrt_cannot_deserialize_is_a_bundle_error(monkeypatch, tmp_path):
    device = Device()
    _install(monkeypatch, stand_in_tensorrt("10.3.0", device), device)
    with pytest.raises(BundleError, match="could not deserialize backbone.engine; rebuild it"):
        TensorRTBackend(_engine(tmp_path, "10.3.0", data=b"damaged")).open()
