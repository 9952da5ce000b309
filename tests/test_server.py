"""`tridecode serve`: the OpenAI-compatible HTTP server, run as a subprocess on the shipped model and driven
with the official `openai` client and raw HTTP. Every answer is checked against the Python API in this
process (same prompt, seed and options give the same text and token counts)."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import tridecode  # noqa: E402
from tridecode.params import DEFAULTS  # noqa: E402

MODEL_NAME = "td-tiny-code"      # the default served name: the shipped model directory's basename
PROMPT = "def fibonacci(n):"
MESSAGES = [{"role": "user", "content": "Write a function that adds two numbers."}]
LONG = 4000                      # max_tokens of a generation meant to be cut short (seconds of work)
NO_EOS = {"eos_token_id": []}    # an empty EOS set: the generation runs to max_tokens
READY = re.compile(r"tridecode: serving (\S+) on http://(\S+):(\d+)\s*$")
STARTUP_TIMEOUT = 120
TIMEOUT = 60


class Server:
    """A `tridecode serve --port 0` subprocess; stderr is collected by a thread, which also finds the
    announced port."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "tridecode", "serve", "--port", "0", *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self.name: str | None = None
        self.port: int | None = None
        self._announced = threading.Event()
        self.http = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            if not self._announced.wait(STARTUP_TIMEOUT) or self.port is None:
                raise RuntimeError("the server did not start:\n" + self.log)
            self.http = httpx.Client(base_url=self.url, timeout=TIMEOUT)
            assert self.http.get("/health").status_code == 200
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            m = READY.search(line)
            if m and self.port is None:
                self.name, self.port = m.group(1), int(m.group(3))
                self._announced.set()
        self._announced.set()            # end of stderr: the process has exited

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        # No retries: a 503 must reach the test as it is.
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)

    def metrics(self) -> dict:
        r = self.http.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        return parse_metrics(r.text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(10)
        if self.http is not None:
            self.http.close()


def parse_metrics(text: str) -> dict:
    """{(name, ((label, value), ...)): value} of a Prometheus text exposition, checking its shape: every
    sample belongs to a family announced by # HELP and # TYPE lines."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line.startswith("# HELP "):
            continue
        elif line:
            m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
            assert m, f"not a sample line: {line!r}"
            name, labels, value = m.groups()
            pairs = tuple(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or ""))
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in types or family in types, f"{name} has no # TYPE line"
            samples[(name, pairs)] = float(value)
    return samples


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(labels.items())), 0.0)


def growth(before: dict, after: dict, name: str, **labels) -> float:
    return metric(after, name, **labels) - metric(before, name, **labels)


def wait_until(predicate, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def model():
    return tridecode.load(tridecode.default_model_path())


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


# ---- helpers: one request through the openai client, streamed or not ----

_OPENAI_ARGS = {"max_tokens", "temperature", "top_p", "seed", "stop", "logprobs", "model"}


def _split(kw: dict) -> dict:
    """openai's own keyword arguments as they are; tridecode's fields in extra_body."""
    args = {k: v for k, v in kw.items() if k in _OPENAI_ARGS}
    extra = {k: v for k, v in kw.items() if k not in _OPENAI_ARGS}
    args.setdefault("model", MODEL_NAME)
    return {**args, "extra_body": extra} if extra else args


def complete(client, prompt, stream: bool = False, **kw):
    """(text, finish_reason, usage) of a completion."""
    if not stream:
        r = client.completions.create(prompt=prompt, **_split(kw))
        return r.choices[0].text, r.choices[0].finish_reason, r.usage
    text, finish, usage = "", None, None
    for chunk in client.completions.create(prompt=prompt, stream=True, stream_options={"include_usage": True},
                                           **_split(kw)):
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage
    return text, finish, usage


def chat(client, messages, stream: bool = False, **kw):
    """(text, finish_reason, usage) of a chat completion."""
    if not stream:
        r = client.chat.completions.create(messages=messages, **_split(kw))
        assert r.choices[0].message.role == "assistant"
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage
    text, finish, usage, roles = "", None, None, []
    for chunk in client.chat.completions.create(messages=messages, stream=True,
                                                stream_options={"include_usage": True}, **_split(kw)):
        if chunk.choices:
            delta = chunk.choices[0].delta
            roles.append(delta.role)
            text += delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage
    assert roles[0] == "assistant"
    return text, finish, usage


def python_kwargs(kw: dict) -> dict:
    """The Python API's spelling of a request's options."""
    out = dict(kw)
    if "max_tokens" in out:
        out["max_new_tokens"] = out.pop("max_tokens")
    return out


def check_usage(usage, result) -> None:
    assert usage.prompt_tokens == result.prompt_tokens
    assert usage.completion_tokens == len(result.tokens)
    assert usage.total_tokens == result.prompt_tokens + len(result.tokens)


# ---- tests ----

def test_import_tridecode_leaves_the_server_out():
    code = ("import sys, tridecode, tridecode.server.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn') "
            "or m.startswith('tridecode.server.app')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT)


def test_health_and_models(server, client):
    assert server.name == MODEL_NAME
    assert server.http.get("/health").json() == {"status": "ok"}
    body = server.http.get("/v1/models").json()
    assert body["object"] == "list"
    [entry] = body["data"]
    assert entry["id"] == MODEL_NAME and entry["object"] == "model" and entry["owned_by"] == "tridecode"
    assert isinstance(entry["created"], int)
    assert [m.id for m in client.models.list()] == [MODEL_NAME]


MODES = [("ar", {}), ("diffusion", {"block_length": 8}), ("self_spec", {})]


@pytest.mark.parametrize("mode, extra", MODES, ids=[m for m, _ in MODES])
def test_completion_matches_python_api(server, client, model, mode, extra):
    kw = {"max_tokens": 40, "temperature": 0.8, "seed": 11, "mode": mode, **extra}
    expected = model.generate(PROMPT, **python_kwargs(kw))
    assert expected.text
    for stream in (False, True):
        text, finish, usage = complete(client, PROMPT, stream, **kw)
        assert text == expected.text, f"stream={stream}"
        assert finish == expected.finish_reason
        check_usage(usage, expected)
    r = server.http.post("/v1/completions", json={"prompt": PROMPT, **kw}).json()
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-") and r["model"] == MODEL_NAME
    stats = r["tridecode"]
    assert stats["mode"] == expected.mode
    assert stats["forwards"] == expected.forwards and stats["nfe"] == expected.nfe
    assert stats["tokens_per_forward"] == pytest.approx(expected.tokens_per_forward)
    assert stats["mean_accepted"] == (None if expected.mean_accepted is None else pytest.approx(expected.mean_accepted))


@pytest.mark.parametrize("mode, extra", MODES, ids=[m for m, _ in MODES])
def test_chat_matches_python_api(server, client, model, mode, extra):
    kw = {"max_tokens": 32, "temperature": 0.7, "seed": 5, "mode": mode, **extra}
    expected = model.chat(MESSAGES, **python_kwargs(kw))
    for stream in (False, True):
        text, finish, usage = chat(client, MESSAGES, stream, **kw)
        assert text == expected.text, f"stream={stream}"
        assert finish == expected.finish_reason
        check_usage(usage, expected)
    r = server.http.post("/v1/chat/completions", json={"messages": MESSAGES, "max_completion_tokens": 32,
                                                       "temperature": 0.7, "seed": 5, "mode": mode, **extra}).json()
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    assert r["choices"][0]["message"] == {"role": "assistant", "content": expected.text}


def test_defaults_are_the_python_apis(client, model):
    """No max_tokens / temperature: tridecode's defaults (greedy, DEFAULTS["max_new_tokens"]), not OpenAI's
    (16 tokens, temperature 1)."""
    expected = model.generate(PROMPT, **NO_EOS)
    assert len(expected.tokens) == DEFAULTS["max_new_tokens"]
    for stream in (False, True):
        text, finish, usage = complete(client, PROMPT, stream, **NO_EOS)
        assert (text, finish) == (expected.text, "length")
        check_usage(usage, expected)


def test_stop_string(client, model):
    full = model.generate(PROMPT, max_new_tokens=48).text
    stop = full[10:14]
    head = full[:full.index(stop)]
    expected = model.generate(PROMPT, max_new_tokens=48, stop=["never seen", stop])
    assert expected.text == head and expected.finish_reason == "stop"
    for stream in (False, True):
        text, finish, usage = complete(client, PROMPT, stream, max_tokens=48, stop=["never seen", stop])
        assert (text, finish) == (head, "stop"), f"stream={stream}"
        check_usage(usage, expected)
        text, finish, _ = complete(client, PROMPT, stream, max_tokens=48, stop=stop, mode="self_spec")
        assert (text, finish) == (head, "stop"), f"self_spec, stream={stream}"
    reply = model.chat(MESSAGES, max_new_tokens=32).text
    stop = reply[6:9]
    for stream in (False, True):
        text, finish, _ = chat(client, MESSAGES, stream, max_tokens=32, stop=[stop])
        assert (text, finish) == (reply[:reply.index(stop)], "stop")


def test_token_id_prompts(server, model):
    ids = model.encode(PROMPT)
    expected = model.generate(ids, max_new_tokens=24)
    for prompt in (ids, [ids], [PROMPT]):
        r = server.http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 24}).json()
        assert r["choices"][0]["text"] == expected.text
        assert r["usage"]["prompt_tokens"] == len(ids) == expected.prompt_tokens


def test_logprobs(server, client, model):
    expected = model.generate(PROMPT, max_new_tokens=24, temperature=0.5, seed=3, logprobs=True)
    r = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=0.5, seed=3,
                                  logprobs=1)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx(expected.logprobs)
    assert "".join(lp.tokens) == r.choices[0].text == expected.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]

    streamed_tokens, streamed_logprobs = [], []
    for chunk in client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=0.5,
                                           seed=3, logprobs=1, stream=True):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed_tokens += chunk.choices[0].logprobs.tokens
            streamed_logprobs += chunk.choices[0].logprobs.token_logprobs
    assert streamed_tokens == lp.tokens and streamed_logprobs == pytest.approx(expected.logprobs)

    expected = model.chat(MESSAGES, max_new_tokens=16, logprobs=True)
    r = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=16, logprobs=True)
    content = r.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx(expected.logprobs)
    assert "".join(c.token for c in content) == r.choices[0].message.content
    assert all(bytes(c.bytes) == c.token.encode() for c in content)

    # Off unless asked for.
    r = server.http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "logprobs": 0}).json()
    assert r["choices"][0]["logprobs"] is None


def sse_events(body: str) -> list[str]:
    """The payloads of a server-sent event stream, checking that each event is exactly `data: ...\\n\\n`."""
    assert body.endswith("\n\n")
    events = body.split("\n\n")[:-1]
    for e in events:
        assert e.startswith("data: ") and "\n" not in e, repr(e)
    return [e[len("data: "):] for e in events]


def test_sse_framing(server):
    r = server.http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 12, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "text_completion" for c in chunks)
    *texts, final, usage = chunks
    assert all(c["choices"][0]["finish_reason"] is None for c in texts)
    assert final["choices"][0]["finish_reason"] == "length" and final["choices"][0]["text"] == ""
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12 and usage["tridecode"]["mode"] == "ar"

    r = server.http.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 6, "stream": True})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in chunks[1:-1])
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] == "length"


BAD_REQUESTS = [
    # (endpoint, body, the error's param)
    ("completions", {"prompt": PROMPT, "max_tokenz": 5}, "max_tokenz"),
    ("completions", {"prompt": PROMPT, "max_tokens": "5"}, "max_tokens"),
    ("completions", {"prompt": PROMPT, "max_tokens": True}, "max_tokens"),
    ("completions", {"prompt": PROMPT, "max_tokens": 0}, "max_tokens"),
    ("completions", {"prompt": PROMPT, "temperature": "hot"}, "temperature"),
    ("completions", {"prompt": PROMPT, "stream": "yes"}, "stream"),
    ("completions", {"prompt": PROMPT, "seed": 1.5}, "seed"),
    ("completions", {"prompt": PROMPT, "stop": [1]}, "stop[0]"),
    ("completions", {"prompt": PROMPT, "stop": ["x"] * 17}, "stop"),
    ("completions", {"prompt": PROMPT, "n": 2}, "n"),
    ("completions", {"prompt": PROMPT, "mode": "selfspec"}, "mode"),
    ("completions", {"prompt": PROMPT, "threshold": "high", "mode": "diffusion"}, "threshold"),
    ("completions", {"prompt": PROMPT, "eos_token_id": "2"}, "eos_token_id"),
    ("completions", {"prompt": PROMPT, "use_lora": 1}, "use_lora"),
    ("completions", {"prompt": PROMPT, "logprobs": 2}, "logprobs"),
    ("completions", {"prompt": PROMPT, "echo": True}, "echo"),
    ("completions", {"prompt": PROMPT, "best_of": 3}, "best_of"),
    ("completions", {"prompt": PROMPT, "presence_penalty": 0.5}, "presence_penalty"),
    ("completions", {"prompt": PROMPT, "logit_bias": {"5": 1}}, "logit_bias"),
    ("completions", {"prompt": PROMPT, "stream_options": {"include_usage": True}}, "stream_options"),
    ("completions", {"prompt": PROMPT, "stream": True, "stream_options": {"usage": True}}, "stream_options.usage"),
    ("completions", {"prompt": ""}, "prompt"),
    ("completions", {"prompt": []}, "prompt"),
    ("completions", {"prompt": ["a", "b"]}, "prompt"),
    ("completions", {"prompt": [1, "a"]}, "prompt"),
    ("completions", {"prompt": 5}, "prompt"),
    ("completions", {}, "prompt"),
    ("completions", {"prompt": PROMPT, "messages": MESSAGES}, "messages"),
    ("chat/completions", {"messages": []}, "messages"),
    ("chat/completions", {"messages": "hi"}, "messages"),
    ("chat/completions", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls"),
    ("chat/completions", {"messages": MESSAGES, "top_logprobs": 3}, "top_logprobs"),
    ("chat/completions", {"messages": MESSAGES, "logprobs": 1}, "logprobs"),
    ("chat/completions", {"messages": MESSAGES, "response_format": {"type": "json_object"}}, "response_format"),
    ("chat/completions", {"messages": MESSAGES, "max_tokens": 5, "max_completion_tokens": 6}, "max_tokens"),
    ("chat/completions", {"messages": MESSAGES, "prompt": PROMPT}, "prompt"),
    ("chat/completions", {"messages": MESSAGES, "tools": []}, "tools"),
]


@pytest.mark.parametrize("endpoint, body, param", BAD_REQUESTS,
                         ids=[f"{e}-{p}-{i}" for i, (e, _, p) in enumerate(BAD_REQUESTS)])
def test_bad_request(server, endpoint, body, param):
    r = server.http.post(f"/v1/{endpoint}", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert set(error) == {"message", "type", "param", "code"}


# Refused by the runtime's own checks: a 400 with its message, streamed or not.
RUNTIME_REFUSALS = [
    {"prompt": PROMPT, "block_length": 4},                       # block_length is not for mode ar
    {"prompt": PROMPT, "mode": "diffusion", "top_k": 5},         # top_k is ar only
    {"prompt": PROMPT, "mode": "self_spec", "threshold": 0.5},   # threshold is diffusion's
    {"prompt": [99999]},                                         # outside the vocabulary
    {"prompt": PROMPT, "max_tokens": 100000},                    # more than the KV cache holds
    {"prompt": PROMPT, "temperature": -1},
]


@pytest.mark.parametrize("body", RUNTIME_REFUSALS, ids=range(len(RUNTIME_REFUSALS)))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_runtime_refusal_is_a_400(server, body, stream):
    r = server.http.post("/v1/completions", json={**body, "stream": stream})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize("raw", [b'{"prompt": ', b"", b'{"prompt": "x", "temperature": NaN}', b"\x80abc",
                                 b"[" * 100000], ids=["truncated", "empty", "nan", "not-utf8", "deep"])
def test_malformed_json(server, raw):
    r = server.http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"


def test_body_not_an_object(server):
    r = server.http.post("/v1/chat/completions", json=[MESSAGES])
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_errors_through_the_openai_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, n=2)
    assert e.value.status_code == 400 and e.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert e.value.body["code"] == "model_not_found"


def test_unknown_route_and_method(server):
    r = server.http.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["message"]
    r = server.http.get("/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["message"]


def test_metrics(server, model):
    before = server.metrics()
    kw = {"max_tokens": 20, "temperature": 0.6, "seed": 2, "mode": "self_spec"}
    expected = model.generate(PROMPT, **python_kwargs(kw))
    server.http.post("/v1/completions", json={"prompt": PROMPT, **kw}).raise_for_status()
    server.http.post("/v1/completions", json={"prompt": PROMPT, "stream": True, **kw}).raise_for_status()
    assert server.http.post("/v1/completions", json={"prompt": PROMPT, "n": 3}).status_code == 400
    after = server.metrics()

    def delta(name, **labels):
        return growth(before, after, name, **labels)

    assert delta("tridecode_requests_total", endpoint="/v1/completions", status="200") == 2
    assert delta("tridecode_requests_total", endpoint="/v1/completions", status="400") == 1
    assert delta("tridecode_requests_total", endpoint="/metrics", status="200") == 1     # the first scrape
    assert delta("tridecode_prompt_tokens_total") == 2 * expected.prompt_tokens
    assert delta("tridecode_generation_tokens_total") == 2 * len(expected.tokens)
    assert delta("tridecode_forwards_total") == 2 * expected.forwards
    assert delta("tridecode_accepted_tokens_per_cycle_count") == 2 * len(expected.accepted_per_cycle)
    assert delta("tridecode_accepted_tokens_per_cycle_sum") == 2 * sum(expected.accepted_per_cycle)
    assert delta("tridecode_time_per_output_token_seconds_count") == 2
    assert delta("tridecode_time_per_output_token_seconds_sum") > 0
    assert metric(after, "tridecode_queue_length") == 0
    buckets = sorted(((float(dict(labels)["le"]), v) for (name, labels), v in after.items()
                      if name == "tridecode_time_per_output_token_seconds_bucket"))
    assert buckets[-1] == (float("inf"), metric(after, "tridecode_time_per_output_token_seconds_count"))
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))


def test_concurrent_clients(server, model):
    """Requests from several threads at once each get their own seed's answer."""
    requests = [(f"def task_{i}(x):", {"max_tokens": 32, "temperature": 0.9, "seed": 100 + i, "mode": mode})
                for i, mode in enumerate(["ar", "self_spec", "diffusion", "ar", "self_spec", "ar"])]
    expected = [model.generate(p, **python_kwargs(kw)).text for p, kw in requests]
    start = threading.Barrier(len(requests))

    def run(i):
        prompt, kw = requests[i]
        start.wait()
        return complete(server.client(), prompt, stream=i % 2 == 1, **kw)[0]

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        assert list(pool.map(run, range(len(requests)))) == expected


class OpenStream:
    """A streaming completion whose first event has been read (so its generation is running), held open
    until close()."""

    def __init__(self, server, **body):
        self.http = httpx.Client(base_url=server.url, timeout=TIMEOUT)
        self.response = self.http.send(self.http.build_request(
            "POST", "/v1/completions", json={"prompt": PROMPT, "stream": True, **body}), stream=True)
        assert self.response.status_code == 200
        # Kept: dropping a partly read iterator closes the connection.
        self.lines = self.response.iter_lines()
        assert next(self.lines).startswith("data: {")

    def close(self) -> None:
        self.response.close()
        self.http.close()


def test_disconnect_mid_stream(server, model):
    before = server.metrics()
    OpenStream(server, max_tokens=LONG, **NO_EOS).close()
    # The next request waits for the abandoned one to stop, and must be unaffected by it.
    expected = model.generate("def add(a, b):", max_new_tokens=16)
    r = server.http.post("/v1/completions", json={"prompt": "def add(a, b):", "max_tokens": 16}).json()
    assert r["choices"][0]["text"] == expected.text
    after = server.metrics()
    assert growth(before, after, "tridecode_requests_cancelled_total") == 1
    generated = growth(before, after, "tridecode_generation_tokens_total") - len(expected.tokens)
    assert 0 < generated < LONG / 2, "the abandoned generation should have stopped early"
    assert server.http.get("/health").json() == {"status": "ok"}


def test_disconnect_before_the_answer(server, model):
    """A client that leaves a non-streamed request: cancelled while it runs, skipped while it waits."""
    before = server.metrics()

    def left(samples):
        return metric(samples, "tridecode_requests_total", endpoint="/v1/completions", status="499")

    def queued():
        return metric(server.metrics(), "tridecode_queue_length")

    def post_and_leave(prompt):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": prompt, "max_tokens": LONG, **NO_EOS}),
                     {"content-type": "application/json"})
        return conn

    running = post_and_leave(PROMPT)
    wait_until(lambda: queued() == 1, "the first request to run")
    waiting = post_and_leave("x = 1")
    wait_until(lambda: queued() == 2, "the second request to wait")
    waiting.close()
    wait_until(lambda: left(server.metrics()) == left(before) + 1, "the server to see the waiting client leave")
    running.close()
    expected = model.generate("import os", max_new_tokens=8)
    r = server.http.post("/v1/completions", json={"prompt": "import os", "max_tokens": 8}).json()
    assert r["choices"][0]["text"] == expected.text
    after = server.metrics()
    assert left(after) == left(before) + 2
    assert growth(before, after, "tridecode_requests_cancelled_total") == 2
    # The waiting request never ran: only the running one's prompt and the last one's are counted.
    prompt_tokens = growth(before, after, "tridecode_prompt_tokens_total")
    assert prompt_tokens == len(model.encode(PROMPT)) + expected.prompt_tokens
    generated = growth(before, after, "tridecode_generation_tokens_total") - len(expected.tokens)
    assert generated < LONG / 2


