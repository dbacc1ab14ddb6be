"""In-process networks of real nodes, and raw attacking peers, over real TLS on 127.0.0.1.

Nodes keep real LMDB in a temporary folder. Tests and benchmarks share this world (a raw peer is a client
with a real libp2p TLS identity that sends whatever frames its caller gives it).

Every node is the production service tree (``timecoin.node.build_node``) on the test's reactor; only
the timeouts are short so a test runs in seconds. Waits are bounded in time and count.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from twisted.internet import defer, endpoints, task
from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from timecoin import crypto
from timecoin.config import NodeConfig, build_config
from timecoin.ledger.genesis import Genesis
from timecoin.node import Node, build_node
from timecoin.p2p.identity import HostIdentity
from timecoin.wire import messages as m
from timecoin.wire.framing import FrameDecoder, encode_frame

reactor: Any = cast(Any, _reactor)    # the global reactor (typed loosely: its interfaces are many)

FAST = {"network": "testnet", "p2p_port": "0", "rpc_port": "0", "metrics_port": "0", "block_interval": "0.05",
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

    async def restart(self, indices: list[int]) -> None:
        """Bring stopped nodes back on their own stores (a restart after a crash or a stop): each is a new
        service tree on the same datadir, listening again and given every other node's new address."""
        for i in indices:
            self.nodes[i] = self.make(i)
            self.nodes[i].startService()
        await wait_for(lambda: all(n.p2p.listen_addr for n in self.nodes if n.running), 5.0, "restarted listening")
        for i in indices:
            for j, other in enumerate(self.nodes):
                if j != i and other.p2p.listen_addr:
                    self.nodes[i].p2p.peerstore.add(other.p2p.listen_addr, "bootstrap", 0.0)

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


# -- raw peers: a real libp2p TLS identity that sends whatever bytes the caller gives it --------------
@implementer(IHandshakeListener)
class RawPeer(Protocol):
    """A peer that speaks TLS correctly and then sends exactly the bytes a test gives it."""

    def __init__(self) -> None:
        self.handshake: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.decoder = FrameDecoder()
        self.messages: list[tuple[m.MsgType, Any]] = []
        self.on_message: Any = None              # called with (type, request id, body) as each arrives

    def handshakeCompleted(self) -> None:  # noqa: N802 - Twisted API
        self.handshake.callback(None)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        for frame in self.decoder.feed(data):
            msg_type, rid, body = m.decode_message(frame)
            self.messages.append((msg_type, body))
            if self.on_message is not None:
                self.on_message(msg_type, rid, body)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted API
        if not self.handshake.called:
            self.handshake.errback(reason)
        self.lost.callback(None)

    def send(self, msg_type: m.MsgType, body: Any, request_id: int = 0) -> None:
        cast(Any, self.transport).write(encode_frame(m.encode_message(msg_type, body, request_id)))

    def rejects(self) -> list[int]:
        return [body.reason for t, body in self.messages if t == m.MsgType.REJECT]


async def connect(key: crypto.PrivateKey, target: Node) -> RawPeer:
    port = target.p2p.listening_port.getHost().port
    tcp = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    endpoint = endpoints.wrapClientTLS(cast(Any, HostIdentity(key).client_creator(target.p2p.peer_id)), cast(Any, tcp))
    peer = RawPeer()
    await endpoints.connectProtocol(endpoint, peer)
    await peer.handshake
    return peer


async def connect_ready(key: crypto.PrivateKey, target: Node) -> RawPeer:
    """Connect and say a correct hello; return once the target treats us as a ready peer."""
    peer = await connect(key, target)
    peer.send(m.MsgType.HELLO, target.p2p.hello_body() | {"listen_addrs": [], "agent": "attacker"})
    pid = key.peer_id
    await wait_for(lambda: pid in target.p2p.connections and target.p2p.connections[pid].state == "ready",
                   5.0, "attacker admitted")
    return peer


def score(node: Node, key: crypto.PrivateKey) -> int:
    return node.p2p.peers.score(key.peer_id)


def banned(node: Node, key: crypto.PrivateKey) -> bool:
    return node.p2p.peers.is_banned(key.peer_id, None, reactor.seconds())
