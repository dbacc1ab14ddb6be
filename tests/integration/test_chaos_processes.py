"""Real processes under faults (issue 13): ``timecoin testnet --start --chaos SEED`` end to end, and the
checker it ends with, shown to fail on a diverging chain and on a finalized block that disappeared."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ports import free_port_block
from timecoin.chaos.check import Sighting, check_chains, verdict
from timecoin.chaos.runner import rewrite_config
from timecoin.chaos.schedule import KINDS, plan

ROOT = Path(__file__).resolve().parents[2]
SEED, DURATION = 1, 35.0          # this plan holds every kind of fault (asserted below)


def chain(n: int, fork_at: int | None = None, tag: str = "b") -> dict[int, str]:
    return {h: (f"{tag}{h:063x}" if fork_at is not None and h >= fork_at else f"{h:064x}") for h in range(1, n + 1)}


def run_check(chains: dict[str, dict[int, str]], sightings: list[Sighting]) -> tuple[int, str]:
    out = io.StringIO()
    code = verdict(check_chains(chains, sightings), min(max(c) for c in chains.values()), len(chains),
                   len(sightings), out)
    return code, out.getvalue()


def test_checker_passes_one_chain_with_every_sighting_held() -> None:
    chains = {"node0": chain(10), "node1": chain(12), "node2": chain(10)}
    sightings = [Sighting(1.0, "node1", 5, chain(5)[5]), Sighting(2.0, "node0", 10, chain(10)[10])]
    code, text = run_check(chains, sightings)
    assert code == 0 and text.startswith("chaos: PASS: 3 nodes hold one chain through height 10")


def test_checker_fails_when_a_chain_diverges() -> None:
    chains = {"node0": chain(10), "node1": chain(10, fork_at=7), "node2": chain(10)}
    code, text = run_check(chains, [])
    assert code == 1
    assert "chaos: FAIL" in text and "chains diverge at height 7" in text


def test_checker_fails_when_a_finalized_block_disappears_or_changes() -> None:
    seen = Sighting(3.5, "node2", 9, chain(9)[9])
    code, text = run_check({"node0": chain(8), "node1": chain(12), "node2": chain(8)}, [seen])
    assert code == 1 and "finalized block lost: node2 reported height 9" in text and "node0 ends at height 8" in text
    replaced = {"node0": chain(12, fork_at=9), "node1": chain(12, fork_at=9), "node2": chain(12, fork_at=9)}
    code, text = run_check(replaced, [seen])
    assert code == 1 and "now holds b" in text
    code, text = run_check({"node0": {1: "aa", 3: "cc"}}, [])
    assert code == 1 and "no hash for height(s) [2]" in text


def test_rewrite_config_routes_every_peer_or_refuses() -> None:
    text = "bootstrap = /ip4/127.0.0.1/tcp/100/p2p/A,\n    /ip4/127.0.0.1/tcp/102/p2p/B\n"
    routes = {"/ip4/127.0.0.1/tcp/100/p2p/A": "/ip4/127.0.0.1/tcp/5000/p2p/A",
              "/ip4/127.0.0.1/tcp/102/p2p/B": "/ip4/127.0.0.1/tcp/5001/p2p/B"}
    assert rewrite_config(text, routes) == ("bootstrap = /ip4/127.0.0.1/tcp/5000/p2p/A,\n"
                                            "    /ip4/127.0.0.1/tcp/5001/p2p/B\n")
    with pytest.raises(Exception, match="not in the config's bootstrap"):
        rewrite_config("bootstrap =\n", routes)


def timecoin_cli(*args: str, timeout: float, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI with this checkout first on the path (its children inherit it); output kept in ``log``
    as it comes, so a run that overstays its timeout still shows how far it got."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    if log is None:
        return subprocess.run([sys.executable, "-m", "timecoin", *args], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=ROOT)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "timecoin", *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()                      # the runner stops its nodes on SIGTERM
            proc.wait(timeout=30)
            raise AssertionError(f"the chaos run took over {timeout} s:\n{log.read_text()}") from None
    return subprocess.CompletedProcess(proc.args, code, log.read_text(), "")


@pytest.mark.parametrize("args, message", [
    (["--chaos", "x", "--start"], "--chaos: 'x' is not an integer seed"),
    (["--chaos", "-1", "--start"], "the seed must be >= 0"),
    (["--chaos", "1"], "add --start"),
    (["--chaos-duration", "30", "--start"], "--chaos-duration only applies with --chaos SEED"),
    (["--chaos", "1", "--start", "--chaos-duration", "2"], "--chaos-duration must be between 8 and 86400"),
    (["--chaos", "1", "--start", "--chaos-duration", "soon"], "is not a number of seconds"),
    (["--chaos", "1", "--start", "--nodes", "3"], "--chaos needs --nodes 4 or more"),
])
def test_bad_chaos_arguments_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    res = timecoin_cli("testnet", "--dir", str(tmp_path / "net"), *args, timeout=60)
    assert res.returncode == 2, res
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert not (tmp_path / "net").exists(), "a refused chaos run wrote a testnet"


@pytest.mark.slow
def test_four_processes_through_fault_proxies_keep_one_chain_and_lose_nothing(tmp_path: Path) -> None:
    kinds = {e.action for e in plan(SEED, 4, DURATION)}
    assert set(KINDS) <= kinds, f"seed {SEED} over {DURATION} s no longer holds every fault: {sorted(kinds)}"
    base = free_port_block(8)
    started = time.monotonic()
    res = timecoin_cli("testnet", "--nodes", "4", "--dir", str(tmp_path / "net"), "--base-port", str(base),
                       "--start", "--chaos", str(SEED), "--chaos-duration", str(DURATION), timeout=90,
                       log=tmp_path / "chaos.out")
    took = time.monotonic() - started
    logs = "\n".join(f"--- node{i}\n" + (tmp_path / "net" / f"node{i}" / "node.log").read_text()[-2000:]
                     for i in range(4) if (tmp_path / "net" / f"node{i}" / "node.log").exists())
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{logs}"
    out = res.stdout
    played = re.findall(r"^chaos \[ *[\d.]+s\] t= *[\d.]+s (\S+)", out, re.M)
    for action in ("delay", "stall", "reset", "partition", "heal", "SIGKILL", "restart", "SIGSTOP", "SIGCONT"):
        assert action in played, f"{action} was not played:\n{out}"
    # the link faults reached connections: through a proxy, or closed so the redial goes through one
    touched = [int(a) + int(b) for a, b in re.findall(r"\((\d+) proxied connection\(s\), (\d+) direct", out)]
    assert touched and sum(touched) > 0, out
    assert re.search(r"^chaos: PASS: 4 nodes hold one chain through height \d+", out, re.M), out
    assert "exited unexpectedly" not in out + res.stderr
    assert "Traceback" not in logs
    assert took < 90
    # the layout itself is untouched: the chaos configs sit beside the operator's
    for i in range(4):
        own = (tmp_path / "net" / f"node{i}" / "timecoin.conf").read_text()
        chaos = (tmp_path / "net" / f"node{i}" / "timecoin.chaos.conf").read_text()
        for j in range(4):
            real = f"/ip4/127.0.0.1/tcp/{base + 2 * j}/p2p/"
            if j != i:
                assert real in own and real not in chaos, f"node{i}'s bootstrap entry for node{j}"
