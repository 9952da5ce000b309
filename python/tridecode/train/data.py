"""Training text and tokenizer.

The default corpus is the Python standard library source of the running interpreter (no download; PSF
licence), chosen deterministically: every `*.py` under the stdlib directory except tests, sorted by
relative path. Its manifest (relative path + sha256 per file, and one digest of the whole list) pins it;
`--corpus-sha256` makes a run fail unless the corpus is exactly the expected one. Files are split between
train and held-out by a hash of their path, so held-out prompts never come from training text.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass

SPECIALS = ["<pad>", "<s>", "</s>", "<mask>"]   # ids 0..3
PAD_ID, BOS_ID, EOS_ID, MASK_ID = 0, 1, 2, 3


@dataclass
class Corpus:
    files: list           # (relative path, text)
    digest: str           # sha256 over "path\0sha256(text)\n" lines

    def split(self, heldout_fraction: float = 0.05):
        """(train texts, held-out texts), by a stable hash of each path."""
        train, held = [], []
        for rel, text in self.files:
            h = int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            (held if h < heldout_fraction else train).append(text)
        return train, held


def stdlib_corpus(max_files: int | None = None) -> Corpus:
    root = sysconfig.get_paths()["stdlib"]
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        parts = rel_dir.split(os.sep)
        if any(p in ("test", "tests", "idle_test", "site-packages", "__pycache__") or p.startswith("lib2to3")
               for p in parts):
            dirnames[:] = []
            continue
        dirnames.sort()
        rels += [os.path.normpath(os.path.join(rel_dir, f)) for f in sorted(filenames) if f.endswith(".py")]
    rels.sort()
    if max_files is not None:
        rels = rels[:max_files]
    return files_corpus([(r, os.path.join(root, r)) for r in rels])


def files_corpus(pairs) -> Corpus:
    """pairs: (name, path). Undecodable bytes are replaced, so the text of a file is deterministic."""
    files, lines = [], []
    for rel, path in pairs:
        with open(path, "rb") as f:
            raw = f.read()
        files.append((rel, raw.decode("utf-8", errors="replace")))
        lines.append(f"{rel}\0{hashlib.sha256(raw).hexdigest()}\n")
    return Corpus(files, hashlib.sha256("".join(lines).encode()).hexdigest())


def train_tokenizer(texts, vocab_size: int):
    """Byte-level BPE with the special tokens at ids 0..3 (<mask> = 3, a reserved slot the model never
    sees in plain text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, f"special token {s} did not get id {i}"
    return tok


def encode_stream(tok, texts) -> list:
    """All texts as one token stream, each document opened with <s> and closed with </s>."""
    out = []
    for enc in tok.encode_batch(texts):
        out += enc.ids + [EOS_ID]
    return out


def load_corpus(name: str, max_files: int | None = None) -> Corpus:
    """'stdlib' or a directory / file of text (files sorted by path)."""
    if name == "stdlib":
        return stdlib_corpus(max_files)
    if os.path.isdir(name):
        paths = [os.path.join(dp, f) for dp, _, fs in sorted(os.walk(name)) for f in sorted(fs)]
        pairs = [(os.path.relpath(p, name), p) for p in paths]
    else:
        pairs = [(os.path.basename(name), name)]
    return files_corpus(pairs[:max_files])


def distinct_ratio(tokens) -> float:
    """Distinct tokens / tokens: how much a continuation repeats itself (1.0: no token twice)."""
    return len(set(tokens)) / max(1, len(tokens))

