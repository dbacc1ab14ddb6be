"""``timecoin bench load``: argument errors are one line; a short real run reports sane numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timecoin.bench.load import LoadError, LoadSettings, percentile, presign
from timecoin.bench.localnet import LocalNet
from timecoin.crypto import PrivateKey

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "timecoin", "bench", "load", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(("args", "message"), [
    (("--rate", "0", "--duration", "1", "--config", "x"), "--rate: must be a positive number, not 0"),
    (("--rate", "fast", "--duration", "1", "--config", "x"), "--rate: 'fast' is not a number"),
    (("--rate", "10", "--duration", "-1", "--config", "x"), "--duration: must be a positive number"),
    (("--rate", "10", "--duration", "1"), "give exactly one of --config FILE"),
    (("--rate", "10", "--duration", "1", "--config", "a", "--testnet-dir", "b"), "give exactly one of --config"),
    (("--rate", "1000000", "--duration", "100", "--testnet-dir", "b"), "at most 2,000,000"),
    (("--rate", "10", "--duration", "1", "--connections", "0", "--testnet-dir", "b"), "--connections must be"),
])
def test_argument_errors_are_one_line(args: tuple[str, ...], message: str) -> None:
    proc = _cli(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in proc.stderr, proc.stderr


def test_no_testnet_in_the_folder_is_one_line(tmp_path: Path) -> None:
    proc = _cli("--rate", "10", "--duration", "1", "--testnet-dir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"timecoin: error: no testnet in {tmp_path} (no genesis.json and "
                                                "node*/timecoin.conf); give --nodes N to write one"]


def test_settings_defaults_and_presigned_lanes_keep_each_sender_in_one_lane() -> None:
    settings = LoadSettings(rate=3000, duration=10)
    settings.check()
    assert settings.sender_count() == 750 and settings.batch_size(4) == 37
    with pytest.raises(LoadError, match="--rate must be positive"):
        LoadSettings(rate=0, duration=1).check()
    keys = [PrivateKey.generate() for _ in range(6)]
    plan = presign(keys, [5] * 6, 30, 1_000, "chain", lanes=3, batch=4)
    assert [sum(len(b.txids) for b in lane) for lane in plan] == [10, 10, 10]
    first = json.loads(plan[0][0].body)
    assert [c["id"] for c in first] == [0, 1, 2, 3] and first[0]["method"] == "sendrawtransaction"
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0 and percentile([], 0.99) == 0.0


def test_a_short_run_against_a_one_node_testnet_reports_sane_numbers(tmp_path: Path) -> None:
    net = LocalNet(str(tmp_path / "net"), 1)
    try:
        net.start()
        net.wait_height(2, 60.0)
        proc = _cli("--rate", "40", "--duration", "1.5", "--testnet-dir", str(tmp_path / "net"), "--json",
                    timeout=120.0)
    finally:
        codes = net.stop()
    assert proc.returncode == 0, proc.stderr
    assert codes == {"node0": 0}
    report = json.loads(proc.stdout)
    assert report["submitted"] == 60 and report["rejected"] == 0 and report["finalized"] == 60
    assert report["nodes"] == 1 and report["blocks"] >= 1 and 1 <= report["largest_block_txs"] <= 60
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 30_000
    assert report["finalized_tx_per_s"] > 0 and report["submit_tx_per_s"] > 0 and report["unsent"] == 0
