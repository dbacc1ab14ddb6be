"""The ``sync`` benchmark part runs (``--quick``) and prints well-formed JSON (targets are not checked:
machines are noisy)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIELDS = {"name", "value", "unit", "baseline", "baseline_unit", "ratio", "target", "met"}
NAMES = {"sync.empty.blocks_per_s", "sync.empty.vs_verify", "sync.tx100.tx_per_s", "sync.verify_threads_speedup",
         "sync.empty.blocks_per_reactor_cpu_s", "sync.tx100.tx_per_reactor_cpu_s"}


def test_sync_part_quick_run_prints_its_figures_as_json() -> None:
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "sync", "--quick", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert isinstance(figures, list) and all(set(f) == FIELDS for f in figures)
    by_name = {f["name"]: f for f in figures}
    assert set(by_name) == NAMES
    assert all(f["value"] > 0 for f in figures)
    for name in ("sync.empty.vs_verify", "sync.tx100.tx_per_s"):
        assert by_name[name]["baseline"] > 0 and by_name[name]["ratio"] > 0
    assert by_name["sync.empty.blocks_per_s"]["target"] and by_name["sync.tx100.tx_per_s"]["target"]
    assert isinstance(by_name["sync.tx100.tx_per_s"]["met"], bool)
