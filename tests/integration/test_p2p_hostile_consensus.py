"""Hostile peers against the consensus paths of the peer layer (issue 11, findings 4, 5 and 7), over real TLS.

The worlds here are observers on a generated chain whose validators never run: the test holds the
validators' keys, so it can play a Byzantine validator (sign whatever it likes) while the nodes under test
sit still at a known height. Raw peers (tests/p2pnet.py) deliver what the test signs or forges.

* Finding 4: a validator's next-height proposal that the node one height behind could have refused must be
  refused there, before it is relayed; otherwise the relay, an honest node, is charged (and banned) by a
  peer already at that height.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import pytest_twisted

from tests.chaingen import ChainBuilder, ChainSpec, make_genesis
from tests.p2pnet import Net, banned, connect_ready, make_keys, score, sleep, wait_for
from timecoin import crypto
from timecoin.ledger.block import Block, Proposal
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.node import Node
from timecoin.p2p.gossip import message_id
from timecoin.p2p.peers import DELTAS, Event
from timecoin.p2p.service import ENVELOPE_HEADER
from timecoin.store import Store
from timecoin.wire import messages as m

CHAIN = "timecoin-hostile-consensus"


def proposal_id(p: Proposal) -> bytes:
    return message_id(m.MsgType.PROPOSAL, m.encode_message(m.MsgType.PROPOSAL, p.to_wire())[ENVELOPE_HEADER:])


async def behind_and_ahead(tmp_path: Path, seed: int) -> tuple[Net, ChainSpec, Node, Node]:
    """Two connected observers of a 2-validator chain nobody runs: A holds no block (deciding height 1), B
    holds block 1 (deciding height 2). Sync stays out of the way (its loop is 60 s; one height ahead never
    triggers it). Returns (net, spec, A, B) once A and B are ready peers of each other."""
    spec = make_genesis(validators=2, chain_id=CHAIN, seed=seed)
    net = Net(tmp_path, 0, observers=2, genesis=spec.genesis, keys=make_keys(2, seed=seed), sync_interval="60")
    builder = ChainBuilder(Store(net.chain_path(1)), spec)
    builder.build(1)
    builder.store.close()
    await net.start()
    a, b = net.nodes

    def linked() -> bool:
        return all(o.p2p.peer_id in n.p2p.connections and n.p2p.connections[o.p2p.peer_id].state == "ready"
                   for n, o in ((a, b), (b, a)))
    await wait_for(linked, 10.0, "A and B connected")
    assert (a.consensus.engine.height, b.consensus.engine.height) == (1, 2)
    return net, spec, a, b


def height_2_block(b: Node) -> Block:
    """A block whose header is for height 2 with a body that matches it (block 1, relabelled)."""
    block = b.store.get_blocks(1, 1)[0][0]
    return replace(block, header=replace(block.header, height=2))


def proposer_of(b: Node, spec: ChainSpec, height: int, round_: int) -> crypto.PrivateKey:
    address = b.consensus.app.proposer(height, round_)
    return next(k for k in spec.validators if k.address == address)


@pytest.mark.parametrize("fault", ["block_for_another_height", "pol_round_not_below_round", "not_its_round"])
@pytest_twisted.ensureDeferred
async def test_a_relay_one_height_behind_refuses_what_the_next_height_would_refuse(tmp_path: Path,
                                                                                    fault: str) -> None:
    # A Byzantine validator sends A (one height behind) a proposal of the next height that B (at that
    # height) must refuse. A must refuse it too, before relaying: otherwise B charges A, the honest relay
    # (-50 and a ban for a block of another height, which no honest relay can be blamed for).
    net, spec, a, b = await behind_and_ahead(tmp_path, seed=81)
    try:
        proposer = proposer_of(b, spec, 2, 0)
        other = next(k for k in spec.validators if k.address != proposer.address)
        if fault == "block_for_another_height":       # the proposer of (2, 0), but the block is block 1
            signer, p = proposer, Proposal(2, 0, -1, proposer.address, b.store.get_blocks(1, 1)[0][0])
        elif fault == "pol_round_not_below_round":    # a proof-of-lock round that is not below the round
            signer, p = proposer, Proposal(2, 0, 0, proposer.address, height_2_block(b))
        else:                                         # a validator of height 2, not the proposer of round 0
            signer, p = other, Proposal(2, 0, -1, other.address, height_2_block(b))
        p = p.signed(signer, CHAIN)
        byzantine = await connect_ready(signer, a)
        byzantine.send(m.MsgType.PROPOSAL, p.to_wire())
        await wait_for(lambda: proposal_id(p) in a.p2p.seen, 5.0, "A judged the proposal")
        await sleep(0.5)                              # time for a relayed copy to reach B and be judged
        assert not banned(b, a.key) and score(b, a.key) == 0, (fault, score(b, a.key))
        assert a.p2p.relayed[m.MsgType.PROPOSAL] == 0 and p not in a.consensus.engine.buffered_next_height
        assert score(a, signer) < 0                   # the signer itself delivered it: its fault, charged
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_an_altered_copy_first_neither_hides_the_genuine_proposal_nor_escapes_its_charge(
        tmp_path: Path) -> None:
    # Keyless relays alter the body of a genuine proposal of height 2 (same signed header, one tx added) and
    # deliver their copy first: R1 to A (one height behind: the next-height buffer), R2 to B (at height 2).
    # Each relay is charged invalid_block (and banned); the genuine proposal, which the proposer then sends to
    # A, is not taken for a duplicate of the altered copy: A buffers it and relays it to B, which takes it as
    # its round-0 proposal. (The duplicate checks are keyed on the whole message, not on the signed header.)
    net, spec, a, b = await behind_and_ahead(tmp_path, seed=82)
    r1, r2 = make_keys(2, seed=83)
    try:
        proposer = proposer_of(b, spec, 2, 0)
        genuine = Proposal(2, 0, -1, proposer.address, height_2_block(b)).signed(proposer, CHAIN)
        tx = Transaction.create(spec.validators[0], TxKind.TRANSFER, CHAIN, 0, 10_000, 5, r1.address)
        altered = replace(genuine, block=replace(genuine.block, txs=(tx,)))
        assert altered.signature == genuine.signature and altered.block.hash == genuine.block.hash
        for relay, node in ((r1, a), (r2, b)):
            peer = await connect_ready(relay, node)
            peer.send(m.MsgType.PROPOSAL, altered.to_wire())
            await wait_for(lambda node=node, relay=relay: banned(node, relay), 5.0, "the altering relay banned")
            assert score(node, relay) == DELTAS[Event.INVALID_BLOCK]
        assert a.p2p.relayed[m.MsgType.PROPOSAL] == 0            # the altered copy went nowhere
        byzantine = await connect_ready(proposer, a)
        byzantine.send(m.MsgType.PROPOSAL, genuine.to_wire())
        await wait_for(lambda: genuine in a.consensus.engine.buffered_next_height, 5.0, "A buffered the genuine one")
        await wait_for(lambda: b.consensus.engine.proposals.get(0) == genuine, 5.0, "B took the genuine one")
        assert b.p2p.accepted[m.MsgType.PROPOSAL] == 1 and score(b, a.key) >= 0
    finally:
        await net.stop()
