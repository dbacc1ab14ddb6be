"""The ``bignode`` benchmark part runs (--quick: 5,000 blocks) and prints well-formed JSON (targets not checked)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIELDS = {"name", "value", "unit", "baseline", "baseline_unit", "ratio", "target", "met"}


def test_bignode_part_reports_startup_rss_and_getblock_latency_with_baselines() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "bignode", "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert isinstance(figures, list) and all(set(f) == FIELDS for f in figures)
    by_name = {f["name"]: f for f in figures}
    assert set(by_name) == {"bignode.startup_5000_blocks", "bignode.rss_5000_blocks",
                            "bignode.getblock_v1.median", "bignode.getblock_v1.p99",
                            "bignode.getblock_v2.median", "bignode.getblock_v2.p99"}
    for f in figures:
        assert f["value"] > 0 and f["baseline"] > 0 and f["ratio"] > 0
    assert by_name["bignode.startup_5000_blocks"]["unit"] == "s"
    assert by_name["bignode.rss_5000_blocks"]["unit"] == "MB"
    assert by_name["bignode.getblock_v1.median"]["unit"] == "ms"
    assert all(isinstance(by_name[n]["met"], bool) for n in ("bignode.startup_5000_blocks", "bignode.rss_5000_blocks",
                                                             "bignode.getblock_v1.median"))
