"""Gossip over real TLS on 127.0.0.1 (LMDB in tmp_path): tx budgets, announcements, fairness, ping EWMA.

Every node is the production service tree; raw peers (tests.integration.test_p2p_misbehaviour) write
exactly the frames a test needs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.chaingen import ChainBuilder, make_genesis
from tests.integration.test_p2p_misbehaviour import honest_unaffected, start_pair
from tests.p2pnet import Net, banned, connect, connect_ready, make_keys, score, sleep, wait_for
from timecoin.errors import Reason
from timecoin.ledger.genesis import Genesis, GenesisAccount
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.node import Node
from timecoin.p2p import protocol
from timecoin.p2p.discovery import format_multiaddr
from timecoin.p2p.gossip import message_id
from timecoin.p2p.peers import DELTAS, GOOD_PER_WINDOW, Event
from timecoin.p2p.service import ENVELOPE_HEADER, LATENCY_ALPHA
from timecoin.store import Store
from timecoin.wire import messages as m
from timecoin.wire.framing import encode_frame

CHAIN = "timecoin-p2p-test"


def funded_net(tmp_path: Path, senders: int, observers: int = 2) -> tuple[Net, list]:
    """One validator and ``observers`` observers; ``senders`` extra funded accounts to send txs from."""
    keys = make_keys(1 + observers, seed=1)
    funded = make_keys(senders, seed=30)
    genesis = Genesis.for_validators([keys[0].public_key], CHAIN,
                                     extra=tuple(GenesisAccount(k.address, 10**15) for k in funded))
    return Net(tmp_path, 1, observers=observers, genesis=genesis, keys=keys), funded


def transfers(genesis: Genesis, funded: list, per_sender: int) -> list[Transaction]:
    fee = max(genesis.params.min_fee, 1000)
    return [Transaction.create(k, TxKind.TRANSFER, genesis.chain_id, nonce, fee, 1,
                               funded[(i + 1) % len(funded)].address)
            for nonce in range(per_sender) for i, k in enumerate(funded)]


def known(node: Node, ids: set[bytes]) -> set[bytes]:
    """Those of ``ids`` in the node's mempool or chain."""
    chain = {tx.id for block, _ in node.store.get_blocks(1, node.store.tip_height()) for tx in block.txs}
    return {txid for txid in ids if txid in chain or txid in node.mempool}


async def line_up(middle: Any) -> None:
    """Wait until the middle node of a three-node line holds both its connections, ready."""
    await wait_for(lambda: len(middle.p2p.connections) == 2
                   and all(c.state == "ready" for c in middle.p2p.connections.values()), 15.0, "line up")


