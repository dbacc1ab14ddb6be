"""Hostile peers on the wire (issue 16, Wire): slow senders, connection floods, half-open connections.

Real nodes (the production service tree, real LMDB in tmp_path) over real TCP/TLS on loopback; attackers
are raw clients in the same process. Linux routes all of 127.0.0.0/8 to lo, so an attacker binds its
own source address (127.0.0.2 ...) where the test needs many addresses. On loopback ``max_per_ip``
counts each address, but offences ban by PeerID only (``peers.py``: loopback is never banned by IP);
IP bans and per-IP limits on real addresses are the network-namespace tests' part.

The send bound is also checked without sockets (``timecoin.sim.feed``), where no kernel buffer size is
involved. Timeouts the code reads from module constants (``PRE_TLS_TIMEOUT``, ``HANDSHAKE_TIMEOUT``,
``CLOSE_GRACE``, ``MAX_SEND_BACKLOG``) are made small with monkeypatch, config ones (``ping_interval``)
through the node's config; every wait is bounded.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Protocol

from tests.integration.test_p2p_misbehaviour import honest_unaffected, start_pair
from tests.p2pnet import Net, RawPeer, banned, connect, connect_ready, make_keys, score, sleep, wait_for
from timecoin import crypto
from timecoin.consensus.engine import MAX_BUFFERED_PER_KIND, MAX_BUFFERED_ROUNDS, MAX_ROUND_AHEAD
from timecoin.errors import Reason
from timecoin.ledger.block import NIL_HASH, Vote, VoteType
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.node import Node
from timecoin.p2p import protocol, sendbuffer
from timecoin.p2p.identity import HostIdentity
from timecoin.p2p.peers import DELTAS, Event
from timecoin.sim.feed import attach_peer, frame
from timecoin.wire import messages as m
from timecoin.wire.framing import encode_frame

DRIP = 0.25                                   # s between the bytes of a slow sender


class Dripper(Protocol):
    """A plain TCP client that sends ``data`` one byte per DRIP seconds and notes when it is closed."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.opened = time.monotonic()
        self.closed_at: float | None = None
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.sent = 0

    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        self.opened = time.monotonic()
        self._next()

    def _next(self) -> None:
        if self.closed_at is None and self.sent < len(self.data):
            self.transport.write(self.data[self.sent:self.sent + 1])
            self.sent += 1
            reactor.callLater(DRIP, self._next)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted API
        self.closed_at = time.monotonic()
        self.lost.callback(None)


async def drip_tcp(node: Node, data: bytes, source: str = "127.0.0.2") -> Dripper:
    port = node.p2p.listening_port.getHost().port
    proto = Dripper(data)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5, bindAddress=(source, 0))
    await endpoints.connectProtocol(endpoint, proto)
    return proto


def drip(peer: RawPeer, data: bytes, stop: list[bool]) -> None:
    """Write ``data`` to a raw TLS peer one byte per DRIP seconds (until closed or ``stop[0]``)."""
    if data and not peer.lost.called and not stop[0]:
        cast(Any, peer.transport).write(data[:1])
        reactor.callLater(DRIP, drip, peer, data[1:], stop)


def admitted(target: Node, peer_id: str) -> bool:
    conn = target.p2p.connections.get(peer_id)
    return conn is not None and conn.state == "ready"


