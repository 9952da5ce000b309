"""Access to the golden data copied from the reference implementation (tests/data/nld-tiny-a)."""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_DIR = os.path.join(HERE, "data", "nld-tiny-a")

with open(os.path.join(GOLDEN_DIR, "expected.json"), encoding="utf-8") as _f:
    EXPECTED = json.load(_f)

PROMPTS = EXPECTED["prompts"]


def cases(mode):
    return [c for c in EXPECTED["cases"] if c["mode"] == mode]


MODES = {"ar_generate": "ar", "generate": "diffusion", "linear_spec_generate": "self_spec"}


def generate_kwargs(case) -> dict:
    """The tridecode generate() arguments of a recorded reference call."""
    a = case["args"]
    kw = dict(mode=MODES[case["mode"]], max_new_tokens=a["max_new_tokens"], eos_token_id=a["eos_token_id"])
    if kw["mode"] == "diffusion":
        kw.update(block_length=a["block_length"], threshold=a["threshold"])
    if kw["mode"] == "self_spec":
        kw.update(block_length=a["block_length"], draft_threshold=a["threshold"])
    return kw