@pytest_twisted.ensureDeferred
async def test_a_burst_of_200_relayed_txs_costs_no_reputation_and_every_tx_arrives(tmp_path: Path) -> None:
    net, funded = funded_net(tmp_path, senders=4)
    try:
        await net.start(connect=False)
        validator, sender, far = net.nodes
        net.connect(1, [0])                  # sender - validator - far: the validator relays the burst
        net.connect(2, [0])
        await line_up(validator)
        txs = transfers(net.genesis, funded, per_sender=50)
        assert len(txs) == 200 > validator.config.rate_limit_burst
        for tx in txs:
            sender.mempool.add(tx)
            sender.p2p.broadcast(tx)
        ids = {tx.id for tx in txs}
        await wait_for(lambda: known(far, ids) == ids, 30.0, "every tx relayed to the far node")
        assert known(validator, ids) == ids
        # Neither the sender (to the validator) nor the validator (to the far node) lost anything.
        assert score(validator, sender.key) >= 0 and not banned(validator, sender.key)
        assert score(far, validator.key) >= 0 and not banned(far, validator.key)
        assert sender.p2p.peer_id in validator.p2p.connections
        assert validator.p2p.peer_id in far.p2p.connections
        # Duplicates cost no budget: a peer sending the whole burst again is handled for free.
        key = make_keys(1, seed=31)[0]
        peer = await connect_ready(key, validator)
        validator.p2p.peers.tx_burst = 1             # even with a budget of one tx
        for tx in txs:
            peer.send(m.MsgType.TX, tx.to_wire())
        await wait_for(lambda: validator.p2p.connections[key.peer_id].messages_in >= 201, 10.0, "copies handled")
        assert score(validator, key) == 0 and Reason.RATE_LIMITED not in peer.rejects()
        mid = message_id(m.MsgType.TX, m.encode_message(m.MsgType.TX, txs[0].to_wire())[ENVELOPE_HEADER:])
        assert mid in validator.p2p.seen and mid in far.p2p.seen
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_txs_over_the_gossip_budget_are_dropped_for_a_small_charge_once_per_window(tmp_path: Path) -> None:
    net, funded = funded_net(tmp_path, senders=4, observers=1)
    try:
        await net.start(connect=False)
        validator = net.nodes[0]
        key = make_keys(1, seed=32)[0]
        peer = await connect_ready(key, validator)
        validator.p2p.peers.tx_burst = 10            # a small budget, so the test stays small
        validator.p2p.peers.tx_rate = 60
        txs = transfers(net.genesis, funded, per_sender=10)
        for tx in txs:
            peer.send(m.MsgType.TX, tx.to_wire())
        await wait_for(lambda: validator.p2p.connections[key.peer_id].messages_in >= 40, 10.0, "burst handled")
        await sleep(0.2)
        accepted = known(validator, {tx.id for tx in txs})
        assert 10 <= len(accepted) <= 12             # the budget (plus a refill at most); the rest dropped
        # The accepted txs earned the capped credit (GOOD_PER_WINDOW); TX_OVER_BUDGET is charged once.
        assert score(validator, key) == GOOD_PER_WINDOW + DELTAS[Event.TX_OVER_BUDGET] == GOOD_PER_WINDOW - 1
        assert key.peer_id in validator.p2p.connections
        dropped = next(tx for tx in txs if tx.id not in accepted)
        mid = message_id(m.MsgType.TX, m.encode_message(m.MsgType.TX, dropped.to_wire())[ENVELOPE_HEADER:])
        assert mid not in validator.p2p.seen         # another peer may still bring it
        assert reactor.running
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_block_announcement_floods_down_a_line_once(tmp_path: Path) -> None:
    # Three observers in a line a - b - c on a generated chain (its validator never runs): b and c hold
    # blocks 1..6, a holds 1..3. a catches up from b and announces block 6; b holds 6 (it never announced
    # it: the block came with its store) and relays the announcement to c, once; c relays it to no one
    # (its only peer sent it). Nobody sends it back.
    spec = make_genesis(validators=1, chain_id="timecoin-announce")
    net = Net(tmp_path, 0, observers=3, genesis=spec.genesis, keys=make_keys(3, seed=40), sync_interval="1")
    builder = ChainBuilder(Store(net.chain_path(1)), spec)
    builder.build(6)
    for i, upto in ((0, 3), (2, 6)):
        store = Store(net.chain_path(i))
        builder.copy_to(store, upto)
        store.close()
    top = builder.store.block_hash_at(6)
    builder.store.close()
    try:
        await net.start(connect=False)
        a, b, c = net.nodes
        # c - b first: a syncs three blocks in one range now, and its announcement must find c already there.
        net.connect(2, [1])
        await wait_for(lambda: any(conn.state == "ready" for conn in c.p2p.connections.values()), 10.0, "c - b up")
        net.connect(0, [1])
        payload = m.encode_message(m.MsgType.NEW_BLOCK, {"height": 6, "hash": top})
        mid = message_id(m.MsgType.NEW_BLOCK, payload[ENVELOPE_HEADER:])
        await wait_for(lambda: a.store.tip_height() == 6, 20.0, "a caught up from b")
        await wait_for(lambda: mid in c.p2p.seen, 10.0, "the announcement reached c through b")
        await sleep(0.5)
        assert a.store.block_hash_at(6) == top and mid in a.p2p.seen and mid in b.p2p.seen
        assert a.p2p.relayed[m.MsgType.NEW_BLOCK] == 1          # its own commit (sync's last block)
        assert b.p2p.relayed[m.MsgType.NEW_BLOCK] == 1          # relayed once, to c
        assert c.p2p.relayed[m.MsgType.NEW_BLOCK] == 0          # nobody left to tell
        assert a.p2p.duplicates[m.MsgType.NEW_BLOCK] == 0       # b did not send it back to a
        assert b.p2p.duplicates[m.MsgType.NEW_BLOCK] == 0       # nor c to b
        assert c.p2p.connections[b.p2p.peer_id].height == 6
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_flooding_peer_is_paused_and_other_peers_are_still_served_in_turn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_QUEUED_BYTES", 1 << 20)       # 1 MiB, so the flood stays small
    net = await start_pair(tmp_path)
    try:
        target = net.nodes[0]
        flood_key, honest_key = make_keys(2, seed=50)
        flooder = await connect_ready(flood_key, target)
        honest = await connect_ready(honest_key, target)
        conn = target.p2p.connections[flood_key.peer_id]
        # Free input: copies of an announcement the target made itself (seen-cache hits, no charge).
        announcement = {"height": 1, "hash": target.store.block_hash_at(1)}
        frame = encode_frame(m.encode_message(m.MsgType.NEW_BLOCK, announcement))
        count = (3 << 20) // len(frame)
        flooder.transport.write(frame * count)
        await wait_for(lambda: conn.paused, 10.0, "the flooder paused", step=0.002)
        assert conn.pauses >= 1 and conn.inbox_bytes > protocol.MAX_QUEUED_BYTES // 2
        queued, handled = len(conn.inbox), conn.messages_in
        at_pong: dict[str, int] = {}

        def seen(msg_type: m.MsgType, rid: int, body: Any) -> None:
            if msg_type == m.MsgType.PONG and rid == 77:
                at_pong.update(handled=conn.messages_in - handled, queued=len(conn.inbox))

        honest.on_message = seen
        honest.send(m.MsgType.PING, {"nonce": 5, "payload": b"x" * 100}, request_id=77)
        await wait_for(lambda: at_pong, 10.0, "the honest ping answered")
        # The ping overtook the flood frames queued before it: they were not all handled first.
        assert at_pong["handled"] < queued and at_pong["queued"] > 0, (at_pong, queued)
        await wait_for(lambda: conn.messages_in >= count + 1, 60.0, "the flood drained")
        assert not conn.paused and conn.inbox_bytes == 0
        assert target.p2p.duplicates[m.MsgType.NEW_BLOCK] >= count
        assert score(target, flood_key) == 0 and flood_key.peer_id in target.p2p.connections   # paused, not blamed
        await honest_unaffected(net)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_ping_pong_updates_the_latency_ewma_in_the_peer_store(tmp_path: Path) -> None:
    net = Net(tmp_path, 1, ping_interval="3600")                      # the test sends each ping itself
    try:
        await net.start(connect=False)
        target = net.nodes[0]
        key = make_keys(1, seed=51)[0]
        peer = await connect(key, target)
        # A listen address in the hello gives the peer an entry in the target's peer store.
        peer.send(m.MsgType.HELLO, target.p2p.hello_body() | {
            "listen_addrs": [format_multiaddr("127.0.0.1", 9, key.peer_id)], "agent": "pinger"})
        await wait_for(lambda: key.peer_id in target.p2p.connections
                       and target.p2p.connections[key.peer_id].state == "ready", 5.0, "admitted")
        conn = target.p2p.connections[key.peer_id]
        delay = [0.3]

        def answer(msg_type: m.MsgType, rid: int, body: Any) -> None:
            if msg_type == m.MsgType.PING:
                reactor.callLater(delay[0], peer.send, m.MsgType.PONG, {"nonce": body.nonce, "payload": body.payload},
                                  rid)

        peer.on_message = answer
        assert conn.latency is None and target.p2p.peerstore.get(key.peer_id).latency is None
        target.p2p._ping_all()
        await wait_for(lambda: conn.latency is not None, 5.0, "first pong")
        first = conn.latency
        assert 0.3 <= first < 0.6
        assert target.p2p.peerstore.get(key.peer_id).latency == first                  # stored for that peer
        delay[0] = 0.0
        target.p2p._ping_all()
        await wait_for(lambda: conn.latency != first, 5.0, "second pong")
        second = conn.latency
        # EWMA: (1 - 0.2) * first + 0.2 * sample, with a loopback sample of well under 0.1 s.
        assert (1 - LATENCY_ALPHA) * first <= second < (1 - LATENCY_ALPHA) * first + LATENCY_ALPHA * 0.1
        assert target.p2p.peerstore.get(key.peer_id).latency == second
        assert not conn.ping_sent and score(target, key) == 0
        # A pong to no ping of ours is unsolicited, and changes no latency.
        peer.send(m.MsgType.PONG, {"nonce": 12345, "payload": b""})
        await wait_for(lambda: score(target, key) < 0, 5.0, "unsolicited pong charged")
        assert score(target, key) == DELTAS[Event.UNSOLICITED] and conn.latency == second
    finally:
        await net.stop()