# -- 1. slow senders: one byte at a time never extends the TLS, hello or idle deadlines --------------------
@pytest_twisted.ensureDeferred
async def test_a_tls_handshake_dripped_a_byte_at_a_time_loses_its_slot_at_the_pre_tls_deadline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "PRE_TLS_TIMEOUT", 1.5)
    net = await start_pair(tmp_path)
    try:
        target, honest = net.nodes
        # A real TLS ClientHello's first bytes (record header, handshake header): it never completes. Eight
        # such clients from eight addresses hold sockets while an honest peer connects.
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 500
        slow = [await drip_tcp(target, hello, f"127.0.0.{i}") for i in range(2, 10)]
        fresh = make_keys(1, seed=160)[0]
        await connect_ready(fresh, target)
        assert not any(s.lost.called for s in slow)          # the honest peer got in while they were held
        await wait_for(lambda: all(s.lost.called for s in slow), 1.5 + 2.0, "the slow TLS clients closed")
        for s in slow:
            assert s.closed_at is not None and s.closed_at - s.opened <= 1.5 + 1.0
            assert 3 <= s.sent < 40                           # it was sending all along, and far from done
        assert admitted(target, fresh.peer_id)
        assert target.p2p.pending.count() == 0                # its pending slot is free again
        await honest_unaffected(net)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_hello_dripped_a_byte_at_a_time_loses_its_slot_at_the_handshake_deadline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "HANDSHAKE_TIMEOUT", 2.0)
    monkeypatch.setattr(protocol, "PRE_TLS_TIMEOUT", 2.0)
    net = await start_pair(tmp_path)
    try:
        target = net.nodes[0]
        key = make_keys(1, seed=161)[0]
        start = time.monotonic()
        peer = await connect(key, target)
        hello = encode_frame(m.encode_message(m.MsgType.HELLO, target.p2p.hello_body() | {"listen_addrs": []}))
        stop = [False]
        drip(peer, hello, stop)
        fresh = make_keys(1, seed=170)[0]
        await connect_ready(fresh, target)                    # an honest peer gets in while it is held
        assert not peer.lost.called
        await wait_for(lambda: peer.lost.called, 2.0 + 2.0, "the slow hello dropped")
        assert admitted(target, fresh.peer_id)
        stop[0] = True
        assert time.monotonic() - start <= 2.0 + 1.5
        assert not admitted(target, key.peer_id) and key.peer_id not in target.p2p.connections
        # A handshake that runs out of time is not provable (a slow link): a small charge, no ban.
        assert score(target, key) == DELTAS[Event.TIMEOUT] and not banned(target, key)
        await honest_unaffected(net)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_frame_dripped_after_hello_does_not_keep_an_unresponsive_peer_connected(tmp_path: Path) -> None:
    # ping_interval 0.5 s: a peer that answers no ping for 4 intervals is dropped. A peer stuck in the middle
    # of a frame cannot answer one (frames are read in order), however steadily its bytes come.
    net = Net(tmp_path, 1, observers=1, ping_interval="0.5")
    await net.start()
    try:
        await wait_for(lambda: min(net.heights()) >= 2 and len(net.nodes[0].p2p.connections) == 1, 15.0, "pair")
        target = net.nodes[0]
        key = make_keys(1, seed=162)[0]
        peer = await connect_ready(key, target)
        conn = target.p2p.connections[key.peer_id]
        start = time.monotonic()
        frame = encode_frame(m.encode_message(m.MsgType.PING, {"nonce": 1, "payload": b"\x00" * 60_000}))
        stop = [False]
        drip(peer, frame, stop)                              # a valid 60 kB ping, a byte at a time
        await wait_for(lambda: conn.state == "closed", 0.5 * 4 + 3.0, "the dripping peer dropped")
        stop[0] = True
        assert time.monotonic() - start <= 0.5 * 4 + 2.5
        assert conn.decoder.buffered > 0                     # it was dropped mid-frame
        assert score(target, key) == DELTAS[Event.TIMEOUT] and not banned(target, key)
        await honest_unaffected(net)
    finally:
        await net.stop()


# -- 2. connection floods from one address and from many ---------------------------------------------------
async def connect_from(key: crypto.PrivateKey, target: Node, source: str) -> RawPeer | None:
    """TLS from ``source`` and a correct hello; the peer if the target admitted it, else None (refused
    before TLS, or after it with a reject)."""
    port = target.p2p.listening_port.getHost().port
    tcp = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5, bindAddress=(source, 0))
    endpoint = endpoints.wrapClientTLS(cast(Any, HostIdentity(key).client_creator(target.p2p.peer_id)),
                                       cast(Any, tcp))
    peer = RawPeer()
    try:
        await endpoints.connectProtocol(endpoint, peer)
        await peer.handshake
    except Exception:                                    # refused before TLS: closed at accept
        return None
    peer.on_message = lambda t, rid, body: answer_ping(peer, t, rid, body)       # it stays: slots are held
    peer.send(m.MsgType.HELLO, target.p2p.hello_body() | {"listen_addrs": [], "agent": "flood"})
    for _ in range(100):
        if admitted(target, key.peer_id):
            return peer
        if peer.lost.called:
            return None
        await sleep(0.02)
    cast(Any, peer.transport).abortConnection()
    return None


