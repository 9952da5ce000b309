"""Chat templates: the checkpoint's Jinja template turns a list of messages into the prompt text, rendered
the way Hugging Face transformers renders it (a sandboxed Jinja2 environment with trim_blocks and
lstrip_blocks, `raise_exception`, a `tojson` that keeps non-ASCII text, `strftime_now`)."""

from __future__ import annotations

import json
import os
from datetime import datetime

from . import _files
from .errors import ArgumentTypeError, CheckpointError


class ChatTemplateError(ValueError):
    """The checkpoint has no chat template, or its template refused the conversation."""


def find_template(directory: str) -> str:
    """chat_template.jinja beside the tokenizer, else the `chat_template` entry of tokenizer_config.json
    (a string, or a list of named templates of which "default" is used)."""
    jinja = os.path.join(directory, "chat_template.jinja")
    if _files.exists(jinja):
        return _files.read_bytes(jinja, _files.MAX_CONFIG_BYTES, "chat_template.jinja").decode("utf-8")
    cfg = _tokenizer_config(directory)
    t = cfg.get("chat_template")
    if isinstance(t, list):
        named = {e.get("name"): e.get("template") for e in t if isinstance(e, dict)}
        t = named.get("default")
    if isinstance(t, str) and t:
        return t
    raise ChatTemplateError(f"{directory}: the checkpoint has no chat template (neither chat_template.jinja nor a "
                            "chat_template in tokenizer_config.json); use generate() with a prompt you format")


def _tokenizer_config(directory: str) -> dict:
    path = os.path.join(directory, "tokenizer_config.json")
    if not _files.exists(path):
        return {}
    cfg = _files.load_json(path, what="tokenizer_config.json")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return cfg


def special_tokens(directory: str, tokenizer) -> dict:
    """The template variables for special tokens (bos_token, eos_token, ...): tokenizer_config.json's, else the
    tokens config.json's ids name in tokenizer.json."""
    out = {}
    for key, value in _tokenizer_config(directory).items():
        if key.endswith("_token"):
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                out[key] = value
    cfg = _files.load_json(os.path.join(directory, "config.json"), what="config.json")
    for key in ("bos_token", "eos_token", "pad_token"):
        tid = cfg.get(f"{key}_id")
        if isinstance(tid, list) and tid:
            tid = tid[0]
        if key not in out and isinstance(tid, int) and not isinstance(tid, bool):
            name = tokenizer.id_to_token(tid)
            if name is not None:
                out[key] = name
    return out


def check_messages(messages) -> list:
    """messages: a list of {"role": str, "content": str or a list of {"type": "text", "text": str} parts,
    joined by newlines}; other keys (e.g. "name") pass through to the template."""
    if not isinstance(messages, (list, tuple)):
        raise ArgumentTypeError(f"chat: messages must be a list of {{'role', 'content'}} dicts, got "
                                f"{type(messages).__name__}")
    if not messages:
        raise ValueError("chat: messages is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ArgumentTypeError(f"chat: messages[{i}] must be a dict with 'role' and 'content', got "
                                    f"{type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise ValueError(f"chat: messages[{i}] has no {key!r}")
        if not isinstance(m["role"], str) or not m["role"]:
            raise ArgumentTypeError(f"chat: messages[{i}]['role'] must be a non-empty string")
        content = m["content"]
        if isinstance(content, (list, tuple)):
            parts = []
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise ValueError(f"chat: messages[{i}]['content'][{j}] must be a {{'type': 'text', 'text': str}} "
                                     "part (this model reads text only)")
                parts.append(part["text"])
            content = "\n".join(parts)   # as the server joins them (and vLLM)
        if not isinstance(content, str):
            raise ArgumentTypeError(f"chat: messages[{i}]['content'] must be a string, got {type(content).__name__}")
        out.append({**m, "content": content})
    return out


def _raise(message):
    raise ChatTemplateError(f"the chat template refused the conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    """A checkpoint's chat template, read and compiled once, with its special-token variables."""

    def __init__(self, directory: str, tokenizer):
        try:
            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as e:  # pragma: no cover - jinja2 is a dependency
            raise ImportError("chat templates need the 'jinja2' package (pip install jinja2)") from e
        self._errors = jinja2.TemplateError
        source = find_template(directory)
        self.specials = special_tokens(directory, tokenizer)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._compiled = env.from_string(source)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the chat template cannot be rendered: {e}") from None

    def render(self, messages, add_generation_prompt: bool) -> str:
        messages = check_messages(messages)
        try:
            return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **self.specials)
        except ChatTemplateError:
            raise
        except self._errors as e:
            raise ChatTemplateError(f"the chat template cannot be rendered: {e}") from None
