"""Server metrics in the Prometheus text exposition format (version 0.0.4).

Updated from the event loop (requests) and the worker thread (generations), hence the lock.
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Dict, List, Tuple

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Upper bounds (seconds) of the time-per-output-token histogram's buckets; +Inf is added.
TPOT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(int(v)) if float(v).is_integer() else repr(float(v))


class Metrics:
    def __init__(self, queue_length: Callable[[], int]):
        self._lock = threading.Lock()
        self._queue_length = queue_length
        self._requests: Dict[Tuple[str, str], int] = {}
        self._cancelled = 0
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._forwards = 0
        self._accepted_sum = 0
        self._accepted_count = 0
        self._tpot_buckets = [0] * len(TPOT_BUCKETS)   # per bucket, not cumulative
        self._tpot_sum = 0.0
        self._tpot_count = 0

    def count_request(self, endpoint: str, status: int) -> None:
        key = (endpoint, str(status))
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1

    def count_cancelled(self) -> None:
        with self._lock:
            self._cancelled += 1

    def observe_generation(self, prompt_tokens: int, tokens: int, forwards: int, seconds: float,
                           accepted_per_cycle: List[int] | None) -> None:
        with self._lock:
            self._prompt_tokens += prompt_tokens
            self._generation_tokens += tokens
            self._forwards += forwards
            if accepted_per_cycle:
                self._accepted_sum += sum(accepted_per_cycle)
                self._accepted_count += len(accepted_per_cycle)
            if tokens:
                tpot = seconds / tokens
                for i, bound in enumerate(TPOT_BUCKETS):
                    if tpot <= bound:
                        self._tpot_buckets[i] += 1
                        break
                self._tpot_sum += tpot
                self._tpot_count += 1

    def render(self) -> str:
        lines: List[str] = []

        def family(name: str, kind: str, help: str) -> None:
            lines.append(f"# HELP {name} {help}")
            lines.append(f"# TYPE {name} {kind}")

        def sample(name: str, value: float, labels: Dict[str, str] | None = None) -> None:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in (labels or {}).items())
            lines.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")

        with self._lock:
            family("tridecode_requests_total", "counter", "HTTP requests answered, by endpoint and status code.")
            for (endpoint, status), n in sorted(self._requests.items()):
                sample("tridecode_requests_total", n, {"endpoint": endpoint, "status": status})
            family("tridecode_requests_cancelled_total", "counter",
                   "Generations stopped or skipped because their client disconnected (or the server stopped).")
            sample("tridecode_requests_cancelled_total", self._cancelled)
            family("tridecode_prompt_tokens_total", "counter", "Prompt tokens of the generations run.")
            sample("tridecode_prompt_tokens_total", self._prompt_tokens)
            family("tridecode_generation_tokens_total", "counter", "Tokens generated.")
            sample("tridecode_generation_tokens_total", self._generation_tokens)
            family("tridecode_forwards_total", "counter", "Model forwards run, prefills included.")
            sample("tridecode_forwards_total", self._forwards)
            family("tridecode_accepted_tokens_per_cycle", "summary",
                   "Tokens emitted per self-speculation cycle (draft and verify).")
            sample("tridecode_accepted_tokens_per_cycle_sum", self._accepted_sum)
            sample("tridecode_accepted_tokens_per_cycle_count", self._accepted_count)
            family("tridecode_queue_length", "gauge", "Requests waiting for the model or running on it.")
            sample("tridecode_queue_length", self._queue_length())
            family("tridecode_time_per_output_token_seconds", "histogram",
                   "Generation seconds per output token, one observation per generation.")
            cumulative = 0
            for bound, n in zip(TPOT_BUCKETS, self._tpot_buckets):
                cumulative += n
                sample("tridecode_time_per_output_token_seconds_bucket", cumulative, {"le": _number(bound)})
            sample("tridecode_time_per_output_token_seconds_bucket", self._tpot_count, {"le": "+Inf"})
            sample("tridecode_time_per_output_token_seconds_sum", self._tpot_sum)
            sample("tridecode_time_per_output_token_seconds_count", self._tpot_count)
        return "\n".join(lines) + "\n"