def answer_ping(peer: RawPeer, msg_type: m.MsgType, rid: int, body: Any) -> None:
    if msg_type == m.MsgType.PING and not peer.lost.called:
        peer.send(m.MsgType.PONG, {"nonce": body.nonce, "payload": body.payload}, rid)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def flood_and_check(tmp_path: Path, sources: list[str], per_source: int, cap: int, **extra: str) -> None:
    """Two validators (both needed to finalize); ``len(sources) x per_source`` authenticated attackers
    connect to node0 first; then node1 must get in and the chain must keep growing, with at most ``cap``
    attackers admitted and the process's open fds bounded by what is admitted."""
    net = Net(tmp_path, 2, **extra)
    net.nodes[0] = net.make(0, max_outbound="0", **extra)     # node1 must get in inbound, past the flood
    try:
        await net.start(connect=False)
        target, validator = net.nodes
        before = open_fds()
        keys = make_keys(len(sources) * per_source, seed=163)
        peers = [await connect_from(k, target, src) for i, src in enumerate(sources)
                 for k in keys[i * per_source:(i + 1) * per_source]]
        held = [p for p in peers if p is not None]
        assert 0 < len(held) <= cap, f"{len(held)} attackers admitted, cap {cap}"
        inbound = sum(1 for c in target.p2p.connections.values() if c.inbound)
        assert inbound == len(held)
        await sleep(0.3)                                     # refused sockets finish closing
        # Each admitted attacker holds two fds in this process (its end and the node's); refused ones none.
        assert open_fds() - before <= 2 * len(held) + 8
        validator.p2p.peerstore.add(target.p2p.listen_addr, "bootstrap", reactor.seconds())
        await wait_for(lambda: admitted(target, validator.p2p.peer_id), 10.0, "the validator admitted")
        h = target.store.tip_height()
        await wait_for(lambda: target.store.tip_height() >= h + 3, 15.0, "the chain keeps finalizing")
        assert target.running and all(not banned(target, k) for k in keys)      # a connection is no offence
        assert all(not p.lost.called for p in held)                               # the flood is still there
        for p in held:
            cast(Any, p.transport).abortConnection()
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_connection_flood_from_one_address_gets_max_per_ip_slots_and_the_validator_still_gets_in(
        tmp_path: Path) -> None:
    await flood_and_check(tmp_path, ["127.0.0.7"], 30, cap=4, max_per_ip="4")


@pytest_twisted.ensureDeferred
async def test_a_connection_flood_from_many_addresses_fills_max_inbound_only_and_the_validator_still_gets_in(
        tmp_path: Path) -> None:
    sources = [f"127.0.0.{i}" for i in range(2, 32)]          # 30 addresses x 2 authenticated connections
    await flood_and_check(tmp_path, sources, 2, cap=12, max_per_ip="4", max_inbound="12", validator_slots="2")


# -- 3. half-open connections: a peer that stops reading ---------------------------------------------------
async def stop_reading(peer: RawPeer) -> None:
    """The raw peer stops reading its socket (and shrinks its receive buffer, so the kernel holds little)."""
    handle = cast(Any, peer.transport).transport.getHandle()
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    cast(Any, peer.transport).pauseProducing()


def ping_flood(peer: RawPeer, count: int, size: int) -> None:
    """``count`` pings each asking for a ``size``-byte echo (a pong carries the ping's payload back)."""
    for i in range(count):
        peer.send(m.MsgType.PING, {"nonce": i + 1, "payload": b"\xaa" * size}, request_id=0)


