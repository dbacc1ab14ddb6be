"""Dialing and accepting over real TCP/TLS on 127.0.0.1 (LMDB in tmp_path): refused dials back off;
bans and pending-connection caps apply on accept, before TLS (the oldest pending connection makes room)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Protocol

from tests.p2pnet import Net, wait_for
from timecoin.errors import Reason
from timecoin.node import Node
from timecoin.p2p.discovery import Source
from timecoin.p2p.service import MAX_PENDING_PER_IP


@pytest_twisted.ensureDeferred
async def test_a_peer_that_refuses_us_in_the_handshake_is_redialled_with_backoff(tmp_path: Path) -> None:
    # node0 (validator) accepts validator peers only: it refuses the observer node1 after TLS, in hello.
    net = Net(tmp_path, 1, observers=1, require_stake="true")
    try:
        await net.start(connect=False)
        validator, observer = net.nodes
        observer.p2p.peerstore.add(validator.p2p.listen_addr, Source.EXCHANGE, reactor.seconds())
        store = observer.p2p.peerstore
        pid = validator.p2p.peer_id
        await wait_for(lambda: store.get(pid) is not None and store.get(pid).failures >= 1, 10.0,
                       "the refused dial counted as a failure")
        entry = store.get(pid)
        assert entry is not None and entry.next_dial > reactor.seconds()       # backing off, not held 30 s
        assert pid not in observer.p2p.connections and observer.p2p.peer_id not in validator.p2p.connections
        # It is redialled (with a growing wait) and each refusal counts again: in time it is forgotten.
        await wait_for(lambda: store.get(pid) is None or store.get(pid).failures >= 2, 10.0, "a second refusal")
    finally:
        await net.stop()


class RawTCP(Protocol):
    """A plain TCP client that never starts TLS: it only notes what it receives and when it is closed."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted API
        self.lost.callback(None)


async def raw_tcp(node: Node) -> RawTCP:
    port = node.p2p.listening_port.getHost().port
    proto = RawTCP()
    await endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), proto)
    return proto


@pytest_twisted.ensureDeferred
async def test_banned_ips_are_refused_and_over_cap_pending_connections_evicted_before_tls(tmp_path: Path) -> None:
    net = Net(tmp_path, 1)
    try:
        await net.start(connect=False)
        node = net.nodes[0]
        p2p = node.p2p
        # The check the listener runs on accept, before any TLS: a banned public IP is refused at once,
        # loopback never is (it is never banned by IP), another IP is fine.
        p2p.peers.set_ban("203.0.113.7", 3600, reactor.seconds())
        assert p2p.pre_tls_refusal("203.0.113.7") == Reason.BANNED
        assert p2p.pre_tls_refusal("::ffff:203.0.113.7") == Reason.BANNED
        assert p2p.pre_tls_refusal("198.51.100.9") == Reason.OK
        assert p2p.pre_tls_refusal("127.0.0.1") == Reason.OK
        # Real sockets: MAX_PENDING_PER_IP unauthenticated connections are held (waiting for TLS)...
        held = [await raw_tcp(node) for _ in range(MAX_PENDING_PER_IP)]
        await wait_for(lambda: p2p.pending.count(ip="127.0.0.1") == MAX_PENDING_PER_IP, 5.0, "pending counted")
        # ...the next one from that address takes the place of the oldest (SPEC §5: oldest-first eviction),
        # which is closed before a single TLS byte.
        extra = await raw_tcp(node)
        await wait_for(lambda: held[0].lost.called, 5.0, "the oldest pending connection evicted")
        assert held[0].data == b""
        assert not extra.lost.called and not any(h.lost.called for h in held[1:])
        assert p2p.pending.count(ip="127.0.0.1") == MAX_PENDING_PER_IP
        # Closing the pending ones frees their places.
        for h in [*held[1:], extra]:
            h.transport.loseConnection()
        await wait_for(lambda: len(p2p.pending) == 0, 5.0, "pending released")
        assert p2p.pre_tls_refusal("127.0.0.1") == Reason.OK
    finally:
        await net.stop()
