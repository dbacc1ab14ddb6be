"""Real ``twistd`` nodes, each in its own network namespace (timecoin.sim.netns), for tests on real addresses.

``netns_lab`` (a pytest fixture; import it into a test module) makes labs and removes them at teardown,
whatever the test did, then asserts nothing of theirs is left. Where namespaces are not permitted the
test is skipped with the reason -- or fails, when ``TIMECOIN_REQUIRE_NETNS=1`` (CI).

:class:`NsNet` writes a ``timecoin testnet`` layout for the lab's addresses (P2P and RPC bound to each
node's address, RPC allowing the lab's /24) and runs node i in host ``node{i}``'s namespace. Heights are
read from each node's LMDB (read-only, as ``timecoin status`` does), so they need no network: they work
while a node's link is down. RPC calls use a socket made inside the node's namespace, for the same reason.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from timecoin.config import build_config
from timecoin.sim import netns
from timecoin.status import read_status
from timecoin.testnet import Layout, NodeInfo, node_command, read_layout, render_config, write_testnet

REPO = str(Path(__file__).resolve().parent.parent)
BLOCK_INTERVAL = 0.3


def require_netns() -> None:
    """Skip (or, with TIMECOIN_REQUIRE_NETNS=1, fail) unless this process may make network namespaces."""
    ok, why = netns.netns_permitted()
    if ok:
        return
    if os.environ.get("TIMECOIN_REQUIRE_NETNS") == "1":
        pytest.fail(f"TIMECOIN_REQUIRE_NETNS=1 but network namespaces are not permitted: {why}")
    pytest.skip(f"network namespaces are not permitted here: {why}")


@pytest.fixture
def netns_lab() -> Iterator[Callable[[Sequence[str]], netns.Lab]]:
    """make(hosts) -> a created Lab; every lab made is destroyed at teardown and checked to leave nothing."""
    require_netns()
    labs: list[netns.Lab] = []

    def make(hosts: Sequence[str]) -> netns.Lab:
        lab = netns.Lab(hosts)
        labs.append(lab)
        return lab.create()

    yield make
    left = [item for lab in labs for item in lab.destroy()]
    assert left == [], f"the lab left {left}"
    assert all(netns.leftovers(lab.tag) == [] for lab in labs)


def child_env() -> dict[str, str]:
    """The environment of every child: this checkout first on PYTHONPATH (twistd finds the plugin there)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


