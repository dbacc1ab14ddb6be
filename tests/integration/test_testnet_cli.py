"""End to end: ``timecoin testnet --nodes 1 --start`` runs a real twistd node that finalizes alone, reports a
node that dies while the others keep running, and stops every child on SIGINT with exit code 0.
"""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def free_base_port() -> int:
    """A port P with P and P+1 free now (node 0's P2P and RPC ports), found by binding port 0."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise AssertionError("no two consecutive free ports in 50 tries")


def status(config: Path) -> dict | None:
    res = subprocess.run([sys.executable, "-m", "timecoin", "status", "--config", str(config), "--json"],
                         capture_output=True, text=True, timeout=30)
    return json.loads(res.stdout) if res.returncode == 0 else None


def wait_for_height(config: Path, height: int, seconds: float, runner: subprocess.Popen[str]) -> dict | None:
    """Poll ``timecoin status`` until ``height``; give up early if the runner has exited."""
    deadline, info = time.monotonic() + seconds, None
    while time.monotonic() < deadline and runner.poll() is None:   # bounded in time; one status process a poll
        info = status(config)
        if info and info["height"] >= height:
            return info
        time.sleep(0.25)
    return info


def log_tail(config: Path) -> str:
    log = config.parent / "node.log"
    return log.read_text()[-2000:] if log.exists() else "(no node.log)"


def is_running_twistd(pid: int) -> bool:
    """True while ``pid`` is (still) one of our node processes (a reused pid would not say twistd)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"twistd" in cmdline and state != "Z"


def start_runner(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "timecoin", "testnet", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(runner: subprocess.Popen[str], sig: int, seconds: float) -> tuple[int, str, str, float]:
    """Send ``sig``; the exit code, output and how long the runner took to exit."""
    t0 = time.monotonic()
    runner.send_signal(sig)
    try:
        out, err = runner.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        runner.kill()
        runner.communicate(timeout=10)
        raise
    return runner.returncode, out, err, time.monotonic() - t0


def pids_of(out: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"started (node\d+) pid (\d+)", out)}


def test_one_node_testnet_finalizes_and_stops_on_sigint(tmp_path: Path) -> None:
    base = free_base_port()
    runner = start_runner("--nodes", "1", "--dir", "tn", "--base-port", str(base), "--start", cwd=tmp_path)
    config = tmp_path / "tn" / "node0" / "timecoin.conf"
    try:
        info = wait_for_height(config, 2, 20.0, runner)
        assert info is not None and info["height"] >= 2, f"status {info}; node.log:\n{log_tail(config)}"
        assert info["chain_id"].startswith("timecoin-testnet-") and info["validators"] == 1
        assert info["finalized_height"] == info["height"]
    finally:
        code, out, err, took = finish(runner, signal.SIGINT, 15.0)
    assert code == 0, err
    assert took < 15.0
    pids = pids_of(out)
    assert list(pids) == ["node0"]
    assert info["peer_id"] in out                        # the summary printed the node's PeerID
    assert "received SIGINT" in out and f"node0 (pid {pids['node0']}) stopped: exit code 0" in out
    assert not is_running_twistd(pids["node0"])
    log = (tmp_path / "tn" / "node0" / "node.log").read_text()
    assert "Store closed" in log and "Traceback" not in log
    # `--start` alone on the same folder runs the layout again: the chain continues.
    # The first run went on past `info` until SIGINT: wait for a block the new run made (its node is up, so
    # the runner has its signal handlers installed before SIGTERM is sent).
    stopped_at = status(config)
    assert stopped_at is not None and stopped_at["height"] >= info["height"]
    runner = start_runner("--dir", "tn", "--start", cwd=tmp_path)
    try:
        again = wait_for_height(config, stopped_at["height"] + 1, 20.0, runner)
        assert again is not None and again["height"] > stopped_at["height"], \
            f"{again}; node.log:\n{log_tail(config)}"
        assert again["chain_id"] == info["chain_id"]
    finally:
        code, out, err, _ = finish(runner, signal.SIGTERM, 15.0)
    assert code == 0, err
    assert not is_running_twistd(pids_of(out)["node0"])


def test_a_node_that_dies_is_reported_and_the_others_keep_running(tmp_path: Path) -> None:
    base = free_base_port()
    write = subprocess.run([sys.executable, "-m", "timecoin", "testnet", "--nodes", "1", "--observers", "1",
                            "--dir", "tn", "--base-port", str(base)], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
    assert write.returncode == 0, write.stderr
    conf = tmp_path / "tn" / "node1" / "timecoin.conf"    # the observer will refuse to start: no genesis
    conf.write_text(conf.read_text().replace("genesis_file = ../genesis.json", "genesis_file = ../missing.json"))
    runner = start_runner("--dir", "tn", "--start", cwd=tmp_path)
    config = tmp_path / "tn" / "node0" / "timecoin.conf"
    try:
        info = wait_for_height(config, 2, 20.0, runner)
        assert info is not None and info["height"] >= 2, f"status {info}; node.log:\n{log_tail(config)}"
        assert runner.poll() is None                   # the runner keeps supervising node0
    finally:
        code, out, err, took = finish(runner, signal.SIGINT, 15.0)
    assert code == 0, err
    pids = pids_of(out)
    assert set(pids) == {"node0", "node1"}
    assert f"node1 (pid {pids['node1']}) exited unexpectedly with exit code 1" in err
    assert f"node0 (pid {pids['node0']}) stopped: exit code 0" in out
    assert "no genesis file" in (tmp_path / "tn" / "node1" / "node.log").read_text()
    assert not any(is_running_twistd(pid) for pid in pids.values())
