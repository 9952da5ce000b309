"""The fuzzers of tests/fuzz/ with a fixed seed: a few thousand mutated checkpoints and API calls, each in a
worker subprocess, and none may crash, hang or raise anything but a clean error. Run more with
`python tests/fuzz/run.py --kind checkpoint|api --cases N --seed S`."""

import random

from fuzz import cases, run


def _check(report, kind, ok_outcome):
    assert not report.bad, "\n".join(f"#{i} {o}: {d}\n    {x}" for i, o, d, x in report.bad[:20])
    # the fuzzer must exercise both sides: inputs that load / work and inputs that are refused
    assert report.counts[ok_outcome] > 0.05 * sum(report.counts.values()), report.counts
    assert report.counts["clean"] > 0.3 * sum(report.counts.values()), report.counts


def test_checkpoint_fuzz():
    _check(run.run("checkpoint", seed=0, cases=3000, workers=2, timeout=60), "checkpoint", "loaded")


def test_api_fuzz():
    _check(run.run("api", seed=0, cases=3000, workers=2, timeout=60), "api", "ok")


def test_the_runner_sees_crashes_hangs_and_unclean_exceptions():
    report = run.run("selftest", seed=0, cases=5, workers=1, timeout=5)
    assert [(i, o) for i, o, *_ in report.bad] == [(1, "crash"), (2, "hang"), (3, "unclean")]
    assert "signal 11" in report.bad[0][3] and "KeyError" in report.bad[2][3]
    assert report.counts["ok"] == 2


def test_cases_are_deterministic(tmp_path):
    a = [cases.api_case(random.Random(f"api:5:{i}"), {"model": None, "dir": "d", "lora": "l", "config": {}})[0]
         for i in range(50)]
    b = [cases.api_case(random.Random(f"api:5:{i}"), {"model": None, "dir": "d", "lora": "l", "config": {}})[0]
         for i in range(50)]
    assert a == b and len(set(a)) > 40
