"""End to end: four real ``twistd`` processes from ``timecoin testnet --nodes 4`` on 127.0.0.1.

All finalize the same hashes; with one killed by SIGKILL the other three keep finalizing; with two
killed nothing more is finalized and nothing conflicts; restarted, they rejoin and agree.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ports import TWISTD, free_port_block

pytestmark = pytest.mark.slow



def status(conf: Path, *extra: str) -> dict | None:
    res = subprocess.run([sys.executable, "-m", "timecoin", "status", "--config", str(conf), "--json", *extra],
                         capture_output=True, text=True, timeout=30)
    return json.loads(res.stdout) if res.returncode == 0 else None


class ProcessNet:
    def __init__(self, root: Path, nodes: int) -> None:
        self.root = root
        self.n = nodes
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        base = free_port_block(2 * nodes)
        subprocess.run([sys.executable, "-m", "timecoin", "testnet", "--nodes", str(nodes), "--dir", str(root),
                        "--base-port", str(base)], check=True, capture_output=True, timeout=60)

    def conf(self, i: int) -> Path:
        return self.root / f"node{i}" / "timecoin.conf"

    def start(self, i: int) -> None:
        d = self.root / f"node{i}"
        with open(d / "node.log", "ab") as log:
            self.procs[i] = subprocess.Popen([sys.executable, "-c", TWISTD, "-n", "--pidfile=", "timecoin",
                                              "--config", "timecoin.conf"], cwd=d, stdout=log, stderr=log)

    def kill(self, i: int) -> None:
        proc = self.procs.pop(i)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def height(self, i: int) -> int:
        info = status(self.conf(i))
        return info["height"] if info else 0

    def hash_at(self, i: int, h: int) -> str | None:
        info = status(self.conf(i), "--at", str(h))
        return info["hash"] if info else None

    def wait(self, nodes: list[int], height: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:                 # bounded in time
            hs = [self.height(i) for i in nodes]
            if min(hs) >= height:
                return
            time.sleep(0.5)
        raise AssertionError(f"nodes {nodes} at {hs} after {seconds} s, wanted {height}\n{self.logs()}")

    def agree(self, nodes: list[int], upto: int) -> None:
        for h in (1, upto // 2, upto):
            hashes = {self.hash_at(i, h) for i in nodes}
            assert len(hashes) == 1 and None not in hashes, f"disagreement at height {h}: {hashes}"

    def logs(self) -> str:
        out = []
        for i in range(self.n):
            log = self.root / f"node{i}" / "node.log"
            if log.exists():
                out.append(f"--- node{i}\n" + log.read_text()[-1500:])
        return "\n".join(out)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for i, proc in list(self.procs.items()):
            try:
                assert proc.wait(timeout=15) == 0, f"node{i} exit code {proc.returncode}"
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        self.procs.clear()


def test_four_twistd_validators_agree_survive_kills_and_rejoin(tmp_path: Path) -> None:
    net = ProcessNet(tmp_path / "net", 4)
    try:
        for i in range(4):
            net.start(i)
        net.wait([0, 1, 2, 3], 5, 40.0)
        net.agree([0, 1, 2, 3], 5)

        net.kill(3)
        h = max(net.height(i) for i in range(3))
        net.wait([0, 1, 2], h + 3, 30.0)

        net.kill(2)
        time.sleep(2.0)                                  # anything already in flight lands
        stuck = [net.height(i) for i in (0, 1)]
        time.sleep(5.0)
        assert [net.height(i) for i in (0, 1)] == stuck, "finalized with only 2 of 4 validators"
        net.agree([0, 1], min(stuck))

        net.start(2)
        net.start(3)
        net.wait([0, 1, 2, 3], max(stuck) + 3, 60.0)
        top = min(net.height(i) for i in range(4))
        net.agree([0, 1, 2, 3], top)
        net.stop_all()
        assert "Traceback" not in net.logs()
    finally:
        for proc in net.procs.values():
            proc.kill()
            proc.wait(timeout=10)
        if os.environ.get("TIMECOIN_KEEP_TESTNET"):
            print(net.logs())
