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
