"""The generate loops, one per decoding mode."""

from .ar import ar_generate
from .diffusion import diffusion_generate
from .self_spec import self_spec_generate

__all__ = ["ar_generate", "diffusion_generate", "self_spec_generate"]
