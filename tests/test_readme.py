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


def test_streaming_chat_and_hub_quickstart_runs(tmp_path, capsys, monkeypatch):
    """The second Python block, with "org/name" in a hub cache holding the shipped model (it has a tokenizer
    and a chat template)."""
    import tridecode

    commit = "a" * 40
    snap = tmp_path / "hub" / "models--org--name" / "snapshots" / commit
    shutil.copytree(tridecode.default_model_path(), snap)
    (tmp_path / "hub" / "models--org--name" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--name" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with open(README, encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    code = blocks[1]
    assert "model.stream(" in code and "model.chat(" in code
    exec(compile("import tridecode\n" + code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "# user:\nhi\n# assistant:\n" in out
