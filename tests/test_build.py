"""Build facts: the CUDA backend is compiled when nvcc is present (AUTO), the module imports without a
driver, and the CUDA runtime is linked statically."""

import os
import shutil
import subprocess

import tridecode
from tridecode import _C


def test_cuda_compiled_when_nvcc_is_present():
    mode = os.environ.get("TRIDECODE_CUDA", "AUTO").upper()
    if shutil.which("nvcc") and mode != "OFF":
        assert tridecode.cuda_compiled()
    if mode == "OFF":
        assert not tridecode.cuda_compiled()


def test_device_query_never_raises():
    count = _C.cuda_device_count()
    assert count >= 0
    assert tridecode.cuda_available() == (tridecode.cuda_compiled() and count > 0)


def test_cudart_is_not_a_dynamic_dependency():
    if shutil.which("ldd") is None:
        return
    out = subprocess.run(["ldd", _C.__file__], capture_output=True, text=True).stdout
    assert "libcudart" not in out
    assert "libcuda.so" not in out


def test_cpu_kernels_were_selected():
    assert _C.cpu_isa() in ("generic", "avx2", "avx512")
    assert tridecode.num_threads() >= 1
