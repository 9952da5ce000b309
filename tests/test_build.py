"""Build facts: the CUDA backend is compiled when nvcc is present (AUTO), the module imports without a
driver, and the CUDA runtime is linked statically."""

import os
import shutil
import subprocess

import numpy as np

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
    assert _C.cpu_isa() in ("generic", "avx2", "avx512", "avx512_vnni", "avx512_bf16")
    assert _C.cpu_paths()["kernels"] == _C.cpu_isa() == _C.cpu_kernel_sets()[-1]
    assert tridecode.num_threads() >= 1


def test_cuda_requests_without_a_gpu_are_clear_errors():
    if tridecode.cuda_available():
        return
    import pytest
    from golden import GOLDEN_DIR

    with pytest.raises(ValueError, match="CUDA|cuda"):
        tridecode.load(GOLDEN_DIR, device="cuda")
    with pytest.raises(ValueError, match="CUDA|cuda"):
        tridecode.ops.matmul(np.ones((2, 4), np.float32), np.ones((3, 4), np.float32), device="cuda")
    with pytest.raises(ValueError, match="CUDA|cuda"):
        tridecode._C.DeviceBuffer(16)
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "tridecode", "generate", GOLDEN_DIR, "--ids", "1,2", "--device", "cuda"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "CUDA" in out.stderr and "Traceback" not in out.stderr


def test_random_model_on_cpu():
    import json
    from golden import GOLDEN_DIR

    cfg = json.load(open(f"{GOLDEN_DIR}/config.json"))
    m = tridecode.random_model(cfg, device="cpu", dtype="bfloat16", max_context=64, seed=3)
    a = m.generate([1, 2, 3], max_new_tokens=6).tokens
    assert len(a) == 6
    assert m.generate([1, 2, 3], max_new_tokens=6).tokens == a
    logits = m.forward([1, 2, 3], write_cache=False)
    assert np.isfinite(logits).all() and logits.std() > 0.1