@pytest_twisted.ensureDeferred
async def test_a_peer_that_stops_reading_is_dropped_once_its_send_backlog_passes_the_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sendbuffer, "MAX_SEND_BACKLOG", 1 << 20)
    net = Net(tmp_path, 1, observers=1, max_frame_bytes="262144", rate_limit="6000", rate_limit_burst="400")
    await net.start()
    try:
        await wait_for(lambda: min(net.heights()) >= 2 and len(net.nodes[0].p2p.connections) == 1, 15.0, "pair")
        target = net.nodes[0]
        key = make_keys(1, seed=164)[0]
        peer = await connect_ready(key, target)
        conn = target.p2p.connections[key.peer_id]
        assert conn.sendbuf.limit == 1 << 20
        await stop_reading(peer)
        ping_flood(peer, 300, 60_000)                         # 18 MB of echoes it will never read
        await wait_for(lambda: conn.state == "closed", 15.0, "the non-reading peer dropped")
        assert conn.sendbuf.stalls >= 1 and conn.sendbuf.since_blocked > conn.sendbuf.limit
        # Our buffer for it held at most the transport's own 64 KiB plus the limit (and one frame).
        assert conn.messages_out < 300
        assert not banned(target, key)                        # a slow reader is not provable misbehaviour
        await honest_unaffected(net)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_closing_connection_that_cannot_flush_is_aborted_after_the_grace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sendbuffer, "CLOSE_GRACE", 1.0)
    monkeypatch.setattr(sendbuffer, "MAX_SEND_BACKLOG", 64 << 20)      # the backlog cap is not what ends it here
    net = Net(tmp_path, 1, observers=1, max_frame_bytes="262144", rate_limit="6000", rate_limit_burst="400",
              ping_interval="0.5")
    await net.start()
    try:
        await wait_for(lambda: min(net.heights()) >= 2 and len(net.nodes[0].p2p.connections) == 1, 15.0, "pair")
        target = net.nodes[0]
        key = make_keys(1, seed=165)[0]
        peer = await connect_ready(key, target)
        conn = target.p2p.connections[key.peer_id]
        await stop_reading(peer)
        ping_flood(peer, 300, 60_000)                         # 18 MB: more than the kernel buffers hold
        await wait_for(lambda: conn.sendbuf.blocked, 10.0, "our buffer for it full")
        # It answers no ping: dropped (closed) after 4 intervals; the close cannot flush to a peer that does
        # not read, so only the grace timer ends it.
        await wait_for(lambda: conn.state in ("closing", "closed"), 0.5 * 4 + 3.0, "closed for the missed pings")
        await wait_for(lambda: conn.state == "closed", 1.0 + 2.0, "aborted after the close grace")
        assert key.peer_id not in target.p2p.connections
        await honest_unaffected(net)
    finally:
        await net.stop()


# -- 4. message floods below the rate limit: served, never charged ----------------------------------------
@pytest_twisted.ensureDeferred
async def test_requests_paced_inside_the_rate_limit_are_all_served_and_never_charged(tmp_path: Path) -> None:
    # rate_limit 600 a minute (10/s), burst 10: the burst at once, then 5 a second (half the rate) for 4 s.
    net = Net(tmp_path, 1, observers=1, rate_limit="600", rate_limit_burst="10")
    await net.start()
    try:
        await wait_for(lambda: min(net.heights()) >= 2 and len(net.nodes[0].p2p.connections) == 1, 15.0, "pair")
        target = net.nodes[0]
        key = make_keys(1, seed=166)[0]
        peer = await connect_ready(key, target)
        for i in range(10):
            peer.send(m.MsgType.GET_STATUS, {}, request_id=i + 1)
        for i in range(20):
            await sleep(0.2)
            peer.send(m.MsgType.GET_STATUS, {}, request_id=100 + i)
        await wait_for(lambda: sum(1 for t, _ in peer.messages if t == m.MsgType.STATUS) == 30 or peer.lost.called,
                       10.0, "every request answered")
        assert sum(1 for t, _ in peer.messages if t == m.MsgType.STATUS) == 30
        assert peer.rejects() == [] and not peer.lost.called
        assert score(target, key) >= 0 and not banned(target, key)
        await honest_unaffected(net)
    finally:
        await net.stop()


# -- 5. replayed and cross-chain signed messages ----------------------------------------------------------
async def one_of_two_validators(tmp_path: Path) -> Net:
    """Validator node0 of a 2-validator chain, alone and quiet (round 0 of height 1 for the whole test):
    validator 1's key is held by the test, which signs real votes with it."""
    net = Net(tmp_path, 2, block_interval="3600", timeout_propose="3600", gossip_interval="3600",
              ping_interval="3600")
    net.nodes = net.nodes[:1]
    await net.start(connect=False)
    node = net.nodes[0]
    await wait_for(lambda: node.consensus.engine is not None and node.consensus.engine.height >= 1, 10.0, "engine")
    return net


def voters(engine: Any, round_: int, vtype: VoteType) -> dict[bytes, Vote]:
    """The engine's stored votes of (round, type) at its height, by validator address."""
    held = engine.votes.sets.get((round_, vtype))
    return {} if held is None else dict(held.votes)


