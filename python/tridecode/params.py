"""The generate parameters' defaults and spellings, shared by the Python API, the CLI and the server."""

from __future__ import annotations

MODES = ("ar", "diffusion", "self_spec")

#: Defaults of Model.generate / chat / stream, `tridecode generate` and the server's request fields.
#: threshold 0.9 is diffusion's; block_length None means the checkpoint's block_size (else 32).
DEFAULTS = {
    "mode": "ar",
    "max_new_tokens": 128,
    "temperature": 0.0,
    "top_k": None,
    "top_p": None,
    "seed": None,
    "stop": None,
    "block_length": None,
    "threshold": 0.9,
    "steps": None,
    "draft_threshold": 0.0,
    "logprobs": False,
}

#: One line per parameter, for `--help` and the README's table.
DESCRIPTIONS = {
    "mode": "ar (one token per forward), diffusion (block diffusion) or self_spec (diffusion drafts verified "
            "autoregressively; equals ar at temperature 0); self-spec is accepted too",
    "max_new_tokens": "at most this many new tokens, in every mode",
    "temperature": "0 is greedy; > 0 samples (ar: softmax with top_k / top_p; diffusion, self_spec: Gumbel-max)",
    "top_k": "ar only: sample among the k most likely tokens",
    "top_p": "ar only: sample from the smallest set with probability mass >= p",
    "seed": "random seed: the same seed gives the same output (default: a fresh one per call)",
    "stop": "strings that end the output; the text ends before the first match",
    "block_length": "diffusion / self_spec block length (default: the checkpoint's block_size, else 32)",
    "threshold": "diffusion: commit every masked slot with confidence >= this per step (None: a fixed "
                 "schedule of `steps` steps)",
    "steps": "diffusion with threshold None: denoising steps per block (default: block length - 1)",
    "draft_threshold": "self_spec: 0 drafts a block in one forward; > 0 iterates, committing drafts with "
                       "confidence >= this",
    "logprobs": "return the log-probability of each emitted token (from the forward that chose it)",
}


def normalize_mode(mode) -> str:
    """The canonical mode name: 'ar', 'diffusion' or 'self_spec' ('self-spec' is the same); anything else
    raises ValueError."""
    if isinstance(mode, str):
        canon = "self_spec" if mode == "self-spec" else mode
        if canon in MODES:
            return canon
    raise ValueError(f"unknown mode {mode!r} (available: ar, diffusion, self_spec; self-spec is accepted too)")
