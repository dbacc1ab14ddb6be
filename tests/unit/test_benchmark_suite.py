"""The benchmark suite runs and prints well-formed JSON (its figures are not checked here: machines are noisy)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIELDS = {"name", "value", "unit", "baseline", "baseline_unit", "ratio", "target", "met"}


def test_hostile_part_quick_run_prints_one_json_list_of_figures() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "hostile", "--quick", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert isinstance(figures, list) and figures
    names = {f["name"] for f in figures}
    assert all(set(f) == FIELDS for f in figures)
    assert "hostile.far_future_vote.cpu_per_msg" in names
    assert "hostile.sync_one_liar_of_three.late_blocks" in names
    for f in figures:
        if f["ratio"] is not None:
            assert f["baseline"] > 0 and f["value"] >= 0


def test_rpc_part_quick_run_reports_both_methods_against_its_baseline() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "rpc", "--quick", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = {f["name"]: f for f in json.loads(proc.stdout)}
    assert set(figures) == {"rpc.getblockcount", "rpc.sendrawtransaction"}
    assert all(f["value"] > 0 and f["baseline"] > 0 and f["unit"] == "requests/s" for f in figures.values())


def test_sim_part_quick_run_reports_the_simulator_speed() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "sim", "--quick", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = {f["name"]: f for f in json.loads(proc.stdout)}
    assert set(figures) == {"sim 4 nodes"}
    assert figures["sim 4 nodes"]["value"] > 1 and figures["sim 4 nodes"]["unit"] == "simulated heights/real s"


def test_an_unknown_part_is_a_usage_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nonesuch"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
