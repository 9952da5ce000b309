"""Parsing of the OpenAI request bodies into the keyword arguments of Model.generate / Model.chat.

Every field is type-checked here; a wrong type, an unknown field or a value the server cannot honour is a
400 naming the field (`param`). Ranges the runtime checks itself (seed, temperature, block_length, token
ids, ...) are left to it: its ValueError becomes a 400 with its message.

Defaults differ from OpenAI's on purpose and follow tridecode's Python API (`tridecode.params.DEFAULTS`):
max_tokens defaults to DEFAULTS["max_new_tokens"] (128, not 16) and temperature to DEFAULTS["temperature"]
(0.0, greedy, not 1.0), so the same request gives the same output as `Model.generate` with its defaults.
A null field means the default, except `threshold`, where null selects diffusion's fixed schedule as in
the Python API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, TypeVar, Union

from ..params import DEFAULTS, normalize_mode
from .errors import APIError, invalid

JSON = Union[None, bool, int, float, str, List["JSON"], Dict[str, "JSON"]]
T = TypeVar("T")

#: At most this many stop strings per request.
MAX_STOP = 16

# Fields of both endpoints: OpenAI's, then tridecode's own (sent as extra body fields, as vLLM does).
_OPENAI_COMMON = frozenset({
    "model", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream", "stream_options", "user",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs"})
TRIDECODE_FIELDS = frozenset({
    "mode", "block_length", "threshold", "steps", "draft_threshold", "use_lora", "top_k", "eos_token_id"})
COMPLETION_FIELDS = _OPENAI_COMMON | TRIDECODE_FIELDS | {"prompt", "echo", "best_of"}
CHAT_FIELDS = _OPENAI_COMMON | TRIDECODE_FIELDS | {"messages", "max_completion_tokens", "top_logprobs",
                                                   "response_format"}

_ONLY_CHOSEN = "only the chosen token's logprob is available"


@dataclass
class GenerationRequest:
    """One checked request: what to run and how to answer."""

    kwargs: Dict[str, Any]            # keyword arguments of Model.generate / Model.chat, prompt excluded
    stream: bool
    include_usage: bool               # stream_options.include_usage: a last chunk with the usage
    logprobs: bool
    prompt: Union[str, List[int], None] = None            # /v1/completions
    messages: Optional[List[Dict[str, str]]] = None       # /v1/chat/completions


# ---- JSON type checks: each takes (param name, non-null value) and returns the value or raises a 400 ----

def _describe(v: JSON) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    return "an array" if isinstance(v, list) else "an object"


def _type_error(name: str, expected: str, v: JSON) -> APIError:
    return invalid(f"'{name}' must be {expected}, got {_describe(v)}", name, "invalid_type")


def _is_int(v: JSON) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(name: str, v: JSON) -> int:
    if not _is_int(v):
        raise _type_error(name, "an integer", v)
    return v


def _positive_int(name: str, v: JSON) -> int:
    if _int(name, v) < 1:
        raise invalid(f"'{name}' must be a positive integer, got {v}", name)
    return v


def _non_negative_int(name: str, v: JSON) -> int:
    if _int(name, v) < 0:
        raise invalid(f"'{name}' must be >= 0, got {v}", name)
    return v


def _number(name: str, v: JSON) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _type_error(name, "a number", v)
    return float(v)


def _bool(name: str, v: JSON) -> bool:
    if not isinstance(v, bool):
        raise _type_error(name, "a boolean", v)
    return v


def _string(name: str, v: JSON) -> str:
    if not isinstance(v, str):
        raise _type_error(name, "a string", v)
    return v


def _object(name: str, v: JSON) -> Dict[str, JSON]:
    if not isinstance(v, dict):
        raise _type_error(name, "an object", v)
    return v


def _int_or_ints(name: str, v: JSON) -> Union[int, List[int]]:
    if isinstance(v, list):
        return [_int(f"{name}[{i}]", e) for i, e in enumerate(v)]
    if not _is_int(v):
        raise _type_error(name, "an integer or an array of integers", v)
    return v


def _stop(name: str, v: JSON) -> List[str]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list):
        raise _type_error(name, "a string or an array of strings", v)
    if len(items) > MAX_STOP:
        raise invalid(f"'{name}' holds {len(items)} strings; at most {MAX_STOP} are allowed", name)
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise _type_error(f"{name}[{i}]", "a string", s)
        if not s:
            raise invalid(f"'{name}' strings must not be empty", name)
    return items


def _get(body: Dict[str, JSON], name: str, parse: Callable[[str, JSON], T]) -> Optional[T]:
    """The checked value of an optional field; None when absent or null."""
    v = body.get(name)
    return None if v is None else parse(name, v)


def _unsupported(name: str, message: str) -> APIError:
    return invalid(message, name, "unsupported_value")


# ---- the request's parts ----

def _fields(body: JSON, allowed: frozenset) -> Dict[str, JSON]:
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, got {_describe(body)}", None, "invalid_type")
    for name in body:
        if name not in allowed:
            raise invalid(f"unknown field '{name}' (accepted: {', '.join(sorted(allowed))})", name,
                          "unknown_parameter")
    return body


def _check_model(body: Dict[str, JSON], model_name: str) -> None:
    name = _get(body, "model", _string)
    if name is not None and name != model_name:
        raise APIError(404, f"the model '{name}' does not exist; this server serves '{model_name}'",
                       param="model", code="model_not_found")


def _prompt(v: JSON) -> Union[str, List[int]]:
    if v is None:
        raise invalid("'prompt' is required", "prompt", "missing_required_parameter")
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], (str, list)):
        v = v[0]                     # a batch of one prompt
    if isinstance(v, str):
        if not v:
            raise invalid("'prompt' is empty", "prompt")
        return v
    if isinstance(v, list):
        if not v:
            raise invalid("'prompt' is empty", "prompt")
        if all(_is_int(t) for t in v):
            return list(v)           # token ids; the runtime checks them against the vocabulary
        if all(isinstance(p, (str, list)) for p in v):
            raise _unsupported("prompt", "batched prompts are not supported: send one prompt per request")
    raise _type_error("prompt", "a string, an array of token ids, or an array holding one of those", v)


def _content(name: str, v: JSON) -> str:
    """A message's content: a string, or an array of text parts (joined with newlines)."""
    if isinstance(v, str):
        return v
    if not isinstance(v, list):
        raise _type_error(name, "a string or an array of text parts", v)
    texts = []
    for i, part in enumerate(v):
        where = f"{name}[{i}]"
        part = _object(where, part)
        if part.get("type") != "text" or set(part) != {"type", "text"}:
            raise _unsupported(where, f"'{where}' must be a text part {{\"type\": \"text\", \"text\": ...}}; "
                                      "other content types are not supported")
        texts.append(_string(f"{where}.text", part["text"]))
    return "\n".join(texts)


