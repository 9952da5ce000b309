"""The OpenAI-compatible HTTP application (Starlette).

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions, GET /metrics.
Generations run on the Scheduler's single worker thread; each response watches its connection while it
waits, and a client that disconnects sets its job's cancel Event, so the generation stops at the next
forward (or never starts, if it was still waiting).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..result import GenerateResult, StreamChunk
from .errors import APIError, error_body, from_exception, internal_error, invalid, shutting_down
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics
from .schema import JSON, GenerationRequest, parse_chat, parse_completion
from .scheduler import Job, Runner, Scheduler

#: JSON has no -inf: the logprob of a token chosen with probability 0 is reported as this.
MIN_LOGPROB = -9999.0

_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _sse(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


# ---- response bodies ----

class _TokenText:
    """The text of each generated token, in order. A token is decoded in the context of the few tokens
    before it (decode(context + [token]) minus decode(context)): byte-level tokenizers split characters
    over tokens and join words with spaces, so a token decoded alone can differ from its share of the
    text."""

    CONTEXT = 8

    def __init__(self, model):
        self._model = model
        self._previous: List[int] = []

    def __call__(self, tokens: Sequence[int]) -> List[str]:
        if self._model.tokenizer is None:
            return ["" for _ in tokens]
        out = []
        for t in tokens:
            context = self._previous[-self.CONTEXT:]
            before = self._model.decode(context)
            out.append(self._model.decode(context + [t])[len(before):])
            self._previous.append(t)
        return out


def _logprob(v: float) -> float:
    return max(v, MIN_LOGPROB)


def _usage(result: GenerateResult) -> Dict[str, int]:
    n = len(result.tokens)
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": n, "total_tokens": result.prompt_tokens + n}


def _stats(result: GenerateResult) -> Dict[str, Any]:
    """tridecode's own numbers about the generation, next to the usage."""
    return {"mode": result.mode, "forwards": result.forwards, "nfe": result.nfe,
            "tokens_per_forward": result.tokens_per_forward, "mean_accepted": result.mean_accepted,
            "seconds": result.seconds}


class _Answer:
    """Builds the JSON a request is answered with: the whole response, or the chunks of its stream."""

    response_object = ""   # "object" of the response
    chunk_object = ""      # "object" of a stream chunk
    id_prefix = ""

    def __init__(self, model, model_name: str, request: GenerationRequest):
        self.request = request
        self.id = self.id_prefix + uuid.uuid4().hex
        self.created = int(time.time())
        self.model_name = model_name
        self._token_text = _TokenText(model)

    def _head(self, kind: str) -> Dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_name}

    def response(self, result: GenerateResult) -> Dict[str, Any]:
        logprobs = None
        if self.request.logprobs:
            logprobs = self._logprobs(self._token_text(result.tokens), result.logprobs or [])
        choice = self._choice(result.text or "", logprobs, result.finish_reason, stream=False)
        return {**self._head(self.response_object), "choices": [choice], "usage": _usage(result), "tridecode": _stats(result)}

    def _chunk(self, choice: Dict[str, Any]) -> Dict[str, Any]:
        chunk = {**self._head(self.chunk_object), "choices": [choice]}
        if self.request.include_usage:
            chunk["usage"] = None      # as OpenAI: only the last chunk carries the usage
        return chunk

    def opening(self) -> List[Dict[str, Any]]:
        """Chunks sent before any text."""
        return []

    def delta(self, chunk: StreamChunk) -> Optional[Dict[str, Any]]:
        """The stream chunk of newly committed text; None when there is nothing to tell."""
        logprobs = None
        if self.request.logprobs and chunk.tokens:
            logprobs = self._logprobs(self._token_text(chunk.tokens), chunk.logprobs or [])
        if not chunk.text and logprobs is None:
            return None
        return self._chunk(self._choice(chunk.text, logprobs, None, stream=True))

    def closing(self, result: GenerateResult) -> List[Dict[str, Any]]:
        """The chunk with the finish reason, then the usage chunk when the client asked for it."""
        out = [self._chunk(self._choice("", None, result.finish_reason, stream=True, last=True))]
        if self.request.include_usage:
            out.append({**self._head(self.chunk_object), "choices": [], "usage": _usage(result),
                        "tridecode": _stats(result)})
        return out

    def _choice(self, text: str, logprobs: Optional[Dict[str, Any]], finish_reason: Optional[str], *,
                stream: bool, last: bool = False) -> Dict[str, Any]:
        raise NotImplementedError

    def _logprobs(self, strings: List[str], logprobs: List[float]) -> Dict[str, Any]:
        raise NotImplementedError


