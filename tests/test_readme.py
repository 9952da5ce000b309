"""The README's Python quickstart runs as written (on the golden model plus a byte-level tokenizer)."""

import os
import re
import shutil

from checkpoints import write_byte_tokenizer
from golden import GOLDEN_DIR

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_python_quickstart_runs(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(GOLDEN_DIR, ckpt)
    write_byte_tokenizer(ckpt / "tokenizer.json")

    with open(README, encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert blocks, "README has no python block"
    code = blocks[0].replace("path/to/checkpoint", str(ckpt))
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()
