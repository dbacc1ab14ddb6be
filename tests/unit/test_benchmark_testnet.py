"""The ``testnet`` and ``load`` benchmark parts run (--quick) and print well-formed JSON.

The figures' targets are not checked (machines are noisy): only the shape, and that each value is real.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIELDS = {"name", "value", "unit", "baseline", "baseline_unit", "ratio", "target", "met"}


def _run_part(name: str) -> dict[str, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", name, "--quick", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout)
    assert isinstance(figures, list) and figures
    for f in figures:
        assert set(f) == FIELDS, f
        assert f["value"] > 0, f
        if f["baseline"] is not None:
            assert f["baseline"] > 0 and f["ratio"] is not None, f
        assert (f["target"] is None) == (f["met"] is None), f
    return {f["name"]: f for f in figures}


def test_testnet_part_reports_heights_and_commit_intervals() -> None:
    figures = _run_part("testnet")
    assert set(figures) == {"testnet.heights_per_s", "testnet.commit_interval_median", "testnet.commit_interval_p99",
                            "testnet.single_node_heights_per_s"}
    assert figures["testnet.heights_per_s"]["unit"] == "heights/s"
    assert figures["testnet.heights_per_s"]["baseline_unit"] == "fsynced LMDB commits/s"
    assert figures["testnet.commit_interval_median"]["value"] <= figures["testnet.commit_interval_p99"]["value"]


def test_load_part_reports_throughput_latency_and_the_generator_ceiling() -> None:
    figures = _run_part("load")
    assert set(figures) == {"load.finalized_tx_per_s", "load.latency_p50", "load.latency_p99",
                            "load.submitted_tx_per_s", "load.finalized_fraction", "load.generator_max_tx_per_s"}
    assert figures["load.latency_p50"]["value"] <= figures["load.latency_p99"]["value"]
    assert 0 < figures["load.finalized_fraction"]["value"] <= 1
