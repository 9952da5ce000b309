"""Runs fuzz cases in worker subprocesses and classifies each: loaded / ok, clean error, other exception,
crash by signal, hang by timeout.

    python tests/fuzz/run.py --kind checkpoint --cases 100000 --seed 7 [--workers 2] [--timeout 30]
    python tests/fuzz/run.py --kind api --cases 20000 --seed 7

Cases are deterministic: (kind, seed, index) always builds the same input, so a reported index
reproduces with `--first INDEX --cases 1`. Exits 1 when any case crashed, hung or raised an unclean
exception, listing them."""

from __future__ import annotations

import argparse
import collections
import json
import os
import select
import subprocess
import sys
import threading
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
BAD = ("unclean", "crash", "hang")


@dataclass
class Report:
    counts: collections.Counter = field(default_factory=collections.Counter)
    bad: list = field(default_factory=list)    # (index, outcome, description, detail)

    def add(self, i, outcome, desc="", detail=""):
        self.counts[outcome] += 1
        if outcome in BAD:
            self.bad.append((i, outcome, desc, detail))


class Worker:
    def __init__(self, kind: str, seed: int):
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        env.pop("TRIDECODE_REQUIRE_CUDA", None)
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "worker.py"), kind, str(seed)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, bufsize=1)
        self._stderr = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self._stderr.append(line)
            del self._stderr[:-20]

    def run(self, i: int, timeout: float):
        """(outcome, description, detail) of case i; a crash or hang leaves the worker dead."""
        try:
            self.proc.stdin.write(f"{i}\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._died()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            return "hang", "", f"no answer in {timeout:g} s"
        line = self.proc.stdout.readline()
        if not line:
            return self._died()
        r = json.loads(line)
        return r["outcome"], r["desc"], r["detail"]

    def _died(self):
        rc = self.proc.wait()
        tail = "".join(self._stderr)[-1500:]
        if rc < 0:
            return "crash", "", f"killed by signal {-rc}: {tail}"
        return "crash", "", f"exited with status {rc}: {tail}"

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()


def run(kind: str, seed: int, cases: int, first: int = 0, workers: int = 2, timeout: float = 30.0) -> Report:
    report = Report()
    lock = threading.Lock()
    todo = list(range(first, first + cases))

    def drive(share):
        w = Worker(kind, seed)
        for i in share:
            outcome, desc, detail = w.run(i, timeout)
            with lock:
                report.add(i, outcome, desc, detail)
            if outcome in ("crash", "hang"):
                w = Worker(kind, seed)
        w.close()

    threads = [threading.Thread(target=drive, args=(todo[k::workers],)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.bad.sort()
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=["checkpoint", "api", "selftest"], required=True)
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first", type=int, default=0, help="index of the first case")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a case may take before it counts as a hang")
    a = p.parse_args(argv)
    report = run(a.kind, a.seed, a.cases, a.first, a.workers, a.timeout)
    print(f"{a.kind} fuzz, seed {a.seed}, cases {a.first}..{a.first + a.cases - 1}: " +
          ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items())))
    for i, outcome, desc, detail in report.bad:
        print(f"  #{i} {outcome}: {desc}\n      {detail}")
    return 1 if report.bad else 0


if __name__ == "__main__":
    sys.exit(main())