def _messages(v: JSON) -> List[Dict[str, str]]:
    if v is None:
        raise invalid("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(v, list):
        raise _type_error("messages", "an array of messages", v)
    if not v:
        raise invalid("'messages' is empty", "messages")
    out = []
    for i, m in enumerate(v):
        where = f"messages[{i}]"
        m = _object(where, m)
        for key in m:
            if key not in ("role", "content"):
                raise invalid(f"'{where}' has the unsupported key '{key}' (a message is 'role' and 'content')",
                              f"{where}.{key}", "unknown_parameter")
        for key in ("role", "content"):
            if m.get(key) is None:
                raise invalid(f"'{where}.{key}' is required", f"{where}.{key}", "missing_required_parameter")
        out.append({"role": _string(f"{where}.role", m["role"]), "content": _content(f"{where}.content", m["content"])})
    return out


def _stream(body: Dict[str, JSON]) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = bool(_get(body, "stream", _bool))
    options = _get(body, "stream_options", _object)
    if options is None:
        return stream, False
    if not stream:
        raise invalid("'stream_options' is only allowed with stream: true", "stream_options")
    for key in options:
        if key != "include_usage":
            raise invalid(f"unknown field 'stream_options.{key}' (accepted: include_usage)",
                          f"stream_options.{key}", "unknown_parameter")
    usage = options.get("include_usage")
    return stream, usage is not None and _bool("stream_options.include_usage", usage)


def _common(body: Dict[str, JSON], max_tokens: Optional[int]) -> Dict[str, Any]:
    """The generate keyword arguments shared by both endpoints, after the unsupported values are refused."""
    n = _get(body, "n", _int)
    if n is not None and n != 1:
        raise _unsupported("n", "only n=1 is supported (one choice per request)")
    for name in ("presence_penalty", "frequency_penalty"):
        if _get(body, name, _number):
            raise _unsupported(name, f"'{name}' is not supported; only 0 is accepted")
    if _get(body, "logit_bias", _object):
        raise _unsupported("logit_bias", "'logit_bias' is not supported; only an empty object is accepted")
    _get(body, "user", _string)      # accepted and ignored

    mode = _get(body, "mode", _string)
    if mode is not None:
        try:
            mode = normalize_mode(mode)
        except ValueError as e:
            raise invalid(str(e), "mode") from None
    kwargs: Dict[str, Any] = {
        "mode": DEFAULTS["mode"] if mode is None else mode,
        "max_new_tokens": DEFAULTS["max_new_tokens"] if max_tokens is None else max_tokens,
        "temperature": DEFAULTS["temperature"] if body.get("temperature") is None
        else _number("temperature", body["temperature"]),
    }
    top_p = _get(body, "top_p", _number)
    if top_p is not None and top_p != 1.0:
        # top_p = 1 keeps every token, the same as no filter: clients that always send it can still use
        # diffusion and self_spec, which take no top_p.
        kwargs["top_p"] = top_p
    optional: Dict[str, Callable[[str, JSON], Any]] = {
        "seed": _int, "top_k": _int, "block_length": _int, "steps": _int, "draft_threshold": _number,
        "use_lora": _bool, "eos_token_id": _int_or_ints}
    for name, parse in optional.items():
        value = _get(body, name, parse)
        if value is not None:
            kwargs[name] = value
    if "threshold" in body:          # null is meaningful here: diffusion's fixed schedule
        kwargs["threshold"] = _get(body, "threshold", _number)
    stop = _get(body, "stop", _stop)
    if stop:
        kwargs["stop"] = stop
    return kwargs


def parse_completion(body: JSON, model_name: str) -> GenerationRequest:
    """A /v1/completions body."""
    body = _fields(body, COMPLETION_FIELDS)
    _check_model(body, model_name)
    prompt = _prompt(body.get("prompt"))
    if _get(body, "echo", _bool):
        raise _unsupported("echo", "'echo' is not supported; only false is accepted")
    best_of = _get(body, "best_of", _int)
    if best_of is not None and best_of != 1:
        raise _unsupported("best_of", "only best_of=1 is supported")
    logprobs = _get(body, "logprobs", _non_negative_int)
    if logprobs is not None and logprobs > 1:
        raise _unsupported("logprobs", f"{_ONLY_CHOSEN}: 'logprobs' may be 0 or 1")
    stream, include_usage = _stream(body)
    kwargs = _common(body, _get(body, "max_tokens", _positive_int))
    return GenerationRequest(kwargs, stream, include_usage, bool(logprobs), prompt=prompt)


def parse_chat(body: JSON, model_name: str) -> GenerationRequest:
    """A /v1/chat/completions body."""
    body = _fields(body, CHAT_FIELDS)
    _check_model(body, model_name)
    messages = _messages(body.get("messages"))
    max_tokens = _get(body, "max_tokens", _positive_int)
    max_completion = _get(body, "max_completion_tokens", _positive_int)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise invalid("give 'max_completion_tokens' or 'max_tokens', not both", "max_tokens")
    logprobs = bool(_get(body, "logprobs", _bool))
    if _get(body, "top_logprobs", _non_negative_int):
        raise _unsupported("top_logprobs", f"{_ONLY_CHOSEN}: 'top_logprobs' may only be 0")
    response_format = _get(body, "response_format", _object)
    if response_format is not None and response_format != {"type": "text"}:
        raise _unsupported("response_format", "only response_format {\"type\": \"text\"} is supported")
    stream, include_usage = _stream(body)
    kwargs = _common(body, max_completion if max_completion is not None else max_tokens)
    return GenerationRequest(kwargs, stream, include_usage, logprobs, messages=messages)
