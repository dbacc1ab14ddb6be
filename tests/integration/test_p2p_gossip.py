"""Gossip over real TLS on 127.0.0.1 (LMDB in tmp_path): tx budgets, announcements, fairness, ping EWMA.

Every node is the production service tree; raw peers (tests.integration.test_p2p_misbehaviour) write
exactly the frames a test needs.
"""
from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from tests.chaingen import ChainBuilder, make_genesis
from tests.integration.test_p2p_misbehaviour import banned, connect_ready, score
from tests.p2pnet import Net, make_keys, sleep, wait_for
from timecoin.errors import Reason
from timecoin.ledger.genesis import Genesis, GenesisAccount
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.node import Node
from timecoin.p2p.gossip import message_id
from timecoin.p2p.peers import DELTAS, GOOD_PER_WINDOW, Event
from timecoin.p2p.service import ENVELOPE_HEADER
from timecoin.store import Store
from timecoin.wire import messages as m

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


@pytest_twisted.ensureDeferred
async def test_a_burst_of_200_relayed_txs_costs_no_reputation_and_every_tx_arrives(tmp_path: Path) -> None:
    net, funded = funded_net(tmp_path, senders=4)
    try:
        await net.start(connect=False)
        validator, sender, far = net.nodes
        net.connect(1, [0])                  # sender - validator - far: the validator relays the burst
        net.connect(2, [0])
        await wait_for(lambda: len(validator.p2p.connections) == 2
                       and all(c.state == "ready" for c in validator.p2p.connections.values()), 15.0, "line up")
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
        net.connect(0, [1])
        net.connect(2, [1])
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
