"""The few CUDA runtime calls the TensorRT backend needs, through ctypes (as Polygraphy does).

No torch, no cuda-python: ``libcudart`` ships with every TensorRT install
(JetPack included).  Device memory, one stream, copies, and the compute
capability that engines are tied to.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

from ..errors import CudaError

_LIBRARY_NAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "cudart64_12.dll")
_ATTR_CC_MAJOR = 75      # cudaDevAttrComputeCapabilityMajor
_ATTR_CC_MINOR = 76      # cudaDevAttrComputeCapabilityMinor
_HOST_TO_DEVICE = 1
_DEVICE_TO_HOST = 2


def _load():
    found = ctypes.util.find_library("cudart")
    for name in ((found,) if found else ()) + _LIBRARY_NAMES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


class CudaRuntime:
    """A loaded ``libcudart``; every call's status is checked and named on failure."""

    def __init__(self):
        self._lib = _load()
        if self._lib is None:
            raise CudaError("the CUDA runtime library (libcudart) was not found; install the CUDA runtime "
                            "(JetPack includes it) or add its folder to LD_LIBRARY_PATH")

    def _call(self, name: str, *args) -> None:
        status = getattr(self._lib, name)(*args)
        if status != 0:
            describe = self._lib.cudaGetErrorString
            describe.restype = ctypes.c_char_p
            raise CudaError(f"CUDA {name} failed: {describe(status).decode()} (status {status})")

    def device_count(self) -> int:
        count = ctypes.c_int(0)
        self._call("cudaGetDeviceCount", ctypes.byref(count))
        return count.value

    def compute_capability(self, device: int = 0) -> str:
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        self._call("cudaDeviceGetAttribute", ctypes.byref(major), _ATTR_CC_MAJOR, device)
        self._call("cudaDeviceGetAttribute", ctypes.byref(minor), _ATTR_CC_MINOR, device)
        return f"{major.value}.{minor.value}"

    def versions(self) -> dict:
        driver, runtime = ctypes.c_int(0), ctypes.c_int(0)
        self._call("cudaDriverGetVersion", ctypes.byref(driver))
        self._call("cudaRuntimeGetVersion", ctypes.byref(runtime))
        as_text = lambda v: f"{v // 1000}.{(v % 1000) // 10}"  # noqa: E731
        return {"driver": as_text(driver.value), "runtime": as_text(runtime.value)}

    def malloc(self, nbytes: int) -> int:
        pointer = ctypes.c_void_p()
        self._call("cudaMalloc", ctypes.byref(pointer), ctypes.c_size_t(nbytes))
        return pointer.value

    def free(self, pointer: int) -> None:
        self._call("cudaFree", ctypes.c_void_p(pointer))

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self._call("cudaStreamCreate", ctypes.byref(handle))
        return handle.value or 0

    def destroy_stream(self, stream: int) -> None:
        self._call("cudaStreamDestroy", ctypes.c_void_p(stream))

    def synchronize(self, stream: int) -> None:
        self._call("cudaStreamSynchronize", ctypes.c_void_p(stream))

    def to_device(self, device: int, host_pointer: int, nbytes: int, stream: int) -> None:
        self._call("cudaMemcpyAsync", ctypes.c_void_p(device), ctypes.c_void_p(host_pointer),
                   ctypes.c_size_t(nbytes), _HOST_TO_DEVICE, ctypes.c_void_p(stream))

    def to_host(self, host_pointer: int, device: int, nbytes: int, stream: int) -> None:
        self._call("cudaMemcpyAsync", ctypes.c_void_p(host_pointer), ctypes.c_void_p(device),
                   ctypes.c_size_t(nbytes), _DEVICE_TO_HOST, ctypes.c_void_p(stream))


@dataclass
class CudaInfo:
    available: bool
    reason: str = ""
    devices: list[dict] | None = None
    versions: dict | None = None


def cuda_info() -> CudaInfo:
    """What CUDA offers here, never raising: for ``doctor``."""
    try:
        runtime = CudaRuntime()
        count = runtime.device_count()
        devices = [{"index": i, "compute_capability": runtime.compute_capability(i)} for i in range(count)]
        return CudaInfo(bool(count), "" if count else "no CUDA device", devices, runtime.versions())
    except (CudaError, AttributeError) as exc:
        return CudaInfo(False, str(exc))