@pytest_twisted.ensureDeferred
async def test_a_valid_vote_replayed_thousands_of_times_is_taken_once_and_costs_a_hash_per_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = await one_of_two_validators(tmp_path)
    try:
        node = net.nodes[0]
        engine = node.consensus.engine
        vote = Vote(VoteType.PREVOTE, engine.height, 0, NIL_HASH, net.keys[1].address).signed(
            net.keys[1], node.genesis.chain_id)
        peer = await connect_ready(make_keys(1, seed=167)[0], node)
        decoded: list[int] = []
        real = m.decode_message

        def counting(payload: bytes) -> Any:
            if payload and payload[0] == int(m.MsgType.VOTE):
                decoded.append(1)
            return real(payload)

        monkeypatch.setattr(m, "decode_message", counting)
        accepted, copies = node.p2p.accepted[m.MsgType.VOTE], node.p2p.duplicates[m.MsgType.VOTE]
        frame = encode_frame(m.encode_message(m.MsgType.VOTE, vote.to_wire()))
        cast(Any, peer.transport).write(frame * 3_000)
        await wait_for(lambda: node.p2p.duplicates[m.MsgType.VOTE] - copies >= 2_999, 15.0, "the copies counted")
        assert node.p2p.accepted[m.MsgType.VOTE] == accepted + 1             # one effect
        assert len(decoded) == 1                                            # copies never decoded
        assert voters(engine, 0, VoteType.PREVOTE) == {net.keys[1].address: vote}   # held once
        # A relay sends copies routinely: no charge, and the peer stays.
        assert 0 <= node.p2p.peers.score(make_keys(1, seed=167)[0].peer_id) <= 1 and not peer.lost.called
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_validators_vote_signed_for_another_chain_costs_invalid_signature_and_a_ban(tmp_path: Path) -> None:
    net = await one_of_two_validators(tmp_path)
    try:
        node = net.nodes[0]
        engine = node.consensus.engine
        key = make_keys(1, seed=168)[0]
        peer = await connect_ready(key, node)
        # The real validator key, the right height, round and signer: only the chain differs. The chain id is
        # part of what is signed (crypto.signing_digest), so here the signature does not verify.
        foreign = Vote(VoteType.PREVOTE, engine.height, 0, NIL_HASH, net.keys[1].address).signed(
            net.keys[1], "timecoin-elsewhere")
        peer.send(m.MsgType.VOTE, foreign.to_wire())
        await wait_for(lambda: peer.lost.called, 5.0, "the sender dropped")
        assert score(node, key) == DELTAS[Event.INVALID_SIGNATURE] and banned(node, key)
        assert node.p2p.accepted[m.MsgType.VOTE] == 0 and net.keys[1].address not in voters(engine, 0,
                                                                                           VoteType.PREVOTE)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_tx_of_another_chain_is_refused_and_relabelled_for_ours_it_costs_a_ban(tmp_path: Path) -> None:
    net = await one_of_two_validators(tmp_path)
    try:
        node = net.nodes[0]
        key = make_keys(1, seed=169)[0]
        peer = await connect_ready(key, node)
        sender = net.keys[1]                                  # funded at genesis: only the chain is wrong
        elsewhere = Transaction.create(sender, TxKind.TRANSFER, "timecoin-elsewhere", 0, 10_000, 1, key.address)
        peer.send(m.MsgType.TX, elsewhere.to_wire(), request_id=1)
        await wait_for(lambda: peer.rejects(), 5.0, "the foreign tx refused")
        assert peer.rejects() == [int(Reason.WRONG_CHAIN)] and len(node.mempool) == 0
        # Not a race (an honest peer's mempool refuses it too), but charged as an invalid tx: -1, no ban.
        assert score(node, key) == DELTAS[Event.INVALID_TX] and not peer.lost.called
        # The same signature with our chain id written in: the chain id is signed, so it does not verify.
        relabelled = replace(elsewhere, chain_id=node.genesis.chain_id)
        peer.send(m.MsgType.TX, relabelled.to_wire(), request_id=2)
        await wait_for(lambda: peer.lost.called, 5.0, "the forger dropped")
        assert peer.rejects()[-1] == int(Reason.BANNED) and len(node.mempool) == 0
        assert score(node, key) == DELTAS[Event.INVALID_TX] + DELTAS[Event.INVALID_SIGNATURE] and banned(node, key)
    finally:
        await net.stop()


