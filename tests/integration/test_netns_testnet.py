"""``timecoin testnet --netns`` and the lab itself: everything made is removed, however the run ends."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netnsfixture import child_env, require_netns
from timecoin import cli
from timecoin.config import build_config
from timecoin.sim import netns
from timecoin.status import read_status


def _height(conf: Path) -> int:
    try:
        return int(read_status(build_config(config_file=str(conf)))["height"])
    except Exception:
        return 0                                      # not created yet


@pytest.mark.slow
def test_testnet_netns_start_finalizes_and_sigterm_leaves_nothing_behind(tmp_path: Path) -> None:
    require_netns()
    root = tmp_path / "net"
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "timecoin", "testnet", "--netns", "--nodes", "4", "--dir",
                                 str(root), "--start", "--block-interval", "0.3"], stdout=f, stderr=subprocess.STDOUT,
                                env=child_env())
    tag = None
    try:
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and min(_height(root / f"node{i}" / "timecoin.conf") for i in range(4)) < 3:
            assert proc.poll() is None, out.read_text()
            time.sleep(0.3)
        heights = [_height(root / f"node{i}" / "timecoin.conf") for i in range(4)]
        assert min(heights) >= 3, f"{heights}\n{out.read_text()}"
        text = out.read_text()
        tag = re.search(r"on bridge tcn([0-9a-f]{6})br \((198\.1[89]\.\d+\.1)/24\)", text)
        assert tag, text
        assert len(netns.leftovers(tag.group(1))) == 4 + 1 + 4        # namespaces, bridge, veths: all there
        conf = (root / "node1" / "timecoin.conf").read_text()
        assert re.search(r"^p2p_host = 198\.1[89]\.", conf, re.M) and "/ip4/198.1" in conf
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, out.read_text()
        assert "node3 (pid" in out.read_text() and "stopped: exit code 0" in out.read_text()
        assert netns.leftovers(tag.group(1)) == []
        assert [n for n in netns.namespaces() if n.startswith(f"{netns.PREFIX}-{proc.pid}-")] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if tag:
            netns.sweep()


def test_testnet_netns_refuses_non_root_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["testnet", "--netns", "--nodes", "2", "--dir", str(tmp_path / "t"), "--start"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code != 0 and "--netns needs root" in err and "\n" not in err
    assert not (tmp_path / "t").exists()
    ok, why = netns.netns_permitted()
    assert not ok and "root" in why


def test_a_lab_is_removed_when_its_body_fails_and_sweep_removes_a_dead_runs_leftovers() -> None:
    require_netns()
    lab = netns.Lab(["a", "b"])
    with pytest.raises(RuntimeError), lab:
        assert len(netns.leftovers(lab.tag)) == 2 + 1 + 2
        raise RuntimeError("the test failed")
    assert netns.leftovers(lab.tag) == []
    # A run killed by SIGKILL ran no finalizer: its namespace and bridge carry its (now dead) PID.
    dead = subprocess.Popen(["true"])
    dead.wait()
    tag = f"{os.getpid() % 0xffffff:06x}"
    ns, bridge = f"{netns.PREFIX}-{dead.pid}-{tag}-x", f"{netns.PREFIX}{tag}br"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", bridge, "alias", f"{netns.ALIAS}{dead.pid}"], check=True)
    try:
        assert len(netns.leftovers(tag)) == 2
        removed = netns.sweep()
        assert f"netns {ns}" in removed and f"link {bridge}" in removed
        assert netns.leftovers(tag) == []
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True)


def test_without_namespaces_the_tests_skip_with_the_reason_or_fail_when_required(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "netns_permitted", lambda: (False, "network namespaces need root"))
    monkeypatch.delenv("TIMECOIN_REQUIRE_NETNS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not permitted here: network namespaces need root"):
        require_netns()
    monkeypatch.setenv("TIMECOIN_REQUIRE_NETNS", "1")
    with pytest.raises(pytest.fail.Exception, match="TIMECOIN_REQUIRE_NETNS=1 .* need root"):
        require_netns()
