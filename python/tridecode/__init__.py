"""tridecode: a lean native inference runtime for tri-mode (AR / block diffusion / self-speculation)
language models."""

from __future__ import annotations

import os as _os

# OpenMP threads wait briefly when a parallel region ends, then sleep. Spinning without end (libgomp's
# default is about 300000 spins, milliseconds) takes the core from whatever else runs there, and a generate on
# busy cores then runs several times slower; sleeping at once (OMP_WAIT_POLICY=PASSIVE alone) makes every
# region of a forward wake its threads again, which costs tens to hundreds of microseconds each, a third
# of a decode step at 2 threads. 10000 spins (about half a millisecond) bridge the short gaps inside a
# forward and end soon after it. libgomp reads these when the native module loads it, just below; a wait
# policy or spin count the user set wins.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "10000"
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import _C, ops
from .config import ModelConfig, load_config, parse_config
from .errors import CheckpointError, NativeError
from .loader import load, random_model
from .model import Model, TokenStream
from .result import GenerateResult, StreamChunk
from .sampling import SamplingParams

__version__ = "0.1.0"


def default_model_path() -> str:
    """The small tri-mode model shipped with the package (trained by `python -m tridecode.train`, see the
    README), used when no checkpoint is given."""
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "td-tiny-code")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise ValueError(f"the default model is missing from this installation ({path}); pass a checkpoint")
    return path


def cuda_compiled() -> bool:
    """True when this build contains the CUDA backend."""
    return bool(_C.cuda_compiled())


def cuda_emulated() -> bool:
    """True in a TRIDECODE_CUDA=EMU build: the CUDA backend's kernels run on the CPU emulator (for kernel
    correctness without a GPU; nothing about speed carries over)."""
    return bool(_C.cuda_emulated())


def cuda_available() -> bool:
    """True when the CUDA backend is built and a device answers. Any error from the driver means False."""
    try:
        return bool(_C.cuda_compiled()) and _C.cuda_device_count() > 0
    except Exception:
        return False


def set_num_threads(n: int) -> None:
    """Threads used by the CPU backend (default: OpenMP's, usually the number of cores)."""
    from ._check import integer
    _C.set_num_threads(integer("set_num_threads: n", n, 1, 4096))


def num_threads() -> int:
    return int(_C.num_threads())


__all__ = ["default_model_path", "load", "random_model", "Model", "ModelConfig", "GenerateResult", "StreamChunk",
           "TokenStream", "SamplingParams", "CheckpointError", "NativeError",
           "cuda_available", "cuda_compiled", "cuda_emulated", "set_num_threads", "num_threads", "load_config", "parse_config",
           "ops", "__version__"]