@pytest.fixture
def small_queue_server():
    s = Server("--queue-size", "1")
    yield s
    s.stop()


def test_queue_overflow_is_a_503(small_queue_server, model):
    server = small_queue_server
    running = OpenStream(server, max_tokens=LONG, **NO_EOS)
    expected = model.generate("def add(a, b):", max_new_tokens=8)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(complete, server.client(), "def add(a, b):", max_tokens=8)
        wait_until(lambda: metric(server.metrics(), "tridecode_queue_length") == 2, "the request to wait")
        # The line is full: more requests are refused at once, however they ask.
        for body in ({"prompt": PROMPT}, {"prompt": PROMPT, "stream": True}):
            r = server.http.post("/v1/completions", json=body)
            assert r.status_code == 503
            assert r.json()["error"]["type"] == "server_overloaded"
        with pytest.raises(openai.APIStatusError) as e:
            server.client().chat.completions.create(model=MODEL_NAME, messages=MESSAGES)
        assert e.value.status_code == 503
        running.close()
        assert waiting.result(TIMEOUT)[0] == expected.text
    assert metric(server.metrics(), "tridecode_requests_total", endpoint="/v1/completions", status="503") == 2
    assert complete(server.client(), "def add(a, b):", max_tokens=8)[0] == expected.text