class _CompletionAnswer(_Answer):
    response_object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl-"

    def __init__(self, model, model_name: str, request: GenerationRequest):
        super().__init__(model, model_name, request)
        self._offset = 0           # characters of token text reported so far (text_offset of the next token)

    def _choice(self, text, logprobs, finish_reason, *, stream, last=False):
        return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    def _logprobs(self, strings, logprobs):
        offsets = []
        for s in strings:
            offsets.append(self._offset)
            self._offset += len(s)
        return {"tokens": strings, "token_logprobs": [_logprob(v) for v in logprobs], "top_logprobs": None,
                "text_offset": offsets}


class _ChatAnswer(_Answer):
    response_object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def opening(self):
        return [self._chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None})]

    def _choice(self, text, logprobs, finish_reason, *, stream, last=False):
        choice: Dict[str, Any] = {"index": 0}
        if not stream:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["delta"] = {} if last else {"content": text}
        choice.update(logprobs=logprobs, finish_reason=finish_reason)
        return choice

    def _logprobs(self, strings, logprobs):
        return {"content": [{"token": s, "logprob": _logprob(v), "bytes": list(s.encode("utf-8")),
                             "top_logprobs": []} for s, v in zip(strings, logprobs)]}


# ---- the generation response ----

class _GenerationResponse:
    """The ASGI response of a submitted job: waits for its events while watching the connection, then
    answers with one JSON body or streams server-sent events. Nothing is sent before the job's first event,
    so the runtime's checks of the arguments (raised before any token) still become a 400.

    A generation that ends "cancelled" while its client is still connected was stopped by the server's
    shutdown (a client that leaves takes its response down with it): it is answered 503."""

    def __init__(self, job: Job, answer: _Answer):
        self.job = job
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tasks:
                async def watch() -> None:
                    # The body has been read: the next message is the disconnect, whenever it comes.
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    self.job.cancel.set()
                    tasks.cancel_scope.cancel()

                tasks.start_soon(watch)
                if self.job.stream:
                    await self._stream(scope, receive, send)
                else:
                    await self._whole(scope, receive, send)
                tasks.cancel_scope.cancel()
        except OSError:     # ASGI 2.4 servers raise it from send() once the client has gone
            pass
        finally:
            # However the response ended (answered, the client gone, the task cancelled at shutdown), the
            # generation has nobody left to serve.
            self.job.cancel.set()

    @staticmethod
    async def _error(scope: Scope, receive: Receive, send: Send, exc: BaseException) -> None:
        error = from_exception(exc)
        await JSONResponse(error.body(), error.status)(scope, receive, send)

    async def _whole(self, scope: Scope, receive: Receive, send: Send) -> None:
        event = await self.job.events.get()      # no chunks: the job does not stream
        if isinstance(event, GenerateResult) and event.finish_reason == "cancelled":
            event = shutting_down()
        if isinstance(event, BaseException):
            await self._error(scope, receive, send, event)
        else:
            await JSONResponse(self.answer.response(event))(scope, receive, send)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        event = await self.job.events.get()
        if isinstance(event, BaseException):
            await self._error(scope, receive, send, event)
            return

        async def body(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        for obj in self.answer.opening():
            await body(_sse(obj))
        while True:
            if isinstance(event, StreamChunk):
                obj = self.answer.delta(event)
                if obj is not None:
                    await body(_sse(obj))
            elif isinstance(event, GenerateResult) and event.finish_reason != "cancelled":
                for obj in self.answer.closing(event):
                    await body(_sse(obj))
                break
            else:            # failed mid-stream: the status is sent already, so the error is an event
                error = shutting_down() if isinstance(event, GenerateResult) else from_exception(event)
                await body(_sse(error.body()))
                break
            event = await self.job.events.get()
        await body(b"data: [DONE]\n\n")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# ---- request counting ----

class _CountRequests:
    """ASGI middleware: counts each HTTP request by endpoint and status code. A request that ends with no
    response sent counts as 499 (the client closed it) or, when it raised, 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: frozenset):
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status: Optional[int] = None

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            if status is None:
                status = 500
            raise
        finally:
            self.metrics.count_request(endpoint, 499 if status is None else status)


# ---- endpoints ----

def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


async def _json_body(request: Request) -> JSON:
    raw = await request.body()
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:   # UnicodeDecodeError is a ValueError too
        raise invalid(f"the request body is not valid JSON: {e}", None, "invalid_json") from None


class _Service:
    def __init__(self, model, model_name: str, scheduler: Scheduler, metrics: Metrics):
        self.model = model
        self.model_name = model_name
        self.scheduler = scheduler
        self.metrics = metrics
        self.created = int(time.time())

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "tridecode"}]})

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def completions(self, request: Request) -> _GenerationResponse:
        req = parse_completion(await _json_body(request), self.model_name)
        return self._submit(req, _CompletionAnswer)

    async def chat(self, request: Request) -> _GenerationResponse:
        req = parse_chat(await _json_body(request), self.model_name)
        return self._submit(req, _ChatAnswer)

    def _submit(self, req: GenerationRequest, answer: Callable[..., _Answer]) -> _GenerationResponse:
        job = Job(self._runner(req), req.stream)
        self.scheduler.submit(job)
        return _GenerationResponse(job, answer(self.model, self.model_name, req))

    def _runner(self, req: GenerationRequest) -> Runner:
        model, kwargs = self.model, dict(req.kwargs, logprobs=req.logprobs)
        if req.messages is not None:
            messages = req.messages
            return lambda on_chunk, cancel: model.chat(messages, on_chunk=on_chunk, cancel=cancel, **kwargs)
        prompt = req.prompt
        return lambda on_chunk, cancel: model.generate(prompt, on_chunk=on_chunk, cancel=cancel, **kwargs)


# ---- exception handlers ----

async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    """The router's 404 and 405, in the OpenAI error format."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        body = error_body(f"no route {request.method} {request.url.path}", "not_found_error", code="not_found")
    else:
        body = error_body(str(exc.detail), "invalid_request_error", code=f"http_{exc.status_code}")
    return JSONResponse(body, exc.status_code, headers=exc.headers)


async def _client_disconnect(request: Request, exc: Exception) -> Response:
    """The client left while its request body was being read: nothing can be answered."""
    return Response(status_code=499)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises the exception after this response, so the server logs its traceback.
    return JSONResponse(internal_error(exc).body(), 500)


def create_app(model, model_name: str, queue_size: int = 16) -> Starlette:
    """The OpenAI-compatible application serving `model` (a tridecode.Model) as `model_name`.

    queue_size: requests that may wait for the model while one runs; one more is answered 503.
    `app.state.scheduler.close()` ends the generations in flight (answered 503) and stops the worker; the
    lifespan's shutdown does it too, but only after the server has waited for the open connections.
    """
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
    scheduler = Scheduler(queue_size)
    metrics = Metrics(queue_length=scheduler.length)
    scheduler.metrics = metrics
    service = _Service(model, model_name, scheduler, metrics)
    routes = [
        Route("/health", service.health, methods=["GET"]),
        Route("/v1/models", service.models, methods=["GET"]),
        Route("/v1/completions", service.completions, methods=["POST"]),
        Route("/v1/chat/completions", service.chat, methods=["POST"]),
        Route("/metrics", service.prometheus, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await anyio.to_thread.run_sync(scheduler.close)

    app = Starlette(
        routes=routes,
        middleware=[Middleware(_CountRequests, metrics=metrics, endpoints=frozenset(r.path for r in routes))],
        exception_handlers={APIError: _api_error, HTTPException: _http_error, ClientDisconnect: _client_disconnect,
                            Exception: _internal_error},
        lifespan=lifespan)
    app.state.scheduler = scheduler
    return app
