"""The fault-injecting proxy over real loopback TCP: delay keeps order, stall holds until heal, reset aborts
both sides, partition refuses new connections until heal, and held bytes are bounded (pause, then reset)."""
from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Protocol

from tests.p2pnet import sleep, wait_for
from timecoin.chaos.proxy import FaultProxy


class Peer(Protocol):
    """One end of a test connection: records what it received, when, and whether it was lost."""

    def __init__(self, sink: list[Peer]) -> None:
        self.data = b""
        self.times: list[float] = []
        self.lost = False
        sink.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self.times.append(time.monotonic())

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class Side(ClientFactory):
    def __init__(self) -> None:
        self.peers: list[Peer] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        return Peer(self.peers)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.failed = True


class World:
    """A server on loopback, a proxy in front of it, and clients dialing the proxy."""

    def __init__(self, **proxy_args: Any) -> None:
        self.server = Side()
        self.port = reactor.listenTCP(0, self.server, interface="127.0.0.1")
        self.proxy = FaultProxy(reactor, "127.0.0.1", self.port.getHost().port, name="test", **proxy_args)
        self.proxy.listen()
        self.clients: list[Side] = []

    async def connect(self, expect_server: bool = True) -> tuple[Peer, Peer | None]:
        side = Side()
        self.clients.append(side)
        before = len(self.server.peers)
        reactor.connectTCP("127.0.0.1", self.proxy.listening_port, side)
        await wait_for(lambda: side.peers, 5.0, "client connected to the proxy")
        if not expect_server:
            return side.peers[0], None
        await wait_for(lambda: len(self.server.peers) > before, 5.0, "proxy dialed the server")
        return side.peers[0], self.server.peers[-1]

    async def close(self) -> None:
        await self.proxy.stop()
        await self.port.stopListening()
        for side in [self.server, *self.clients]:
            for peer in side.peers:
                if peer.transport is not None and not peer.lost:
                    peer.transport.abortConnection()
        await sleep(0.05)


@pytest_twisted.ensureDeferred
async def test_plain_proxy_pipes_both_ways() -> None:
    w = World()
    try:
        client, server = await w.connect()
        assert server is not None
        client.transport.write(b"ping")
        await wait_for(lambda: server.data == b"ping", 5.0, "ping through the proxy")
        server.transport.write(b"pong")
        await wait_for(lambda: client.data == b"pong", 5.0, "pong back")
    finally:
        await w.close()


@pytest_twisted.ensureDeferred
async def test_delay_adds_time_and_keeps_order_when_the_delay_drops() -> None:
    w = World()
    try:
        client, server = await w.connect()
        assert server is not None
        w.proxy.set_delay(0.4)
        sent = time.monotonic()
        client.transport.write(b"first.")
        await sleep(0.05)
        w.proxy.set_delay(0.0)            # a later chunk with no delay must still come second
        client.transport.write(b"second.")
        await wait_for(lambda: server.data == b"first.second.", 5.0, "both chunks, in order")
        assert server.times[0] - sent >= 0.35, "the delayed chunk arrived early"
        with pytest.raises(ValueError):
            w.proxy.set_delay(-1)
    finally:
        await w.close()


@pytest_twisted.ensureDeferred
async def test_stall_holds_bytes_until_heal_then_delivers_in_order() -> None:
    w = World()
    try:
        client, server = await w.connect()
        assert server is not None
        w.proxy.stall()
        client.transport.write(b"a" * 1000)
        server.transport.write(b"reply")
        client.transport.write(b"b" * 1000)
        await sleep(0.4)
        assert server.data == b"" and client.data == b"", "a stalled link delivered bytes"
        assert w.proxy.held_bytes() == 2005
        w.proxy.heal()
        await wait_for(lambda: server.data == b"a" * 1000 + b"b" * 1000 and client.data == b"reply", 5.0,
                       "held bytes delivered on heal")
        assert not server.lost and not client.lost
    finally:
        await w.close()


@pytest_twisted.ensureDeferred
async def test_reset_aborts_both_sides() -> None:
    w = World()
    try:
        client, server = await w.connect()
        assert server is not None
        assert w.proxy.reset() == 1
        await wait_for(lambda: client.lost and server.lost, 5.0, "both sides lost")
        assert w.proxy.held_bytes() == 0 and not w.proxy.pipes
        again, server2 = await w.connect()         # a reset is not a partition: new connections work
        assert server2 is not None and not again.lost
    finally:
        await w.close()


@pytest_twisted.ensureDeferred
async def test_partition_resets_refuses_new_connections_and_heals() -> None:
    w = World()
    try:
        client, server = await w.connect()
        assert server is not None
        assert w.proxy.partition() == 1
        await wait_for(lambda: client.lost and server.lost, 5.0, "existing connection reset")
        servers_before = len(w.server.peers)
        refused, _ = await w.connect(expect_server=False)
        await wait_for(lambda: refused.lost, 5.0, "a new connection closed at once")
        await sleep(0.2)
        assert len(w.server.peers) == servers_before, "the proxy dialed the target during a partition"
        assert w.proxy.refused == 1
        w.proxy.heal()
        healed, server3 = await w.connect()
        assert server3 is not None
        healed.transport.write(b"back")
        await wait_for(lambda: server3.data == b"back", 5.0, "traffic after heal")
    finally:
        await w.close()


@pytest_twisted.ensureDeferred
async def test_stalled_link_pauses_the_sender_instead_of_buffering_everything() -> None:
    w = World(pause_bytes=64 * 1024, max_bytes=8 * 1024 * 1024)
    try:
        client, server = await w.connect()
        assert server is not None
        w.proxy.stall()
        blob = bytes(range(256)) * (4 * 4096)     # 4 MiB
        client.transport.write(blob)
        await sleep(1.0)
        held = w.proxy.held_bytes()
        assert 0 < held < 1024 * 1024, f"{held} bytes held: the sender was not paused"
        assert not client.lost and not server.lost
        w.proxy.heal()
        await wait_for(lambda: len(server.data) == len(blob), 20.0, "every byte after heal")
        assert server.data == blob
    finally:
        await w.close()


@pytest_twisted.ensureDeferred
async def test_held_bytes_beyond_the_cap_reset_the_connection() -> None:
    w = World(pause_bytes=8 * 1024 * 1024, max_bytes=64 * 1024)
    try:
        client, server = await w.connect()
        assert server is not None
        w.proxy.stall()
        client.transport.write(b"x" * (1024 * 1024))
        await wait_for(lambda: client.lost and server.lost, 5.0, "reset at the cap")
        assert server.data == b"" and any("reset" in n for n in w.proxy.notes)
    finally:
        await w.close()


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        FaultProxy(reactor, "127.0.0.1", 1, pause_bytes=0)
