"""The per-core benchmark parts (codec, ingest, admission, apply) run in quick mode and print well-formed JSON.

Their figures are not checked against the targets here: machines are noisy.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIELDS = {"name", "value", "unit", "baseline", "baseline_unit", "ratio", "target", "met"}
EXPECTED = {
    "codec": {"codec.decode.tx", "codec.encode.vote", "codec.decode.block_1000tx", "codec.tx_verify_signature"},
    "ingest": {"ingest.votes_4_validators", "ingest.votes_100_validators"},
    "admission": {"admission.tx"},
    "apply": {"apply.block_1000tx_cold"},
}


@pytest.mark.parametrize("part", sorted(EXPECTED))
def test_quick_part_prints_figures_with_baselines(part: str) -> None:
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", part, "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert isinstance(figures, list) and figures
    assert all(set(f) == FIELDS for f in figures)
    names = {f["name"] for f in figures}
    assert EXPECTED[part] <= names
    for f in figures:
        assert f["value"] > 0
        assert f["baseline"] is not None and f["baseline"] > 0
        assert f["ratio"] == pytest.approx(f["value"] / f["baseline"], rel=1e-2)
        if part != "codec":
            assert f["target"] is not None and isinstance(f["met"], bool)
