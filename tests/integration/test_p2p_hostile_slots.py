"""Issue 11, finding 8 (slots and bans), over real TCP/TLS on loopback with LMDB in tmp_path.

An attacker without a key opens idle TCP sockets (no TLS, not a byte) to fill the table of inbound
connections not yet through TLS: on the old code 64 sockets from 8 addresses (MAX_PENDING_INBOUND = 64,
MAX_PENDING_PER_IP = 8) held every slot for the 10 s handshake timeout and every validator was refused.
SPEC §5: "connections not yet through TLS get few slots per /24 and /64, a short timeout, and
oldest-first eviction, with room kept for validators"; "IPv6 addresses are banned and counted for
max_per_ip by /64".

Linux routes all of 127.0.0.0/8 to lo, so attacker sockets bind to their own source addresses: eight in
the validator's own /24 (127.0.0.2..9, the validator dials from 127.0.0.1) or one in each of eight other
/24s (127.1.0.1 .. 127.8.0.1). The validator is a real node (node1) that learns the target's address
and dials it. IPv6 /64 rules are driven with documentation-range address strings (2001:db8::/32): the
admission functions take the address as text, no socket is needed.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Protocol

from tests.p2pnet import Net, make_keys, sleep, wait_for
from timecoin.errors import Reason
from timecoin.node import Node
from timecoin.p2p import protocol
from timecoin.p2p.discovery import format_multiaddr
from timecoin.p2p.service import MAX_PENDING_INBOUND, MAX_PENDING_PER_PREFIX, RESERVED_PENDING

SAME_24 = [f"127.0.0.{i}" for i in range(2, 10)]       # eight addresses in the validator's own /24
OTHER_24S = [f"127.{i}.0.1" for i in range(1, 9)]     # one address in each of eight other /24s
PER_ADDRESS = 8                                       # 8 x 8 = 64: the whole pending table of the old code
ADMIT_WITHIN = 5.0                                    # s from learning the target's address to admitted
TLS_DEADLINE = 3.0                                    # SPEC §5 "a short timeout" before TLS


class Idle(Protocol):
    """A plain TCP client that never starts TLS (optionally sends a few bytes): it notes when it is closed."""

    def __init__(self, first: bytes = b"") -> None:
        self.first = first
        self.opened = time.monotonic()
        self.closed_at: float | None = None
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        self.opened = time.monotonic()
        if self.first:
            self.transport.write(self.first)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted API
        self.closed_at = time.monotonic()
        self.lost.callback(None)


async def idle_socket(node: Node, source: str, first: bytes = b"") -> Idle:
    port = node.p2p.listening_port.getHost().port
    proto = Idle(first)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5, bindAddress=(source, 0))
    await endpoints.connectProtocol(endpoint, proto)
    return proto


async def flood(node: Node, sources: list[str], per_address: int) -> list[Idle]:
    """``per_address`` idle sockets from each source address, opened one after the other (oldest first)."""
    sockets = [await idle_socket(node, src) for src in sources for _ in range(per_address)]
    await sleep(0.5)                                  # the listener accepts (and gates) every one of them
    return sockets


def admitted(target: Node, validator: Node) -> bool:
    conn = target.p2p.connections.get(validator.p2p.peer_id)
    return conn is not None and conn.state == "ready"


@pytest.mark.parametrize("sources", [SAME_24, OTHER_24S], ids=["attackers-in-its-slash-24", "attackers-in-other-24s"])
@pytest_twisted.ensureDeferred
async def test_a_validator_is_admitted_past_64_idle_sockets_from_8_addresses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sources: list[str]) -> None:
    # Only eviction may let the validator in here: the pre-TLS timeout is pushed far beyond the test.
    monkeypatch.setattr(protocol, "PRE_TLS_TIMEOUT", 60.0, raising=False)
    monkeypatch.setattr(protocol, "HANDSHAKE_TIMEOUT", 60.0)
    net = Net(tmp_path, 2)
    net.nodes[0] = net.make(0, max_outbound="0")     # the target only accepts: the validator must get in inbound
    try:
        await net.start(connect=False)
        target, validator = net.nodes
        # The target does not know where the validator is (no reserved room for it): eviction alone.
        sockets = await flood(target, sources, PER_ADDRESS)
        held = [s for s in sockets if not s.lost.called]
        start = time.monotonic()
        validator.p2p.peerstore.add(target.p2p.listen_addr, "bootstrap", reactor.seconds())
        await wait_for(lambda: admitted(target, validator), ADMIT_WITHIN, "the validator admitted")
        took = time.monotonic() - start
        conn = target.p2p.connections[validator.p2p.peer_id]
        assert conn.inbound and conn.is_validator
        assert target.p2p.is_validator_ip("127.0.0.1")          # remembered: room is kept for it from now on
        print(f"\nvalidator admitted {took:.2f} s after learning the address ({len(held)} idle sockets held)")
        # Few slots per /24: eight addresses in one /24 hold 16 at most; 8 other /24s are capped overall.
        cap = MAX_PENDING_PER_PREFIX if sources is SAME_24 else MAX_PENDING_INBOUND - RESERVED_PENDING
        assert len(held) <= cap
        assert sum(1 for s in sockets if s.lost.called) >= len(sockets) - cap     # the oldest were evicted
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_sockets_that_do_not_finish_tls_are_closed_by_the_short_pre_tls_timeout(tmp_path: Path) -> None:
    net = Net(tmp_path, 1, observers=1)
    try:
        await net.start(connect=False)
        node, observer = net.nodes
        # Two sockets that send nothing and one that starts a TLS record (a 512-byte handshake) and stalls.
        sockets = [await idle_socket(node, "127.0.0.2"), await idle_socket(node, "127.0.0.3"),
                   await idle_socket(node, "127.0.0.4", first=b"\x16\x03\x01\x02\x00\x01")]
        await wait_for(lambda: all(s.lost.called for s in sockets), TLS_DEADLINE + 1.0, "idle sockets closed")
        lived = [s.closed_at - s.opened for s in sockets if s.closed_at is not None]
        print(f"\npre-TLS sockets closed after {min(lived):.2f} .. {max(lived):.2f} s")
        assert min(lived) >= TLS_DEADLINE - 1.0                  # held for the timeout, not refused at once
        # An honest peer that finishes TLS and hello in time is not touched by that timer.
        observer.p2p.peerstore.add(node.p2p.listen_addr, "bootstrap", reactor.seconds())
        await wait_for(lambda: admitted(node, observer), 5.0, "the observer admitted")
        await sleep(TLS_DEADLINE + 0.5)
        assert admitted(node, observer)
    finally:
        await net.stop()


class FakePending:
    """Stands in for an inbound PeerConnection that has not finished TLS (what the admission code touches)."""

    def __init__(self) -> None:
        self.pending_ip: str | None = None
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def start_pending(p2p: Any, ip: str) -> FakePending | None:
    """What the listener does on accept: ask pre_tls_refusal, then count the connection as pending."""
    if p2p.pre_tls_refusal(ip) != Reason.OK:
        return None
    conn = FakePending()
    p2p.pending_started(conn, ip)
    return conn


@pytest_twisted.ensureDeferred
async def test_pre_tls_admission_counts_an_ipv6_slash_64_as_one_address(tmp_path: Path) -> None:
    net = Net(tmp_path, 1, max_per_ip="3")
    try:
        await net.start(connect=False)
        p2p = net.nodes[0].p2p
        now = reactor.seconds()
        # A ban of one IPv6 address covers its /64, not the next /64.
        p2p.peers.set_ban("2001:db8:1:2::5", 3600, now)
        assert p2p.pre_tls_refusal("2001:db8:1:2::6") == Reason.BANNED
        assert p2p.pre_tls_refusal("2001:db8:1:2:ffff:ffff:ffff:ffff") == Reason.BANNED
        assert p2p.pre_tls_refusal("2001:db8:1:3::1") == Reason.OK
        # max_per_ip counts every connection from the /64 together.
        pids = [k.peer_id for k in make_keys(3, seed=40)]
        for i, pid in enumerate(pids):
            p2p.peers.connected(pid, f"2001:db8:7:7::{i + 1}", True, False)
        assert p2p.pre_tls_refusal("2001:db8:7:7::99") == Reason.TOO_MANY_CONNECTIONS
        assert p2p.pre_tls_refusal("2001:db8:7:8::99") == Reason.OK
        for pid in pids:
            p2p.peers.disconnected(pid)
        # Pending connections from one /64 count as one address: a fourth (max_per_ip 3) from new addresses
        # of the same /64 evicts the oldest of them; another /64's pending connection is not touched.
        other = start_pending(p2p, "2001:db8:9:9::1")
        mine = [start_pending(p2p, f"2001:db8:1:9::{i}") for i in range(1, 4)]
        assert other is not None and all(c is not None for c in mine)
        newest = start_pending(p2p, "2001:db8:1:9:abcd::1")
        assert newest is not None
        assert [c.aborted for c in mine if c is not None] == [True, False, False]
        assert not other.aborted and not newest.aborted
        for c in [other, newest, *mine]:
            p2p.pending_done(c)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_pending_room_is_kept_for_addresses_where_validators_are_known(tmp_path: Path) -> None:
    net = Net(tmp_path, 2)
    try:
        await net.start(connect=False)
        p2p = net.nodes[0].p2p
        validator_pid = net.nodes[1].p2p.peer_id
        # The target's peer store says validator node1 listens at 198.51.100.7 (a peer-store entry whose
        # PeerID is in the validator set): that address gets reserved pending room before TLS.
        p2p.peerstore.add(format_multiaddr("198.51.100.7", 9333, validator_pid), "exchange", reactor.seconds())
        p2p.peerstore.add(format_multiaddr("2001:db8:aa:1::7", 9333, validator_pid), "exchange", reactor.seconds())
        p2p.refresh_validator_ips(force=True)
        assert p2p.is_validator_ip("2001:db8:aa:1::99") and not p2p.is_validator_ip("2001:db8:aa:2::7")
        assert not p2p.is_validator_ip("198.51.100.8")
        validator_conn = start_pending(p2p, "198.51.100.7")
        assert validator_conn is not None
        # Attackers from the validator's /24 and from 100 other /64s churn the table: each newcomer evicts
        # the oldest of the most crowded prefix, never the validator's connection.
        attackers = [start_pending(p2p, f"198.51.100.{10 + i % 100}") for i in range(200)]
        attackers += [start_pending(p2p, f"2001:db8:{i:x}::1") for i in range(1, 101)]
        assert not validator_conn.aborted
        # A second connection from the validator's address still gets in with the table full of attackers.
        second = start_pending(p2p, "198.51.100.7")
        assert second is not None and not validator_conn.aborted
        v6 = start_pending(p2p, "2001:db8:aa:1::5")                   # the validator's /64: reserved too
        assert v6 is not None and p2p.pending.count(reserved=True) == 3
        p2p.pending_done(v6)
        alive = [a for a in attackers if a is not None and not a.aborted]
        assert len(alive) <= MAX_PENDING_INBOUND - RESERVED_PENDING
        assert sum(1 for a in alive if a.pending_ip and a.pending_ip.startswith("198.51.100.")) \
            <= MAX_PENDING_PER_PREFIX - 2
        # Without the peer-store entry the same address is an ordinary one: attackers of its /24 evict it.
        p2p.pending_done(validator_conn)
        p2p.pending_done(second)
        p2p.peerstore.forget(validator_pid)
        p2p.refresh_validator_ips(force=True)
        plain = start_pending(p2p, "198.51.100.7")
        assert plain is not None
        for i in range(40):
            start_pending(p2p, f"198.51.100.{200 + i % 50}")
        assert plain.aborted
    finally:
        await net.stop()