def submit(node: Node, txs: list[Transaction]) -> set[bytes]:
    """Add ``txs`` to ``node``'s mempool and broadcast them, as RPC does; their ids."""
    for tx in txs:
        node.mempool.add(tx)
        node.p2p.broadcast(tx)
    return {tx.id for tx in txs}


async def funded_line(net: Net) -> None:
    """Start ``net`` (a funded_net) as the line sender - validator - far, and wait until it is up."""
    for i in range(3):                     # max_outbound 1: no peer exchange shortcut, the line stays a line
        net.nodes[i] = net.make(i, max_outbound="1")
    await net.start(connect=False)
    net.connect(1, [0])
    net.connect(2, [0])
    await line_up(net.nodes[0])


@pytest_twisted.ensureDeferred
async def test_txs_are_processed_and_relayed_once_along_a_line(tmp_path: Path) -> None:
    net, funded = funded_net(tmp_path, senders=4)
    try:
        await funded_line(net)
        validator, sender, far = net.nodes
        txs = transfers(net.genesis, funded, per_sender=5)
        ids = submit(sender, txs)
        await wait_for(lambda: known(far, ids) == ids, 20.0, "every tx at the far end")
        n = len(txs)
        assert sender.p2p.relayed[m.MsgType.TX] == n                          # to its one peer
        assert validator.p2p.accepted[m.MsgType.TX] == n == validator.p2p.relayed[m.MsgType.TX]   # on, once
        assert far.p2p.accepted[m.MsgType.TX] == n and far.p2p.relayed[m.MsgType.TX] == 0       # nobody left
        assert validator.p2p.duplicates[m.MsgType.TX] == far.p2p.duplicates[m.MsgType.TX] == 0  # none came back
        # Copies from a third peer are dropped at the seen-cache: not processed again, not relayed again.
        key = make_keys(1, seed=52)[0]
        peer = await connect_ready(key, validator)
        for tx in txs:
            peer.send(m.MsgType.TX, tx.to_wire())
        await wait_for(lambda: validator.p2p.duplicates[m.MsgType.TX] == n, 10.0, "copies counted")
        await sleep(0.2)
        assert sender.p2p.relayed[m.MsgType.TX] == n
        assert validator.p2p.accepted[m.MsgType.TX] == n == validator.p2p.relayed[m.MsgType.TX]
        assert far.p2p.accepted[m.MsgType.TX] == n and far.p2p.duplicates[m.MsgType.TX] == 0
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_votes_and_proposals_are_processed_and_relayed_once_along_a_line(tmp_path: Path) -> None:
    # validator v - observer a - observer b, with no shortcut (max_outbound 1 each).
    net = Net(tmp_path, 1, observers=2, max_outbound="1")
    try:
        await net.start(connect=False)
        v, a, b = net.nodes
        net.connect(1, [0])
        net.connect(2, [1])
        await line_up(a)
        # What a accepted before b was ready had nobody to go to: count from here (it relays synchronously).
        accepted0, relayed0 = dict(a.p2p.accepted), dict(a.p2p.relayed)
        h = v.store.tip_height()
        await wait_for(lambda: b.store.tip_height() >= h + 5, 20.0, "b follows through a")
        await v.stopService()                                # no new messages; let the last ones land
        await sleep(0.5)
        assert len(v.p2p.connections) == 0 and b.p2p.connections.keys() == {a.p2p.peer_id}
        for kind in (m.MsgType.PROPOSAL, m.MsgType.VOTE):
            assert a.p2p.accepted[kind] > accepted0.get(kind, 0)
            assert (a.p2p.relayed[kind] - relayed0.get(kind, 0)
                    == a.p2p.accepted[kind] - accepted0.get(kind, 0)), kind   # each relayed once: to b
            assert b.p2p.accepted[kind] <= a.p2p.relayed[kind], kind      # b processes each at most once
            assert b.p2p.relayed[kind] == 0, kind                         # and has nobody else to tell
            assert v.p2p.accepted[kind] == v.p2p.duplicates[kind] == 0, kind   # nothing echoed to the origin
            assert a.p2p.duplicates[kind] == 0, kind                       # b never sent one back to a
    finally:
        await net.stop()
