"""Device arrays for the CUDA ops: cupy arrays and anything exposing __cuda_array_interface__ or a CUDA
DLPack capsule are used in place (no host copy); numpy arrays are staged through device buffers. cupy is
imported only when a device result must be allocated."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _C

_DLPACK_CUDA = (2, 13)   # kDLCUDA, kDLCUDAManaged


def cupy():
    try:
        import cupy as cp
    except ImportError as e:
        raise ImportError("device arrays need cupy: pip install 'tridecode[cuda]'") from e
    return cp


def is_device_array(a) -> bool:
    if hasattr(a, "__cuda_array_interface__"):
        return True
    dev = getattr(a, "__dlpack_device__", None)
    return dev is not None and not isinstance(a, np.ndarray) and dev()[0] in _DLPACK_CUDA


@dataclass
class Arg:
    """An array's metadata plus a device pointer once placed on the GPU."""
    shape: tuple
    dtype: np.dtype
    host: np.ndarray | None = None
    obj: object = None          # the device array (kept alive)
    ptr: int = 0

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def describe(a, name: str = "array") -> Arg:
    """Shape and dtype of a numpy or device array (device arrays are not copied)."""
    if is_device_array(a):
        if _C.cuda_emulated():
            raise ValueError("device arrays (cupy, __cuda_array_interface__, CUDA DLPack) need a real GPU; this "
                             "build emulates CUDA on the CPU (TRIDECODE_CUDA=EMU): pass numpy arrays")
        if not hasattr(a, "__cuda_array_interface__"):
            a = cupy().from_dlpack(a)
        iface = a.__cuda_array_interface__
        shape = tuple(int(d) for d in iface["shape"])
        dtype = np.dtype(iface["typestr"])
        strides = iface.get("strides")
        if strides is not None:
            want, acc = [], dtype.itemsize
            for d in reversed(shape):
                want.insert(0, acc)
                acc *= d
            if tuple(strides) != tuple(want) and int(np.prod(shape)) > 1:
                raise ValueError("device arrays must be C-contiguous")
        return Arg(shape, dtype, obj=a, ptr=int(iface["data"][0]))
    from ._check import array
    arr = a if isinstance(a, np.ndarray) else array(name, a)
    return Arg(arr.shape, arr.dtype, host=arr)


class Call:
    """Places the inputs of one CUDA op on the device and collects its outputs: device results when any
    input was a device array, numpy results (downloaded) otherwise."""

    def __init__(self, *args: Arg):
        self.device_io = any(a.host is None for a in args)
        self._staged = []
        self._outs = []

    def place(self, a: Arg, dtype=None) -> int:
        if a.host is None:
            if dtype is not None and a.dtype != np.dtype(dtype):
                raise ValueError(f"device array of dtype {a.dtype} where {np.dtype(dtype)} is needed")
            return a.ptr
        host = np.ascontiguousarray(a.host, dtype=dtype or a.host.dtype)
        buf = _C.DeviceBuffer(max(host.nbytes, 1))
        buf.upload(host)
        self._staged.append(buf)
        return buf.ptr

    def out(self, shape, dtype) -> int:
        dtype = np.dtype(dtype)
        if self.device_io:
            arr = cupy().empty(shape, dtype=dtype)
            self._outs.append(arr)
            return int(arr.data.ptr)
        host = np.empty(shape, dtype=dtype)
        buf = _C.DeviceBuffer(max(host.nbytes, 1))
        self._outs.append((host, buf))
        return buf.ptr

    def out_copy(self, a: Arg) -> int:
        """An output initialised with a's contents (for kernels that work in place)."""
        if self.device_io:
            arr = cupy().array(a.obj if a.host is None else a.host, dtype=np.float32, copy=True)
            self._outs.append(arr)
            return int(arr.data.ptr)
        host = np.array(a.host, dtype=np.float32, copy=True)
        buf = _C.DeviceBuffer(max(host.nbytes, 1))
        buf.upload(host)
        self._outs.append((host, buf))
        return buf.ptr

    def results(self):
        res = []
        for o in self._outs:
            if isinstance(o, tuple):
                host, buf = o
                buf.download(host)
                res.append(host)
            else:
                res.append(o)
        return res[0] if len(res) == 1 else tuple(res)
