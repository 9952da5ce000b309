"""The README's Python quickstart runs as written (on the golden model plus a byte-level tokenizer)."""

import os
import re
import shutil

from golden import GOLDEN_DIR

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_python_quickstart_runs(tmp_path, capsys):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    ckpt = tmp_path / "ckpt"
    shutil.copytree(GOLDEN_DIR, ckpt)
    vocab = {bytes([i]).decode("latin-1"): i for i in range(256)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=bytes([0]).decode("latin-1")))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.save(str(ckpt / "tokenizer.json"))

    with open(README, encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert blocks, "README has no python block"
    code = blocks[0].replace("path/to/checkpoint", str(ckpt))
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()
