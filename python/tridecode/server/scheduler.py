"""One worker thread runs the requests on the model, one at a time, from a bounded queue.

The model runs one generation at a time anyway (its calls serialize on `model.lock`); a single worker
keeps the event loop free, makes the waiting line explicit (bounded, so an overloaded server answers 503
at once instead of piling up work) and lets a request whose client left be skipped before it starts.

A job's results travel back to the event loop through an asyncio.Queue fed with call_soon_threadsafe:
StreamChunks as the generation commits text, then the GenerateResult, or the exception it raised.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Callable, Optional, Union

from ..result import GenerateResult, StreamChunk
from .errors import APIError, shutting_down
from .metrics import Metrics

log = logging.getLogger("tridecode.server")

#: What a job reports to the event loop.
Event = Union[StreamChunk, GenerateResult, BaseException]

#: Runs the generation: run(on_chunk, cancel) -> GenerateResult.
Runner = Callable[[Optional[Callable[[StreamChunk], None]], threading.Event], GenerateResult]


class Job:
    """One request's generation. Created on the event loop thread; run on the worker thread."""

    def __init__(self, run: Runner, stream: bool):
        self.run = run
        self.stream = stream               # report StreamChunks, not only the result
        self.cancel = threading.Event()    # set when the client leaves: the generation stops at the next forward
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()

    def post(self, event: Event) -> None:
        """Hands an event to the event loop (from any thread)."""
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:               # the loop has closed: the server is gone, nobody is listening
            pass


class Scheduler:
    def __init__(self, queue_size: int, metrics: Optional[Metrics] = None):
        """queue_size: jobs that may wait while one runs. metrics: where generations are counted (settable
        later as `.metrics`)."""
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive integer, got {queue_size!r}")
        self.metrics = metrics
        self._queue: queue.Queue[Optional[Job]] = queue.Queue(maxsize=queue_size)
        self._running: Optional[Job] = None
        self._closing = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="tridecode-worker", daemon=True)
        self._thread.start()

    def length(self) -> int:
        """Requests waiting or running."""
        return self._queue.qsize() + (self._running is not None)

    def submit(self, job: Job) -> None:
        """Queues the job, or raises a 503 APIError when the waiting line is full or the server stops."""
        if self._closing:
            raise shutting_down()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise APIError(503, f"the server is busy: {self._queue.maxsize} requests are already waiting; "
                                "retry later", type="server_overloaded", code="server_overloaded") from None

    def close(self, timeout: float = 10.0) -> None:
        """Stops the worker (blocking, about one forward): the running generation is cancelled, and the
        waiting jobs are answered 503. Later calls do nothing."""
        with self._close_lock:
            if self._closing:
                return
            self._closing = True
        running = self._running
        if running is not None:
            running.cancel.set()
        # Blocks at most until the worker takes the next job: it turns every job down from now on.
        self._queue.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            # Marked running before the checks: a concurrent close() either finds it here and cancels it,
            # or has set _closing before the check below.
            self._running = job
            last = None
            try:
                if self._closing:
                    last = shutting_down()
                elif job.cancel.is_set():  # the client left while the job waited
                    if self.metrics is not None:
                        self.metrics.count_cancelled()
                else:
                    last = self._run(job)
            finally:
                self._running = None
            # Posted once the job no longer counts as running: a client that has its answer and then reads
            # /metrics sees the queue without it.
            if last is not None:
                job.post(last)

    def _run(self, job: Job) -> Event:
        """Runs the job (streaming its chunks); returns its last event: the result or the exception."""
        try:
            result = job.run(job.post if job.stream else None, job.cancel)
        except Exception as e:             # reported to the client; bad-argument errors are the usual ones
            if not isinstance(e, (ValueError, TypeError)):
                log.exception("generation failed")
            return e
        # Metrics first, so that they include this generation once its client has the answer.
        if self.metrics is not None:
            self.metrics.observe_generation(result.prompt_tokens, len(result.tokens), result.forwards,
                                            result.seconds, result.accepted_per_cycle)
            if result.finish_reason == "cancelled":
                self.metrics.count_cancelled()
        return result
