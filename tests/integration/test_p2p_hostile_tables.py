"""Hostile peers against the node's tables and logs, over real TLS on 127.0.0.1 (issue 11, findings 6 and 9).

* Memory held for free (finding 6): junk far-future votes must not grow ``conn.sent_ids``; a flood of
  ``new_block`` announcements (heights we hold, made-up hashes and our own) must not evict honest
  seen-cache entries nor write a log line each, and costs the flooder reputation; ``reject`` without a
  request id is metered and its log line rate-limited; throwaway identities saying hello must not flush
  the honest entries of the peer store.
* Honest peers banned by honest peers over rate limits (finding 9): a client syncs from a server whose
  ``rate_limit`` is far below its own; it backs off on ``rate_limited`` and finishes, not banned.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from tests.chaingen import ChainBuilder, make_genesis
from tests.integration.test_p2p_misbehaviour import honest_unaffected, start_pair
from tests.p2pnet import Net, RawPeer, banned, connect, make_keys, score, wait_for
from timecoin.errors import Reason
from timecoin.ledger.block import NIL_HASH, Vote, VoteType
from timecoin.node import Node
from timecoin.p2p import discovery
from timecoin.p2p.discovery import PeerStore, Source, format_multiaddr
from timecoin.p2p.gossip import SeenCache, message_id
from timecoin.p2p.peers import ADDR_PREFIX
from timecoin.p2p.service import ENVELOPE_HEADER
from timecoin.store import PEERS, Store
from timecoin.wire import messages as m
from timecoin.wire.framing import encode_frame


async def ready_from_zero(key: Any, target: Node, listen_addrs: list[str] | None = None) -> RawPeer:
    """A raw peer that says a correct hello claiming height 0 (so every height it announces is new)."""
    peer = await connect(key, target)
    body = target.p2p.hello_body() | {"listen_addrs": listen_addrs or [], "agent": "attacker",
                                      "best_height": 0, "finalized_height": 0}
    peer.send(m.MsgType.HELLO, body)
    pid = key.peer_id
    await wait_for(lambda: pid in target.p2p.connections and target.p2p.connections[pid].state == "ready",
                   5.0, "attacker admitted")
    return peer


class LogLines:
    """Every log event that names ``peer`` (a twisted.logger observer on the global publisher)."""

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("peer") == self.peer_id:
            self.events.append(event)

    def __enter__(self) -> LogLines:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)


def frames(payloads: list[bytes]) -> bytes:
    return b"".join(encode_frame(p) for p in payloads)


# -- finding 6 (a): sent_ids holds only what we accepted or sent -------------------------------------------
@pytest_twisted.ensureDeferred
async def test_junk_far_future_votes_do_not_grow_the_connections_sent_ids(tmp_path: Path) -> None:
    net = await start_pair(tmp_path)
    try:
        target = net.nodes[0]
        key = make_keys(1, seed=60)[0]
        peer = await connect_ready_plain(key, target)
        conn = target.p2p.connections[key.peer_id]
        height = target.consensus.engine.height
        # Keyless junk: the same made-up signature, rounds and heights far ahead (cheap to make, each distinct).
        junk = [m.encode_message(m.MsgType.VOTE, Vote(VoteType.PREVOTE, height + 10 + i // 100, i % 100, NIL_HASH,
                                                      target.key.address, b"\x01" * 64).to_wire())
                for i in range(20_000)]
        ids = {message_id(m.MsgType.VOTE, p[ENVELOPE_HEADER:]) for p in junk}
        peer.transport.write(frames(junk))
        await wait_for(lambda: conn.messages_in >= len(junk) or peer.lost.called, 30.0, "the junk handled")
        held = sum(1 for mid in ids if mid in conn.sent_ids)
        assert held == 0, f"{held} junk vote ids held in sent_ids"
        assert len(conn.sent_ids) < 1_000                                 # only this height's real traffic
        assert score(target, key) <= 0                                    # and it earned nothing
        await honest_unaffected(net)
    finally:
        await net.stop()


async def connect_ready_plain(key: Any, target: Node) -> RawPeer:
    """A raw peer at the target's height (hello with its best height), so it is offered the height's gossip."""
    peer = await connect(key, target)
    peer.send(m.MsgType.HELLO, target.p2p.hello_body() | {"listen_addrs": [], "agent": "attacker"})
    await wait_for(lambda: key.peer_id in target.p2p.connections
                   and target.p2p.connections[key.peer_id].state == "ready", 5.0, "attacker admitted")
    return peer


# -- finding 6 (b): announcements and rejects without a request id are metered ------------------------------
@pytest_twisted.ensureDeferred
async def test_a_new_block_flood_keeps_honest_seen_entries_logs_little_and_costs_reputation(tmp_path: Path) -> None:
    net = await start_pair(tmp_path)
    try:
        target = net.nodes[0]
        await wait_for(lambda: target.store.tip_height() >= 5, 15.0, "a few blocks")
        target.p2p.seen = SeenCache(size=2_000)            # small, so a flood that inserts would flush it
        honest = message_id(m.MsgType.VOTE, b"an honest vote id")
        target.p2p.seen.add(honest)
        key = make_keys(1, seed=61)[0]
        with LogLines(key.peer_id) as lines:
            peer = await ready_from_zero(key, target)
            conn = target.p2p.connections[key.peer_id]
            tip = target.store.tip_height()
            made_up = [m.encode_message(m.MsgType.NEW_BLOCK, {"height": 1 + i % tip,
                                                              "hash": hashlib.sha256(b"%d" % i).digest()})
                       for i in range(10_000)]
            ours = [m.encode_message(m.MsgType.NEW_BLOCK, {"height": h, "hash": target.store.block_hash_at(h)})
                    for h in range(1, tip + 1)]
            flood = made_up[:tip] + ours + made_up[tip:]
            peer.transport.write(frames(flood))
            await wait_for(lambda: conn.messages_in >= len(flood) or peer.lost.called, 30.0, "the flood handled")
            assert honest in target.p2p.seen, "the flood evicted an honest seen-cache entry"
            assert len(lines.events) <= 10, f"{len(lines.events)} log lines about the flooder"
            assert score(target, key) < 0
        await honest_unaffected(net)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_reject_flood_without_request_id_is_metered_and_logged_little(tmp_path: Path) -> None:
    net = await start_pair(tmp_path)
    try:
        target = net.nodes[0]
        key = make_keys(1, seed=62)[0]
        with LogLines(key.peer_id) as lines:
            peer = await ready_from_zero(key, target)
            conn = target.p2p.connections[key.peer_id]
            flood = [m.encode_message(m.MsgType.REJECT, {"reason": int(Reason.TIMEOUT), "message": f"no {i}"})
                     for i in range(10_000)]
            peer.transport.write(frames(flood))
            await wait_for(lambda: conn.messages_in >= len(flood) or peer.lost.called, 30.0, "the flood handled")
            assert len(lines.events) <= 10, f"{len(lines.events)} log lines about the flooder"
            assert score(target, key) < 0
        await honest_unaffected(net)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_evidence_we_cannot_judge_does_not_enter_the_seen_cache(tmp_path: Path) -> None:
    # Keyless junk "evidence" for heights far ahead (no validator set to judge it by): dropped unblamed,
    # and so it must not take seen-cache room from honest entries either.
    net = await start_pair(tmp_path)
    try:
        target = net.nodes[0]
        target.p2p.seen = SeenCache(size=2_000)
        honest = message_id(m.MsgType.VOTE, b"an honest vote id")
        target.p2p.seen.add(honest)
        key = make_keys(1, seed=66)[0]
        peer = await connect_ready_plain(key, target)
        conn = target.p2p.connections[key.peer_id]
        far = target.store.tip_height() + 1_000_000
        junk = []
        for i in range(5_000):
            a, b = (Vote(VoteType.PREVOTE, far + i, 0, h, target.key.address, b"\x01" * 64)
                    for h in (NIL_HASH, b"\x07" * 32))
            junk.append(m.encode_message(m.MsgType.EVIDENCE, {"vote_a": a.to_wire(), "vote_b": b.to_wire()}))
        peer.transport.write(frames(junk))
        await wait_for(lambda: conn.messages_in >= len(junk) or peer.lost.called, 30.0, "the junk handled")
        assert honest in target.p2p.seen, "junk evidence evicted an honest seen-cache entry"
        await honest_unaffected(net)
    finally:
        await net.stop()

# -- finding 6 (c): throwaway identities do not flush the peer store ----------------------------------------
@pytest_twisted.ensureDeferred
async def test_throwaway_identities_saying_hello_do_not_flush_honest_peer_store_entries(tmp_path: Path) -> None:
    net = await start_pair(tmp_path)
    try:
        target = net.nodes[0]
        now = reactor.seconds()
        store = PeerStore(None, rng=random.Random(1), self_id=target.p2p.peer_id, max_peers=20)
        honest = make_keys(20, seed=63)
        for i, k in enumerate(honest):
            addr = format_multiaddr("127.0.0.1", 1000 + i, k.peer_id)        # nobody listens there
            store.add(addr, Source.EXCHANGE, now)
            if i % 2 == 0:
                store.dial_succeeded(addr, now)                             # half of them reached once
            entry = store.get(k.peer_id)
            assert entry is not None
            entry.next_dial = now + 3600                                     # keep the dialer off them
        target.p2p.peerstore = store
        for i, k in enumerate(make_keys(60, seed=64)):
            listen = format_multiaddr("127.0.0.1", 2000 + i, k.peer_id)
            peer = await ready_from_zero(k, target, [listen])
            peer.transport.loseConnection()
            await peer.lost
        lost = [k.peer_id for k in honest if k.peer_id not in store]
        assert lost == [], f"{len(lost)} of 20 honest entries flushed"
        await honest_unaffected(net)
    finally:
        await net.stop()



@pytest_twisted.ensureDeferred
async def test_an_inbound_peers_listen_address_is_a_claim_until_its_connection_has_lasted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "MIN_SESSION", 1.0)
    net = Net(tmp_path, 1)
    try:
        await net.start(connect=False)
        target = net.nodes[0]
        key = make_keys(1, seed=65)[0]
        await ready_from_zero(key, target, [format_multiaddr("127.0.0.1", 3000, key.peer_id)])
        entry = target.p2p.peerstore.get(key.peer_id)
        assert entry is not None and entry.claimed                   # a stranger's word: memory only

        def stored() -> set[str]:
            return {k[len(ADDR_PREFIX):].decode() for k, _ in target.store.items(PEERS, ADDR_PREFIX)}

        assert key.peer_id not in stored()
        await wait_for(lambda: not entry.claimed, 5.0, "the claim confirmed once the connection lasted")
        assert key.peer_id in stored()
    finally:
        await net.stop()

# -- finding 9: an honest client backs off on rate_limited; the server does not ban it --------------------
@pytest_twisted.ensureDeferred
async def test_a_client_syncs_from_a_server_with_a_much_lower_rate_limit_and_is_not_banned(tmp_path: Path) -> None:
    # node0 serves 300 generated blocks with rate_limit 180/min (burst 4); node1, empty, is configured
    # for 2,400/min (burst 40) and so assumes node0 allows that much. Pings are rare so requests dominate.
    spec = make_genesis(validators=1, chain_id="timecoin-ratelimit")
    net = Net(tmp_path, 0, observers=2, genesis=spec.genesis, keys=make_keys(2, seed=80), sync_interval="1",
              ping_interval="10", rate_limit="2400", rate_limit_burst="40")
    net.nodes[0] = net.make(0, rate_limit="180", rate_limit_burst="4")
    builder = ChainBuilder(Store(net.chain_path(0)), spec)
    builder.build(300)
    top = builder.store.block_hash_at(300)
    builder.store.close()
    try:
        await net.start(connect=False)
        server, client = net.nodes
        net.connect(1, [0])
        await wait_for(lambda: client.store.tip_height() >= 300 or banned(server, client.key), 25.0,
                       "the client synced (or was banned)")
        assert not banned(server, client.key), f"banned at height {client.store.tip_height()} of 300"
        assert client.store.block_hash_at(300) == top
        assert score(server, client.key) >= -5
        assert client.p2p.peer_id in server.p2p.connections
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_refused_ping_slows_our_pace_and_is_not_counted_as_unanswered(tmp_path: Path) -> None:
    # Pings have no request id: a peer whose limit our ping exceeded answers reject rate_limited, id 0.
    net = Net(tmp_path, 1, ping_interval="3600")                       # the test sends the ping itself
    try:
        await net.start(connect=False)
        target = net.nodes[0]
        key = make_keys(1, seed=81)[0]
        peer = await ready_from_zero(key, target)
        conn = target.p2p.connections[key.peer_id]
        full = conn.assumed_rate

        def refuse(msg_type: m.MsgType, rid: int, body: Any) -> None:
            if msg_type == m.MsgType.PING:
                peer.send(m.MsgType.REJECT, {"reason": int(Reason.RATE_LIMITED), "message": "rate limited"}, rid)

        peer.on_message = refuse
        target.p2p._ping_all()
        await wait_for(lambda: conn.assumed_rate < full, 5.0, "our pace halved")
        assert conn.assumed_rate == pytest.approx(full / 2, rel=1e-2)
        assert not conn.ping_sent                                      # never to be answered: not outstanding
        assert score(target, key) == 0 and key.peer_id in target.p2p.connections
    finally:
        await net.stop()