# -- 6. a validator's valid but useless votes: far heights, far rounds ------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_validators_valid_votes_for_far_heights_and_rounds_are_bounded_and_do_not_stall_the_chain(
        tmp_path: Path) -> None:
    # Four validators; three run, the test holds the fourth key (3 of 4 > 2/3: the chain finalizes without it).
    net = Net(tmp_path, 4, block_interval="1")        # a height lasts long enough to sign for it
    net.nodes = net.nodes[:3]
    await net.start()
    try:
        await wait_for(lambda: min(net.heights()) >= 2, 20.0, "three validators finalizing")
        target = net.nodes[0]
        byz = net.keys[3]
        peer = await connect_ready(byz, target)
        conn = target.p2p.connections[byz.peer_id]
        assert conn.is_validator
        chain_id = target.genesis.chain_id

        def signed(height: int, round_: int, vtype: VoteType) -> bytes:
            v = Vote(vtype, height, round_, NIL_HASH, byz.address).signed(byz, chain_id)
            return encode_frame(m.encode_message(m.MsgType.VOTE, v.to_wire()))

        batches: list[Callable[[int, int], list[bytes]]] = [
            lambda h, r: [signed(h + 2 + i, 0, VoteType.PREVOTE) for i in range(1_000)],               # far heights
            lambda h, r: [signed(h, r + MAX_ROUND_AHEAD + 1 + i, VoteType.PREVOTE) for i in range(1_000)],  # far rounds
            lambda h, r: [signed(h + 1, i, t) for i in range(50) for t in VoteType],                   # next height
            lambda h, r: [signed(h, r + 1 + i, t) for i in range(MAX_ROUND_AHEAD) for t in VoteType],  # near rounds
        ]
        start_height = target.store.tip_height()
        most_sets = most_next = 0
        for make in batches:
            e = target.consensus.engine
            cast(Any, peer.transport).write(b"".join(make(e.height, e.round)))    # signed for the moment's height
            for _ in range(10):
                await sleep(0.05)
                e = target.consensus.engine
                most_sets = max(most_sets, len(e.votes.sets))
                most_next = max(most_next, len(e._next_height_msgs))
        print(f"\nvote sets held at most {most_sets}, next-height messages {most_next}, score {score(target, byz)}")
        await wait_for(lambda: target.store.tip_height() >= start_height + 3, 15.0, "the chain keeps finalizing")
        # Held within the engine's bounds: rounds up to MAX_ROUND_AHEAD past the current one (two vote types
        # each, and the honest nodes' later rounds), the next height's per-sender caps.
        assert MAX_ROUND_AHEAD < most_sets <= 2 * (MAX_ROUND_AHEAD + 3), most_sets    # the near rounds were taken
        assert 0 < most_next <= MAX_BUFFERED_ROUNDS * MAX_BUFFERED_PER_KIND * 2 + 3 * 2 * 2, most_next
        # Far heights and rounds are what a lagging or partitioned honest validator sends too: not provable,
        # at most one small charge a window, never a ban (the bound above is what protects).
        assert not banned(target, byz) and score(target, byz) > DELTAS[Event.MALFORMED_FRAME]
        assert conn.decoder.frames_dropped >= 1_000 * 0.9            # far heights: skipped while framing
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_what_is_written_to_a_full_transport_is_capped_exactly(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The same bound without sockets (no kernel buffer sizes involved): a fed peer whose transport says it is
    # full (pauseProducing, as TCP does past 64 KiB) gets pongs until the next one would pass the limit.
    monkeypatch.setattr(sendbuffer, "MAX_SEND_BACKLOG", 1 << 20)
    net = Net(tmp_path, 1, block_interval="3600", timeout_propose="3600", gossip_interval="3600",
              ping_interval="3600", max_frame_bytes="262144", rate_limit_burst="400")
    await net.start(connect=False)
    try:
        node = net.nodes[0]
        peer = attach_peer(node, make_keys(1, seed=171)[0])
        ping = frame(m.MsgType.PING, {"nonce": 1, "payload": b"\xaa" * 60_000})
        peer.feed(ping * 40)                                   # a transport that drains: no bound applies
        assert peer.conn.state == "ready" and len(peer.written()) > 40 * 60_000
        peer.conn.sendbuf.pauseProducing()
        for _ in range(40):
            peer.feed(ping)
            if peer.conn.state != "ready":
                break
        written = len(peer.written())
        assert peer.conn.state in ("closing", "closed") and peer.transport.disconnecting
        assert written <= peer.conn.sendbuf.limit < written + len(ping) + 64     # up to the limit, not past it
        assert not node.p2p.peers.is_banned(peer.peer_id, None, reactor.seconds())
    finally:
        await net.stop()
