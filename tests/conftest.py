import os

import pytest

import tridecode

REQUIRE_CUDA = os.environ.get("TRIDECODE_REQUIRE_CUDA") == "1"


def require_cuda_or_skip():
    """Skips without a GPU, unless TRIDECODE_REQUIRE_CUDA=1 asks for a failure instead."""
    if tridecode.cuda_available():
        return
    if REQUIRE_CUDA:
        pytest.fail("TRIDECODE_REQUIRE_CUDA=1 but no CUDA device is usable "
                    f"(CUDA backend compiled: {tridecode.cuda_compiled()})")
    pytest.skip("no CUDA device")