def test_options_and_ctrl_c():
    """-m, --served-model-name, --max-context, --no-lora; Ctrl-C ends the server at once with status 0, the
    requests in flight answered 503 (an error event for a stream already started)."""
    s = Server("-m", tridecode.default_model_path(), "--served-model-name", "tiny", "--max-context", "4050",
               "--threads", "1", "--no-lora")
    try:
        assert s.name == "tiny"
        client = s.client()
        assert [m.id for m in client.models.list()] == ["tiny"]
        assert complete(client, PROMPT, model="tiny", max_tokens=8)[1] == "length"
        with pytest.raises(openai.NotFoundError):
            complete(client, PROMPT, model=MODEL_NAME, max_tokens=8)
        with pytest.raises(openai.BadRequestError):          # prompt + max_tokens exceed --max-context
            complete(client, PROMPT, model="tiny", max_tokens=4060)
        with pytest.raises(openai.BadRequestError):          # no LoRA drafter attached
            complete(client, PROMPT, model="tiny", max_tokens=8, mode="self_spec", use_lora=True)

        running = OpenStream(s, model="tiny", max_tokens=LONG, **NO_EOS)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(s.http.post, "/v1/completions", json={"prompt": PROMPT, "model": "tiny"})
            wait_until(lambda: metric(s.metrics(), "tridecode_queue_length") == 2, "the request to wait")
            s.proc.send_signal(signal.SIGINT)
            rest = [line for line in running.lines if line]
            assert rest[-1] == "data: [DONE]"
            assert json.loads(rest[-2][len("data: "):])["error"]["code"] == "server_shutting_down"
            assert waiting.result(TIMEOUT).status_code == 503
        assert s.proc.wait(TIMEOUT) == 0, s.log
        s._reader.join(TIMEOUT)
        assert "Traceback" not in s.log and "ERROR" not in s.log, s.log
    finally:
        s.stop()
