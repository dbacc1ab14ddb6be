"""A short soak (``python -m timecoin.chaos.soak``) end to end: 75 s, a sample every 15 s (issue 16, soak).

Four real ``twistd`` validators under load, node3 restarted every 30 s and the Byzantine peer process: the
run must pass, sample every node every interval, see the chain grow, end with the Byzantine peer banned by
all four (its junk frame delivered to each) and read the nodes' real JSON logs -- in which one planted
error event, written by Twisted's own JSON observer, must be found. The RSS bound is loosened for so short
a run (the first minutes are warm-up: caches and tables fill); ``tox -e soak`` runs 10 minutes at the
default bounds. The slope checks themselves fail on leaking series in tests/unit/test_soak_check.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.logger import Logger

from timecoin.chaos.soakcheck import scan_log
from timecoin.logs import json_observer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_passes_and_its_checks_read_the_real_logs(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    net = tmp_path / "soak"
    res = subprocess.run([sys.executable, "-m", "timecoin.chaos.soak", "--minutes", "1.25", "--interval", "15",
                          "--churn-every", "30", "--rate", "50", "--provable-after", "35",
                          "--rss-mb-per-min", "60", "--dir", str(net), "--json"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.stdout, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["passed"] and res.returncode == 0, (report["problems"], res.stderr[-3000:])

    samples = report["samples"]
    times = sorted({s["at"] for s in samples})
    assert len(times) == 6 and all(sum(1 for s in samples if s["at"] == t) == 4 for t in times)
    assert all(s["rss_kb"] > 10_000 and s["fds"] > 5 and s["used_bytes"] > 0 for s in samples)
    assert max(s["height"] for s in samples if s["at"] == times[-1]) > \
        max(s["height"] for s in samples if s["at"] == times[0]) + 20
    figures = report["figures"]
    assert figures["node3"]["restarts"] == 2 and "anon_mb_per_min" in figures["node0"]
    assert report["load"]["finalized"] > 1000
    byz = report["byzantine"]["nodes"]
    assert set(byz) == {"node0", "node1", "node3", "node2"}
    assert all(c["junk_frames"] == 1 and c["far_votes"] > 20 and c["refused"] >= 1 for c in byz.values())

    log = net / "node0" / "node.log"
    assert scan_log(log.read_text().splitlines(), "node0") == []
    with open(log, "a", encoding="utf-8") as f:
        Logger(namespace="timecoin.planted", observer=json_observer(f)).error("planted failure at {h}", h=7)
    assert scan_log(log.read_text().splitlines(), "node0") == \
        ["node0 log: [error] timecoin.planted: planted failure at 7"]
