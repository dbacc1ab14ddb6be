"""In-process networks of real nodes: real LMDB in a temporary folder, real TLS over TCP on 127.0.0.1.

Every node is the production service tree (``timecoin.node.build_node``) on the test's reactor; only
the timeouts are short so a test runs in seconds. Waits are bounded in time and count.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task

from timecoin import crypto
from timecoin.config import NodeConfig, build_config
from timecoin.ledger.genesis import Genesis
from timecoin.node import Node, build_node

FAST = {"network": "testnet", "p2p_port": "0", "rpc_port": "0", "block_interval": "0.05",
        "timeout_propose": "0.4", "timeout_propose_delta": "0.1", "timeout_prevote": "0.2",
        "timeout_prevote_delta": "0.1", "timeout_precommit": "0.2", "timeout_precommit_delta": "0.1",
        "gossip_interval": "0.1", "max_per_ip": "100", "ping_interval": "1"}


def make_keys(n: int, seed: int = 1) -> list[crypto.PrivateKey]:
    return [crypto.PrivateKey(bytes([seed, i + 1]) + b"\x11" * 30) for i in range(n)]


def node_config(base: Path, name: str, **extra: str) -> NodeConfig:
    datadir = base / name
    os.makedirs(datadir, exist_ok=True)
    return build_config({"datadir": str(datadir), **FAST, **extra})


class Net:
    """N validators (and optional observers) of one genesis, each a full node in this process."""

    def __init__(self, base: Path, validators: int, observers: int = 0, chain_id: str = "timecoin-p2p-test",
                 seed: int = 1, genesis: Genesis | None = None, keys: list[crypto.PrivateKey] | None = None,
                 **extra: str) -> None:
        self.base = base
        self.keys = keys if keys is not None else make_keys(validators + observers, seed)
        self.genesis = genesis or Genesis.for_validators([k.public_key for k in self.keys[:validators]], chain_id)
        self.extra = extra
        self.nodes: list[Node] = [self.make(i) for i in range(len(self.keys))]

    def make(self, i: int, **extra: str) -> Node:
        config = node_config(self.base, f"node{i}", **{**self.extra, **extra})
        return build_node(config, self.keys[i], self.genesis, reactor)

    def chain_path(self, i: int) -> str:
        """Where node i's LMDB store lives (to pre-fill it before the node starts)."""
        return os.path.join(self.base, f"node{i}", "chain")

    def connect(self, i: int, others: list[int] | None = None) -> None:
        for j in others if others is not None else range(len(self.nodes)):
            if j != i and self.nodes[j].p2p.listen_addr:
                self.nodes[i].p2p.peerstore.add(self.nodes[j].p2p.listen_addr, "bootstrap", reactor.seconds())

    async def start(self, connect: bool = True) -> None:
        for node in self.nodes:
            node.startService()
        await wait_for(lambda: all(n.p2p.listen_addr for n in self.nodes), 5.0, "listening")
        if connect:
            for node in self.nodes:
                for other in self.nodes:
                    if other is not node:
                        node.p2p.peerstore.add(other.p2p.listen_addr, "bootstrap", reactor.seconds())

    async def stop(self) -> None:
        for node in self.nodes:
            if node.running:
                await defer.maybeDeferred(node.stopService)
        await sleep(0.05)                       # let the transports finish closing

    def heights(self) -> list[int]:
        return [n.store.tip_height() if n.store else -1 for n in self.nodes]


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``cond`` until it is truthy; AssertionError after ``timeout`` seconds (bounded loop)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 2):
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        await sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
