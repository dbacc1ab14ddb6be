"""A local testnet run as child processes for a measurement: free loopback ports, cookies, heights.

``LocalNet(folder, nodes)`` writes the layout ``timecoin testnet`` writes (one shared genesis, validators
funded) with ``block_interval`` 0 on a block of ports that are free right now, starts every node as
``timecoin testnet --start`` would (:class:`timecoin.testnet.Supervisor`: ``twistd -n`` children that
import the same ``timecoin`` as this process), waits until each serves RPC, and stops them with SIGTERM.
Everything is bounded in time; an unexpected exit raises with the node's log tail.
"""
from __future__ import annotations

import contextlib
import io
import os
import random
import socket
import time
from dataclasses import dataclass, field

from timecoin import crypto, testnet
from timecoin.bench.conn import Conn, RPCFailure
from timecoin.config import build_config
from timecoin.rpc.clicall import CallError, Endpoint, endpoint_from

PORT_TRIES = 64
START_TIMEOUT = 60.0


class LocalNetError(Exception):
    """The local network could not be written, started or reached."""


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(nodes: int, lo: int = 20000, hi: int = 60000) -> int:
    """A base port whose 3 x ``nodes`` ports (P2P, RPC, metrics) can all be bound on 127.0.0.1 now."""
    span = 3 * nodes
    rng = random.Random()
    for _ in range(PORT_TRIES):
        base = rng.randrange(lo, hi - span)
        if all(_bindable(p) for p in range(base, base + span)):
            return base
    raise LocalNetError(f"no {span} consecutive free ports found in {PORT_TRIES} tries")


def endpoint_of(node: testnet.NodeInfo) -> Endpoint:
    """The node's RPC endpoint with its cookie (written when its RPC server starts)."""
    return endpoint_from(build_config(config_file=node.config_file), None, None, None)


@dataclass
class LocalNet:
    folder: str
    nodes: int
    block_interval: float = 0.0
    layout: testnet.Layout | None = None
    supervisor: testnet.Supervisor | None = None
    endpoints: list[Endpoint] = field(default_factory=list)
    output: io.StringIO = field(default_factory=io.StringIO)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Write the layout, start every node, wait until each answers getblockcount."""
        self.layout = testnet.write_testnet(self.folder, self.nodes, base_port=free_base_port(self.nodes),
                                            block_interval=self.block_interval, force=True)
        self.supervisor = testnet.Supervisor(self.output, self.output)
        for node in self.layout.nodes:
            self.supervisor.start(node.name, node.dir, testnet.node_command())
        deadline = time.monotonic() + timeout
        for node in self.layout.nodes:
            self.endpoints.append(self._wait_serving(node, deadline))

    def _wait_serving(self, node: testnet.NodeInfo, deadline: float) -> Endpoint:
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(CallError, RPCFailure):
                endpoint = endpoint_of(node)
                conn = Conn(endpoint, timeout=5.0)
                try:
                    conn.call("getblockcount")
                    return endpoint
                finally:
                    conn.close()
            time.sleep(0.1)
        raise LocalNetError(f"{node.name} did not serve RPC within the start timeout; log tail:\n{self.log_tail(node)}")

    def _check_alive(self) -> None:
        assert self.supervisor is not None and self.layout is not None
        for child, node in zip(self.supervisor.children, self.layout.nodes, strict=False):
            if child.proc.poll() is not None:
                raise LocalNetError(f"{node.name} exited with {child.proc.returncode}; "
                                    f"log tail:\n{self.log_tail(node)}")

    def log_tail(self, node: testnet.NodeInfo, chars: int = 3000) -> str:
        try:
            with open(os.path.join(node.dir, testnet.LOG_FILE), encoding="utf-8", errors="replace") as f:
                return f.read()[-chars:]
        except OSError as exc:
            return f"(no log: {exc})"

    def wait_height(self, height: int, timeout: float) -> int:
        """Wait until node 0 has finalized ``height``; its height."""
        conn = Conn(self.endpoints[0])
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self._check_alive()
                current = int(conn.call("getblockcount"))
                if current >= height:
                    return current
                time.sleep(0.05)
        finally:
            conn.close()
        raise LocalNetError(f"height {height} not reached within {timeout:g} s; node0 log tail:\n"
                            f"{self.log_tail(self.layout.nodes[0]) if self.layout else ''}")

    def validator_keys(self) -> list[crypto.PrivateKey]:
        """The validators' keys: the accounts ``timecoin testnet`` funds at genesis."""
        assert self.layout is not None
        return [crypto.PrivateKey.load(os.path.join(n.dir, testnet.KEY_FILE))
                for n in self.layout.nodes if n.role == "validator"]

    def pids(self) -> list[int]:
        return [c.pid for c in self.supervisor.children] if self.supervisor else []

    def stop(self) -> dict[str, int]:
        """SIGTERM every node (SIGKILL after the grace); their exit codes."""
        if self.supervisor is None:
            return {}
        return self.supervisor.stop()

    def __enter__(self) -> LocalNet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
