"""Misbehaving peers over real TLS on 127.0.0.1: each fault costs what peers.DELTAS says, bans persist.

The attacker is a raw client with a real libp2p TLS identity that writes whatever bytes it likes; the
node under attack is the production service tree. Honest peers connected at the same time are not
affected (their score stays >= 0 and the chain keeps growing).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from tests.p2pnet import Net, banned, connect, connect_ready, make_keys, score, sleep, wait_for
from timecoin.errors import Reason
from timecoin.ledger.block import NIL_HASH, Vote, VoteType
from timecoin.p2p.discovery import format_multiaddr
from timecoin.p2p.peers import DELTAS, GOOD_PER_WINDOW, Event
from timecoin.wire import messages as m


async def start_pair(tmp_path: Path) -> Net:
    """A validator (node0) and an honest observer (node1) connected to it; the chain is growing."""
    net = Net(tmp_path, 1, observers=1)
    await net.start()
    await wait_for(lambda: min(net.heights()) >= 2 and len(net.nodes[0].p2p.connections) == 1, 15.0,
                   "pair connected and growing")
    return net


async def honest_unaffected(net: Net) -> None:
    target, honest = net.nodes
    h = honest.store.tip_height()
    await wait_for(lambda: honest.store.tip_height() >= h + 2, 10.0, "honest observer keeps following")
    assert score(target, honest.key) >= 0 and not banned(target, honest.key)
    assert honest.p2p.peer_id in target.p2p.connections


@pytest_twisted.ensureDeferred
async def test_garbage_bytes_cost_a_malformed_frame_and_ban(tmp_path: Path) -> None:
    net = await start_pair(tmp_path)
    try:
        key = make_keys(1, seed=9)[0]
        peer = await connect_ready(key, net.nodes[0])
        peer.transport.write(b"\x00\x00\x00\x06" + b"\xff" * 6)          # a frame, but no message
        await wait_for(lambda: peer.lost.called, 5.0, "attacker dropped")
        assert score(net.nodes[0], key) == DELTAS[Event.MALFORMED_FRAME] and banned(net.nodes[0], key)
        await honest_unaffected(net)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_an_oversized_length_prefix_costs_the_connection_not_our_memory(tmp_path: Path) -> None:
    net = await start_pair(tmp_path)
    try:
        key = make_keys(1, seed=10)[0]
        peer = await connect_ready(key, net.nodes[0])
        conn = net.nodes[0].p2p.connections[key.peer_id]
        peer.transport.write(b"\x80\x00\x00\x00" + b"\x00" * 1000)      # announces a 2 GiB frame
        await wait_for(lambda: peer.lost.called, 5.0, "attacker dropped")
        assert conn.decoder.buffered == 0 and conn.inbox_bytes == 0
        assert score(net.nodes[0], key) == DELTAS[Event.OVERSIZED_FRAME] and banned(net.nodes[0], key)
        await honest_unaffected(net)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_vote_with_a_bad_signature_costs_invalid_signature(tmp_path: Path) -> None:
    net = await start_pair(tmp_path)
    try:
        target = net.nodes[0]
        key = make_keys(1, seed=11)[0]
        peer = await connect_ready(key, target)
        # The chain grows fast: a vote for a height the engine has just left is dropped unjudged (and free),
        # so the forgery is sent for the height of the moment until one is judged (bounded).
        for _ in range(50):
            height = target.consensus.engine.height
            forged = Vote(VoteType.PREVOTE, height, 0, NIL_HASH, target.key.address, b"\x01" * 64)
            peer.send(m.MsgType.VOTE, forged.to_wire())
            await sleep(0.05)
            if score(target, key) < 0 or peer.lost.called:
                break
        await wait_for(lambda: score(target, key) < 0, 5.0, "the forged vote judged")
        assert score(target, key) == DELTAS[Event.INVALID_SIGNATURE] and banned(target, key)
        await wait_for(lambda: peer.lost.called, 5.0, "attacker dropped")
        await honest_unaffected(net)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_request_flood_is_rate_limited_then_banned_and_the_ban_survives_restart(tmp_path: Path) -> None:
    net = await start_pair(tmp_path)
    try:
        target = net.nodes[0]
        key = make_keys(1, seed=12)[0]
        peer = await connect_ready(key, target)
        burst = target.config.rate_limit_burst
        for i in range(burst + 40):
            peer.send(m.MsgType.GET_STATUS, {}, request_id=i + 1)
        await wait_for(lambda: peer.lost.called, 10.0, "flooder dropped")
        statuses = sum(1 for t, _ in peer.messages if t == m.MsgType.STATUS)
        assert burst <= statuses <= burst + 2                 # the burst was served (plus a refill at most)
        assert Reason.RATE_LIMITED in peer.rejects()
        # Each refusal costs RATE_LIMITED; it ended banned (<= -50) after a bounded number of them.
        refused = peer.rejects().count(Reason.RATE_LIMITED)
        assert refused * DELTAS[Event.RATE_LIMITED] <= -50 and score(target, key) <= -50
        assert banned(target, key)
        await honest_unaffected(net)

        # Restart the target on the same store: the ban is still there and enforced on reconnect.
        await target.stopService()
        net.nodes[0] = target = net.make(0)
        target.startService()
        await wait_for(lambda: target.p2p.listen_addr, 5.0, "restarted target listening")
        assert banned(target, key)
        again = await connect(key, target)
        again.send(m.MsgType.HELLO, target.p2p.hello_body() | {"listen_addrs": []})
        await wait_for(lambda: again.lost.called, 5.0, "banned peer refused")
        assert Reason.BANNED in again.rejects()
        assert key.peer_id not in target.p2p.connections
        # The honest observer reconnects (it redials its bootstrap address) and is welcome.
        net.nodes[1].p2p.peerstore.add(target.p2p.listen_addr, "bootstrap", reactor.seconds())
        await wait_for(lambda: net.nodes[1].p2p.peer_id in target.p2p.connections, 15.0, "honest peer back")
        await honest_unaffected(net)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_dialing_a_peer_that_presents_another_key_is_refused(tmp_path: Path) -> None:
    # Two fresh nodes, never connected: the dialer is told the target's address belongs to another key.
    net = Net(tmp_path, 1, observers=1)
    try:
        await net.start(connect=False)
        dialer, target = net.nodes
        impostor_id = make_keys(1, seed=13)[0].peer_id            # what we think lives at target's address
        port = target.p2p.listening_port.getHost().port
        addr = format_multiaddr("127.0.0.1", port, impostor_id)
        dialer.p2p.peerstore.add(addr, "exchange", reactor.seconds())
        admitted: set[str] = set()

        def failed_once() -> bool:
            admitted.update(dialer.p2p.connections, target.p2p.connections)
            entry = dialer.p2p.peerstore.get(impostor_id)
            return entry is not None and entry.failures >= 1

        await wait_for(failed_once, 10.0, "the dial recorded as failed", step=0.01)
        entry = dialer.p2p.peerstore.get(impostor_id)
        assert entry is not None and entry.next_dial > reactor.seconds() and entry.last_seen is None
        for _ in range(30):                                           # and keep watching a while
            failed_once()
            await sleep(0.01)
        assert admitted == set()                                      # no connection, on either side, ever
        assert target.p2p.peer_id not in dialer.p2p.peerstore         # the real key is not learned from it
        assert not dialer.p2p.peers.is_connected(impostor_id)
        assert not dialer.p2p.peers.is_connected(target.p2p.peer_id)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_node_of_another_genesis_is_told_why_and_disconnected(tmp_path: Path) -> None:
    net = await start_pair(tmp_path)
    other = Net(tmp_path / "other", 1, chain_id="timecoin-elsewhere", seed=5)
    try:
        await other.start(connect=False)
        stranger = other.nodes[0]
        peer = await connect(stranger.key, net.nodes[0])
        peer.send(m.MsgType.HELLO, stranger.p2p.hello_body())
        await wait_for(lambda: peer.lost.called, 5.0, "stranger disconnected")
        assert Reason.WRONG_CHAIN in peer.rejects()
        assert score(net.nodes[0], stranger.key) == 0          # another network is not misbehaviour
        # Same chain id, different genesis (another validator set): refused with WRONG_GENESIS.
        impostor = Net(tmp_path / "impostor", 1, seed=6)
        peer2 = await connect(impostor.keys[0], net.nodes[0])
        body = net.nodes[0].p2p.hello_body() | {"genesis_hash": impostor.genesis.hash, "listen_addrs": []}
        peer2.send(m.MsgType.HELLO, body)
        await wait_for(lambda: peer2.lost.called, 5.0, "impostor disconnected")
        assert Reason.WRONG_GENESIS in peer2.rejects()
        await honest_unaffected(net)
    finally:
        await other.stop()
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_require_stake_admits_validator_peers_only(tmp_path: Path) -> None:
    net = Net(tmp_path, 2, observers=1, require_stake="true")
    try:
        await net.start()
        v0, v1, observer = net.nodes
        await wait_for(lambda: min(net.heights()[:2]) >= 2 and v1.p2p.peer_id in v0.p2p.connections, 15.0,
                       "validators connected")
        await sleep(1.0)
        assert observer.p2p.peer_id not in v0.p2p.connections
        assert observer.p2p.peer_id not in v1.p2p.connections
        assert v0.p2p.connections[v1.p2p.peer_id].is_validator
        peer = await connect(make_keys(1, seed=14)[0], v0)
        await wait_for(lambda: peer.lost.called, 5.0, "unstaked peer refused")
        assert Reason.INSUFFICIENT_STAKE in peer.rejects()
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_good_deliveries_raise_a_score_slowly_capped_per_window(tmp_path: Path) -> None:
    net = await start_pair(tmp_path)
    try:
        validator, observer = net.nodes
        # The observer gets every proposal and vote first from the validator: dozens of good deliveries
        # within this test's first minute, but they earn GOOD_PER_WINDOW points, not one each.
        await wait_for(lambda: observer.p2p.accepted[m.MsgType.VOTE] >= 4 * GOOD_PER_WINDOW, 15.0, "many votes")
        await wait_for(lambda: score(observer, validator.key) == GOOD_PER_WINDOW, 5.0, "credit earned")
        h = observer.store.tip_height()
        await wait_for(lambda: observer.store.tip_height() >= h + 3, 10.0, "more blocks delivered")
        assert score(observer, validator.key) == GOOD_PER_WINDOW         # the cap holds within the window
        # The validator hears nothing new from the observer (it made every message itself): no credit.
        assert validator.p2p.accepted[m.MsgType.VOTE] == 0 and score(validator, observer.key) == 0
    finally:
        await net.stop()


def relay_conflicting_prevotes(net: Net, target: Any, equivocator: Any, relay: Any) -> None:
    """Through ``relay``, two prevotes ``equivocator`` signed for one (height, round) of ``target``: nil and a block."""
    engine, chain = target.consensus.engine, net.genesis.chain_id
    for block_hash in (NIL_HASH, b"\x07" * 32):
        vote = Vote(VoteType.PREVOTE, engine.height, engine.round, block_hash, equivocator.address)
        relay.send(m.MsgType.VOTE, vote.signed(equivocator, chain).to_wire())


@pytest_twisted.ensureDeferred
async def test_equivocation_is_charged_to_the_validators_own_peer_not_to_the_relay(tmp_path: Path) -> None:
    # Two validators in the genesis; only node0 runs. The other validator's key connects as a raw peer
    # (a validator peer: its host key is its validator key) and an observer relays two conflicting
    # prevotes that key signed. The relay delivered the evidence, it did not sign it.
    net = Net(tmp_path, 2, seed=15)
    target = net.nodes[0]
    try:
        target.startService()
        await wait_for(lambda: target.p2p.listen_addr, 5.0, "listening")
        equivocator = net.keys[1]
        bad = await connect_ready(equivocator, target)
        assert target.p2p.connections[equivocator.peer_id].is_validator
        relay_key = make_keys(1, seed=16)[0]
        relay = await connect_ready(relay_key, target)
        relay_conflicting_prevotes(net, target, equivocator, relay)
        await wait_for(lambda: bad.lost.called, 5.0, "the equivocator's connection dropped")
        assert score(target, equivocator) == DELTAS[Event.EQUIVOCATION] and banned(target, equivocator)
        assert Reason.BANNED in bad.rejects()
        # The relay is not blamed: it delivered two valid new votes (capped credit) and stays connected.
        assert score(target, relay_key) > 0 and not banned(target, relay_key)
        assert relay_key.peer_id in target.p2p.connections and not relay.lost.called
        assert any(t == m.MsgType.EVIDENCE for t, _ in relay.messages)     # and the evidence went on to it
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_equivocation_by_a_validator_not_connected_bans_its_peer_id_for_when_it_comes(tmp_path: Path) -> None:
    net = Net(tmp_path, 2, seed=17)
    target = net.nodes[0]
    try:
        target.startService()
        await wait_for(lambda: target.p2p.listen_addr, 5.0, "listening")
        equivocator = net.keys[1]
        relay_key = make_keys(1, seed=18)[0]
        relay = await connect_ready(relay_key, target)
        relay_conflicting_prevotes(net, target, equivocator, relay)
        await wait_for(lambda: banned(target, equivocator), 5.0, "the equivocator's PeerID banned")
        assert score(target, relay_key) > 0 and not banned(target, relay_key)
        late = await connect(equivocator, target)
        late.send(m.MsgType.HELLO, target.p2p.hello_body() | {"listen_addrs": []})
        await wait_for(lambda: late.lost.called, 5.0, "the banned validator refused")
        assert Reason.BANNED in late.rejects()
    finally:
        await net.stop()