class NsNet:
    """A testnet layout whose node i lives in host ``node{i}`` of ``lab``; processes started on demand.

    ``bootstrap``: node index -> the indices it dials at start (default: every other validator).
    """

    def __init__(self, lab: netns.Lab, root: Path, validators: int, observers: int = 0,
                 bootstrap: dict[int, list[int]] | None = None, block_interval: float = BLOCK_INTERVAL) -> None:
        self.lab = lab
        self.root = root
        total = validators + observers
        self.layout: Layout = write_testnet(str(root), validators, observers, block_interval=block_interval,
                                            hosts=[lab.address(f"node{i}") for i in range(total)],
                                            rpc_allow_ip=str(lab.subnet))
        if bootstrap is not None:
            for i, dial in bootstrap.items():
                self._rewrite(i, [self.multiaddr(j) for j in dial], block_interval)
            self.layout = read_layout(str(root))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def _rewrite(self, i: int, bootstrap: list[str], block_interval: float) -> None:
        node = self.node(i)
        text = render_config(i, node.role, self.layout.chain_id, node.p2p_port, node.rpc_port, block_interval,
                             bootstrap, 16, None, node.metrics_port, node.host, str(self.lab.subnet))
        Path(node.config_file).write_text(text)

    def node(self, i: int) -> NodeInfo:
        return self.layout.nodes[i]

    def multiaddr(self, i: int) -> str:
        node = self.node(i)
        return f"/ip4/{node.host}/tcp/{node.p2p_port}/p2p/{node.peer_id}"

    def target(self, i: int) -> str:
        return f"{self.node(i).host}:{self.node(i).p2p_port}"

    # -- processes -------------------------------------------------------------------------------
    def start(self, i: int, *flags: str) -> None:
        node = self.node(i)
        with open(os.path.join(node.dir, "node.log"), "ab") as log:
            self.procs[i] = subprocess.Popen(self.lab.exec_argv(node.name, [*node_command(), *flags]), cwd=node.dir,
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             env=child_env())

    def stop(self, i: int) -> int:
        proc = self.procs.pop(i)
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise

    def stop_all(self) -> None:
        for i in list(self.procs):
            self.stop(i)

    def kill_all(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(timeout=10)
        self.procs.clear()

    # -- observation -----------------------------------------------------------------------------
    def height(self, i: int) -> int:
        try:
            return int(read_status(build_config(config_file=self.node(i).config_file))["height"])
        except Exception:
            return 0                                     # not created yet

    def heights(self, nodes: Sequence[int]) -> list[int]:
        return [self.height(i) for i in nodes]

    def wait_height(self, nodes: Sequence[int], height: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        hs = self.heights(nodes)
        while time.monotonic() < deadline and min(hs) < height:      # bounded in time
            time.sleep(0.3)
            hs = self.heights(nodes)
        assert min(hs) >= height, f"nodes {list(nodes)} at {hs} after {seconds} s, wanted {height}\n{self.logs()}"

    def wait_until(self, cond: Callable[[], Any], seconds: float, what: str) -> Any:
        """Poll ``cond`` (an OSError counts as not yet) until truthy; AssertionError with the logs after ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:                            # bounded in time
            try:
                value = cond()
            except OSError:                                           # not up yet: no cookie, no listener
                value = None
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"timed out after {seconds} s waiting for {what}\n{self.logs()}")

    def rpc(self, i: int, method: str, *params: Any) -> Any:
        """A JSON-RPC call to node i from inside its own namespace (works while its link is down)."""
        node = self.node(i)
        cookie = Path(build_config(config_file=node.config_file).datadir, ".cookie").read_text().strip()
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
        request = (f"POST / HTTP/1.0\r\nHost: {node.rpc_host}\r\nContent-Type: application/json\r\n"
                   f"Authorization: Basic {base64.b64encode(cookie.encode()).decode()}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        with netns.entered(self.lab.host(node.name).netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(10)
            sock.connect((node.rpc_host, node.rpc_port))
            sock.sendall(request)
            data = b""
            for _ in range(10_000):                                   # bounded
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data.partition(b"\r\n\r\n")[2])
        if reply.get("error"):
            raise AssertionError(f"{method}: {reply['error']}")
        return reply["result"]

    def attack(self, host: str, target: int, mode: str, sources: Sequence[str], **opts: Any) -> dict[str, Any]:
        """Run tests/netns_attacker.py in ``host``'s namespace against node ``target``; its JSON result."""
        argv = [sys.executable, "-m", "tests.netns_attacker", "--target", self.target(target), "--peer-id",
                self.node(target).peer_id, "--mode", mode, "--sources", ",".join(sources),
                *(x for k, v in opts.items() for x in (f"--{k}", str(v)))]
        res = subprocess.run(self.lab.exec_argv(host, argv), capture_output=True, text=True, timeout=120,
                             cwd=REPO, env=child_env())
        assert res.returncode == 0, f"attacker failed: {res.stdout[-3000:]}{res.stderr[-3000:]}"
        return dict(json.loads(res.stdout.strip().splitlines()[-1]))

    def logs(self) -> str:
        out = []
        for node in self.layout.nodes:
            log = Path(node.dir, "node.log")
            if log.exists():
                out.append(f"--- {node.name}\n" + log.read_text(errors="replace")[-1500:])
        return "\n".join(out)

    def close(self) -> None:
        """Kill what still runs (a failed test); a passing test has stopped its nodes itself."""
        self.kill_all()
