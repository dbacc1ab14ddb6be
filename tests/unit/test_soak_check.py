"""The soak verdict (timecoin.chaos.soakcheck) on crafted samples and logs: each check can fail.

A leaking RSS series, fds that are never given back, LMDB growth per block that itself grows, a chain that
stops, a planted ERROR line or traceback, and a Byzantine peer some node did not ban: each is a problem;
flat series, WARNING lines and a ban everywhere are not.
"""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from timecoin.chaos.soakcheck import (
    Limits,
    Sample,
    bad_line,
    check_finality,
    check_lmdb,
    check_resources,
    judge,
    samples_table,
    scan_log,
    slope,
)

LIMITS = Limits(warmup=120.0)
MB = 1024                  # kB


def series(node: str = "node0", minutes: int = 10, rss_mb: float = 80.0, rss_per_min: float = 0.0,
           fds: int = 20, fd_per_min: float = 0.0, used_per_block: float = 20_000.0, used_growth: float = 0.0,
           blocks_per_min: int = 120, pid: int = 100) -> list[Sample]:
    out = []
    used = 1_000_000.0
    for i in range(minutes + 1):
        per_block = used_per_block + used_growth * i
        if i:
            used += per_block * blocks_per_min
        rss = int((rss_mb + rss_per_min * i) * MB)
        out.append(Sample(60.0 * i, node, pid, rss + 40 * MB + i * MB, rss, int(fds + fd_per_min * i),
                          int(used * 1.5), int(used), 2 + blocks_per_min * i))
    return out


def test_slope_is_least_squares() -> None:
    assert slope([(0, 1), (1, 3), (2, 5)]) == pytest.approx(2.0)
    assert slope([(0, 5), (1, 4), (2, 6), (3, 5)]) == pytest.approx(0.2)
    assert slope([(1, 2)]) == 0.0 and slope([(1, 2), (1, 3)]) == 0.0


def test_flat_series_pass_and_noise_in_the_warmup_is_not_judged() -> None:
    s = series()
    s[0] = Sample(0.0, "node0", 100, 50 * MB, 40 * MB, 10, 0, 0, 2)     # start-up: heap and fds still filling
    problems, figures = check_resources(s, LIMITS)
    assert problems == [] and figures["anon_mb_per_min"] == 0.0 and figures["fds_start"] == 10
    assert figures["vmrss_mb_per_min"] == pytest.approx(1.0)     # the mapped LMDB pages: not judged


def test_a_leaking_rss_series_fails() -> None:
    problems, figures = check_resources(series(rss_per_min=1.5), LIMITS)
    assert figures["anon_mb_per_min"] == pytest.approx(1.5, abs=0.01)
    assert len(problems) == 1 and "RssAnon grows 1.50 MB/min" in problems[0]


def test_leaking_fds_fail_by_slope_and_by_end_count() -> None:
    problems, _ = check_resources(series(fd_per_min=2.0), LIMITS)
    assert any("open fds grow" in p for p in problems) and any("open fds at the end" in p for p in problems)


def test_too_few_samples_after_the_warmup_is_a_problem_not_a_pass() -> None:
    problems, _ = check_resources(series(minutes=3), LIMITS)
    assert problems and "need 3 to judge" in problems[0]


def test_lmdb_growth_per_block_flat_passes_and_growing_fails() -> None:
    assert check_lmdb(series(), LIMITS)[0] == []
    problems, figures = check_lmdb(series(used_growth=40_000.0), LIMITS)
    assert problems and "bytes per block" in problems[0]
    assert figures["bytes_per_block_second"] > 1.5 * figures["bytes_per_block_first"]


def test_a_chain_that_stops_or_a_node_left_behind_fails() -> None:
    good = {"node0": series("node0"), "node1": series("node1")}
    assert check_finality(good, LIMITS) == []
    stalled = [s if s.at < 300 else replace(s, height=600) for s in series("node0")]
    behind = [s if s.at < 600 else replace(s, height=5) for s in series("node1", blocks_per_min=0)]
    problems = check_finality({"node0": stalled, "node1": behind}, LIMITS)
    assert any("no node finalized" in p for p in problems)
    assert any("node1 ends at height 5" in p for p in problems)


def event(level: str, text: str, **extra: object) -> str:
    return json.dumps({"log_level": {"name": level, "__class_uuid__": "02e59486-f24d-46ad-8224-3acdf2a5732a"},
                       "log_namespace": "timecoin.test", "log_format": text, "log_time": 1.0, **extra})


def test_the_log_check_finds_a_planted_error_and_tracebacks_but_not_warnings() -> None:
    lines = [event("info", "Connected"), event("warn", "Banned peer X: reputation -55 after MALFORMED_FRAME"),
             "2026-12-03T14:00:00 [timecoin] a text line at info\n"]
    assert scan_log(lines, "node0") == []
    assert bad_line(event("error", "Commit failed at height {h}", h=7)) == \
        "[error] timecoin.test: Commit failed at height 7"
    assert bad_line(event("info", "x", log_failure={"unpersistable": True})) is not None
    assert bad_line(event("critical", "boom")) is not None
    assert bad_line("Traceback (most recent call last):") is not None
    assert bad_line("2026-12-03 [-] Unhandled Error") is not None
    assert bad_line("2026-12-03 [-] ERROR something") is not None
    problems = scan_log([*lines, event("error", "planted")] * 12, "node1")
    assert problems[0] == "node1 log: [error] timecoin.test: planted" and problems[-1].endswith("2 more such line(s)")


def test_judge_passes_a_clean_run_and_names_every_failure() -> None:
    samples = series("node0") + series("node1") + series("node3", rss_per_min=9.0, pid=7)
    clean = judge(samples, {"node0": [event("info", "ok")]}, {"node0": True, "node1": True, "node3": True},
                  LIMITS, steady=["node0", "node1"])
    assert clean.passed, clean.problems                        # node3 (churned) is not judged for slopes
    assert clean.figures["node3"]["restarts"] == 0 and "anon_mb_per_min" in clean.figures["node0"]
    bad = judge(series("node0", rss_per_min=2.0), {"node0": [event("error", "planted")]}, {"node0": False},
                LIMITS, steady=["node0"])
    assert not bad.passed and len(bad.problems) == 3
    assert not judge(series("node0"), {}, {}, LIMITS, steady=["node0"]).passed     # ban unreadable: a failure
    restarted = series("node0")[:5] + series("node0", pid=101)[5:]
    assert any("pids" in p for p in judge(restarted, {}, {"node0": True}, LIMITS, steady=["node0"]).problems)
    assert "rss MB" in samples_table(samples).splitlines()[0]
