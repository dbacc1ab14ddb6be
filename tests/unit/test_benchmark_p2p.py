"""The ``p2p`` and ``tls`` benchmark parts run (--quick) and print well-formed JSON (targets not checked)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIELDS = {"name", "value", "unit", "baseline", "baseline_unit", "ratio", "target", "met"}


def _run(*parts: str) -> dict[str, dict]:
    args = [a for p in parts for a in ("--only", p)]
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *args, "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert isinstance(figures, list) and all(set(f) == FIELDS for f in figures)
    return {f["name"]: f for f in figures}


def test_p2p_and_tls_parts_report_round_trips_and_rates_against_raw_tls() -> None:
    figures = _run("tls", "p2p")
    assert set(figures) >= {"baseline.tls_rtt_100B.median", "baseline.tls_rtt_100B.p99", "baseline.tls_messages_138B",
                            "p2p.ping_rtt_100B.median", "p2p.ping_rtt_100B.p99"}
    assert all(f["value"] > 0 for f in figures.values())
    rtt = figures["p2p.ping_rtt_100B.median"]
    assert rtt["unit"] == "us" and rtt["baseline"] > 0 and rtt["target"] == "ratio <= 1.5"
    assert isinstance(rtt["met"], bool)
    rates = [f for name, f in figures.items() if name.startswith("p2p.stale_vote_")]
    assert len(rates) == 1 and rates[0]["unit"] == "messages/s" and rates[0]["baseline"] > 0
