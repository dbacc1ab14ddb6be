"""Consensus gossip under Byzantine relays and validators (issue 10), over real TLS on 127.0.0.1.

The networks here use a weighted genesis: two running validators (node0, node1) hold > 2/3 of the power
between them, and a third validator key -- held by the test, never run as a node -- has a small stake
(< 1/3: its messages alone never make a node skip rounds). The test signs with that key to play a
validator one height ahead, or a Byzantine one; raw peers (tests.integration.test_p2p_misbehaviour)
deliver what it signs.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from tests.p2pnet import Net, RawPeer, banned, connect_ready, make_keys, score, sleep, wait_for
from timecoin import crypto
from timecoin.consensus.votes import MAX_PENDING_CONFLICTS
from timecoin.ledger.block import NIL_HASH, Proposal, QuorumProof, Vote, VoteType
from timecoin.ledger.genesis import Genesis, GenesisAccount
from timecoin.ledger.params import ChainParams
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.node import Node
from timecoin.p2p.gossip import message_id
from timecoin.p2p.peers import DELTAS, Event
from timecoin.p2p.service import ENVELOPE_HEADER
from timecoin.wire import messages as m

CHAIN = "timecoin-byzantine-test"
CHAIN_4 = "timecoin-p2p-test"
BIG = 10_000 * crypto.UNITS_PER_TIME
SMALL = 1_000 * crypto.UNITS_PER_TIME


def weighted_net(tmp_path: Path, seed: int, **extra: str) -> tuple[Net, crypto.PrivateKey]:
    """node0 and node1 (stake BIG each, > 2/3 together) and a third validator key (stake SMALL) not run."""
    keys = make_keys(3, seed=seed)
    accounts = tuple(GenesisAccount(k.address, 1_000_000 * crypto.UNITS_PER_TIME, stake, k.public_key)
                     for k, stake in zip(keys, (BIG, BIG, SMALL), strict=True))
    genesis = Genesis(CHAIN, int(time.time() * 1000), ChainParams(CHAIN), accounts)
    genesis = Genesis.from_obj(genesis.to_json_obj())
    return Net(tmp_path, 2, genesis=genesis, keys=keys[:2], **extra), keys[2]


def vote_id(vote: Vote) -> bytes:
    return message_id(m.MsgType.VOTE, m.encode_message(m.MsgType.VOTE, vote.to_wire())[ENVELOPE_HEADER:])


def proposal_id(p: Proposal) -> bytes:
    return message_id(m.MsgType.PROPOSAL, m.encode_message(m.MsgType.PROPOSAL, p.to_wire())[ENVELOPE_HEADER:])


@pytest_twisted.ensureDeferred
async def test_a_next_height_vote_does_not_stop_the_current_heights_gossip(tmp_path: Path) -> None:
    # Hole 6. node0 starts alone: it prevotes at height 1 and waits (its power alone is no quorum). A
    # relay delivers a validly signed vote of height 2 (the small validator's). Then node1 starts and
    # connects: it never saw node0's height-1 messages, which only the gossip archive can bring it.
    # Before the fix the height-2 vote replaced node0's archive, so node1 never got them and, each
    # waiting for the other's vote of a step it had already passed, both stalled at height 1 for good.
    net, small = weighted_net(tmp_path, seed=60)
    node0, node1 = net.nodes
    try:
        node0.startService()
        await wait_for(lambda: node0.p2p.listen_addr, 5.0, "node0 listening")
        engine = node0.consensus.engine
        await wait_for(lambda: node0.key.address in engine.votes.get(0, VoteType.PREVOTE).votes, 10.0,
                       "node0's prevote of height 1")
        own_prevote = engine.votes.get(0, VoteType.PREVOTE).votes[node0.key.address]
        relay = await connect_ready(make_keys(1, seed=61)[0], node0)
        ahead = Vote(VoteType.PREVOTE, 2, 0, NIL_HASH, small.address).signed(small, CHAIN)
        relay.send(m.MsgType.VOTE, ahead.to_wire())
        await wait_for(lambda: vote_id(ahead) in node0.p2p.seen, 5.0, "the height-2 vote taken")
        assert node0.store.tip_height() == 0 and engine.height == 1

        node1.startService()
        await wait_for(lambda: node1.p2p.listen_addr, 5.0, "node1 listening")
        net.connect(1, [0])
        await wait_for(lambda: vote_id(own_prevote) in node1.p2p.seen, 10.0, "node0's height-1 prevote re-offered")
        await wait_for(lambda: min(net.heights()) >= 2, 15.0, "both past height 1")
    finally:
        await net.stop()


def mirror(relay: RawPeer, node: Node, key: crypto.PrivateKey, height: int,
           kinds: tuple[VoteType, ...] = (VoteType.PREVOTE, VoteType.PRECOMMIT)) -> None:
    """Through ``relay``, ``key`` votes (``kinds``) as ``node`` does at ``height``: together they finish it."""
    def on_message(msg_type: m.MsgType, rid: int, body: Any) -> None:
        if msg_type != m.MsgType.VOTE:
            return
        v = Vote.from_wire(body)
        if v.validator == node.key.address and v.height == height and v.type in kinds:
            relay.send(m.MsgType.VOTE, Vote(v.type, v.height, v.round, v.block_hash, key.address)
                       .signed(key, CHAIN).to_wire())
    for msg_type, body in list(relay.messages):         # what the node sent before the hook was set
        on_message(msg_type, 0, body)
    relay.on_message = on_message


@pytest_twisted.ensureDeferred
async def test_a_next_height_vote_refused_for_a_cap_is_not_poisoned_in_the_seen_cache(tmp_path: Path) -> None:
    # The engine refuses next-height messages over a per-sender cap with DUPLICATE. The vote itself may be
    # valid and needed once that height starts: it must not enter the seen-cache, or every honest relay of
    # it is dropped for good. node0 runs alone at height 1; the small validator's prevotes of height 2,
    # rounds 1..4, fill its round cap, so its (valid) round-0 prevote is refused for now.
    net, small = weighted_net(tmp_path, seed=62)
    node0 = net.nodes[0]
    try:
        node0.startService()
        await wait_for(lambda: node0.p2p.listen_addr, 5.0, "node0 listening")
        relay_key = make_keys(1, seed=63)[0]
        relay = await connect_ready(relay_key, node0)
        conn = node0.p2p.connections[relay_key.peer_id]
        ahead = [Vote(VoteType.PREVOTE, 2, r, NIL_HASH, small.address).signed(small, CHAIN) for r in (1, 2, 3, 4)]
        capped = Vote(VoteType.PREVOTE, 2, 0, NIL_HASH, small.address).signed(small, CHAIN)
        for vote in [*ahead, capped]:
            relay.send(m.MsgType.VOTE, vote.to_wire())
        await wait_for(lambda: conn.messages_in >= 6, 5.0, "the five votes handled")
        assert all(vote_id(v) in node0.p2p.seen for v in ahead)
        assert vote_id(capped) not in node0.p2p.seen             # refused for a cap: not poisoned
        dups = node0.p2p.duplicates[m.MsgType.VOTE]
        relay.send(m.MsgType.VOTE, ahead[0].to_wire())           # a real copy: dropped at the seen-cache
        await wait_for(lambda: conn.messages_in >= 7, 5.0, "the copy handled")
        assert node0.p2p.duplicates[m.MsgType.VOTE] == dups + 1

        # The node-1 key (never run here) votes as node0 does at height 1: height 1 is decided, node0 starts
        # height 2 (and waits there). The refused vote, relayed again, now counts.
        mirror(relay, node0, net.keys[1], 1)
        engine = node0.consensus.engine
        await wait_for(lambda: engine.height == 2, 15.0, "node0 at height 2")
        relay.send(m.MsgType.VOTE, capped.to_wire())
        await wait_for(lambda: vote_id(capped) in node0.p2p.seen, 5.0, "the refused vote reconsidered")
        assert engine.height == 2
        assert engine.votes.get(0, VoteType.PREVOTE).votes.get(small.address) == capped
    finally:
        await net.stop()


def quorums_received(peer: RawPeer) -> list[QuorumProof]:
    return [QuorumProof.from_wire(body) for t, body in peer.messages if t == m.MsgType.VOTE_QUORUM]


@pytest_twisted.ensureDeferred
async def test_quorum_proofs_go_once_to_peers_at_our_height_and_a_forged_one_costs_its_sender(tmp_path: Path) -> None:
    # node0 runs alone at height 1; the node-1 key prevotes as node0 does (through a relay at height 0, i.e.
    # at node0's height) but never precommits: node0 holds a prevote quorum and waits there. It sends the
    # relay a VOTE_QUORUM proving it -- each proof once -- and judges the proofs peers send it.
    net, small = weighted_net(tmp_path, seed=64)
    node0 = net.nodes[0]
    try:
        node0.startService()
        await wait_for(lambda: node0.p2p.listen_addr, 5.0, "node0 listening")
        relay = await connect_ready(make_keys(1, seed=65)[0], node0)
        mirror(relay, node0, net.keys[1], 1, kinds=(VoteType.PREVOTE,))
        await wait_for(lambda: quorums_received(relay), 10.0, "a quorum proof sent to the relay")
        proof = quorums_received(relay)[0]
        assert (proof.type, proof.height) == (VoteType.PREVOTE, 1)
        vs = node0.store.validator_set(1)
        for vote in proof.votes():
            vote.verify_signature(vs.by_address[vote.validator].pubkey, CHAIN)
        assert vs.quorum(sum(vs.power_of(v.validator) for v in proof.votes()))
        await sleep(0.5)                                         # five gossip ticks: nothing is sent twice
        sent = quorums_received(relay)
        assert len({q.encoded for q in sent}) == len(sent)
        assert node0.store.tip_height() == 0

        # A copy of node0's own proof from another peer is free; a forged one is its sender's provable fault.
        echo_key, forger_key = make_keys(2, seed=66)
        echo = await connect_ready(echo_key, node0)
        echo.send(m.MsgType.VOTE_QUORUM, proof.to_wire())
        forger = await connect_ready(forger_key, node0)
        round_ = node0.consensus.engine.round + 1
        forged = QuorumProof(VoteType.PREVOTE, 1, round_, NIL_HASH,
                             tuple(sorted((k.address, b"\x01" * 64) for k in (*net.keys, small))))
        forger.send(m.MsgType.VOTE_QUORUM, forged.to_wire())
        await wait_for(lambda: score(node0, forger_key) < 0, 5.0, "the forged proof judged")
        assert score(node0, forger_key) == DELTAS[Event.INVALID_SIGNATURE] and banned(node0, forger_key)
        await wait_for(lambda: node0.p2p.connections[echo_key.peer_id].messages_in >= 2, 5.0, "the copy handled")
        assert score(node0, echo_key) == 0 and not banned(node0, echo_key)
    finally:
        await net.stop()


def swap_at(net: Net, node: Node, height: int) -> list[Proposal]:
    """A test hook on ``node``'s input, playing an equivocating proposer: each proposal of ``height`` is
    replaced by another one its proposer signed (the same block, stamped 1 ms later: another hash), and the
    genuine one never arrives (the others drop the proposals of ``height`` that ``node`` relays); nor does
    an announcement of a block at or above ``height`` (so sync is not told to catch up; sync_interval keeps
    its loop out of the test). Returns the substitutes delivered."""
    handle = node.p2p.handle
    keys = {k.address: k for k in net.keys}
    swapped: list[Proposal] = []

    def filtered(conn: Any, msg_type: m.MsgType, rid: int, body: Any, payload: bytes) -> None:
        if msg_type == m.MsgType.PROPOSAL and body.height == height:
            p = Proposal.from_wire(body)
            if any(q.round == p.round for q in swapped):
                return
            block = replace(p.block, header=replace(p.block.header, timestamp=p.block.header.timestamp + 1))
            other = Proposal(p.height, p.round, p.pol_round, p.proposer, block).signed(keys[p.proposer], CHAIN_4)
            swapped.append(other)
            payload = m.encode_message(m.MsgType.PROPOSAL, other.to_wire())
            handle(conn, msg_type, rid, m.decode_message(payload)[2], payload)
            return
        if msg_type == m.MsgType.NEW_BLOCK and body.height >= height:
            return
        handle(conn, msg_type, rid, body, payload)
    node.p2p.handle = filtered
    for other in net.nodes:               # the substitutes reach ``node`` only: it relays what it accepts,
        if other is not node:             # and the others must not decide a block ``node`` already holds
            other.p2p.handle = _dropping_proposals_from(other.p2p.handle, node.p2p.peer_id, height)
    return swapped


def _dropping_proposals_from(handle: Any, peer_id: str, height: int) -> Any:
    def filtered(conn: Any, msg_type: m.MsgType, rid: int, body: Any, payload: bytes) -> None:
        if msg_type == m.MsgType.PROPOSAL and body.height == height and conn.peer_id == peer_id:
            return
        handle(conn, msg_type, rid, body, payload)
    return filtered


@pytest_twisted.ensureDeferred
async def test_a_node_with_a_precommit_quorum_for_a_block_it_lacks_fetches_it_from_the_voters(tmp_path: Path) -> None:
    # Four equal validators, all running. node3 is shown another proposal of height H than the others (a
    # test hook plays the equivocating proposer) and never the one they decide, yet sees > 2/3 precommits
    # for that one: it must fetch the block by hash from the voters and commit it at once, not after the
    # SyncCoordinator's loop (60 s here) or never.
    net = Net(tmp_path, 4, seed=67, chain_id=CHAIN_4, sync_interval="60")
    try:
        await net.start()
        await wait_for(lambda: min(net.heights()) >= 1, 20.0, "the four running")
        late = net.nodes[3]
        target = late.consensus.engine.height + 2
        swapped = swap_at(net, late, target)
        await wait_for(lambda: net.nodes[0].store.tip_height() >= target, 20.0, f"height {target} decided")
        decided = net.nodes[0].store.block_hash_at(target)
        assert swapped and decided not in {p.block.hash for p in swapped}
        await wait_for(lambda: late.store.tip_height() >= target, 5.0, f"node3 has block {target}")
        assert late.store.block_hash_at(target) == decided
        await wait_for(lambda: min(net.heights()) >= target + 2, 20.0, "all four keep going")
    finally:
        await net.stop()


def hold_back(node: Node, msg_type: m.MsgType, delay: float, unless_from: str) -> None:
    """A test hook on ``node``'s input: ``msg_type`` from any peer but ``unless_from`` is handled ``delay``
    seconds late (asynchrony: the relay's copy arrives first)."""
    handle = node.p2p.handle

    def held(conn: Any, t: m.MsgType, rid: int, body: Any, payload: bytes) -> None:
        if t == msg_type and conn.peer_id != unless_from:
            reactor.callLater(delay, handle, conn, t, rid, body, payload)
            return
        handle(conn, t, rid, body, payload)
    node.p2p.handle = held


@pytest_twisted.ensureDeferred
async def test_a_keyless_relay_that_alters_a_proposals_body_is_refused_and_charged(tmp_path: Path) -> None:
    # Hole 1, network level. Three equal validators. A keyless relay hears every proposal from node0 and
    # node2 and hands node1 a copy with another body (one tx added: the signed header, and so the proposal
    # signature, is unchanged) before the genuine one, which node1 gets 0.3 s late. node1 must refuse the
    # altered body (BAD_BLOCK: the relay is charged invalid_block and banned), never store or relay it,
    # still take the genuine proposal, and the chain must keep finalizing.
    net = Net(tmp_path, 3, seed=68)
    relay_key = make_keys(1, seed=69)[0]
    payer = net.keys[2]
    try:
        await net.start()
        await wait_for(lambda: min(net.heights()) >= 1, 20.0, "the three running")
        node0, node1, node2 = net.nodes
        hold_back(node1, m.MsgType.PROPOSAL, 0.3, unless_from=relay_key.peer_id)
        taps = [await connect_ready(relay_key, n) for n in (node0, node2)]
        to1 = await connect_ready(relay_key, node1)
        genuine: list[Proposal] = []
        altered: list[Proposal] = []

        def on_message(msg_type: m.MsgType, rid: int, body: Any) -> None:
            if msg_type != m.MsgType.PROPOSAL or to1.lost.called:
                return
            p = Proposal.from_wire(body)
            if any(g.signature == p.signature for g in genuine):
                return
            tx = Transaction.create(payer, TxKind.TRANSFER, net.genesis.chain_id, 0, 10_000, 5, relay_key.address)
            bad = replace(p, block=replace(p.block, txs=(tx,)))
            genuine.append(p)
            altered.append(bad)
            to1.send(m.MsgType.PROPOSAL, bad.to_wire())
        for tap in taps:
            tap.on_message = on_message

        await wait_for(lambda: score(node1, relay_key) < 0, 20.0, "an altered proposal judged")
        assert score(node1, relay_key) == DELTAS[Event.INVALID_BLOCK] and banned(node1, relay_key)
        first = altered[0]
        h = first.height
        await wait_for(lambda: min(net.heights()) >= h + 2, 20.0, "the chain keeps finalizing")
        assert proposal_id(genuine[0]) in node1.p2p.seen              # the genuine one was handled, later
        for n in net.nodes:
            block = n.store.get_blocks(h, 1)[0][0]
            assert block.hash == node0.store.block_hash_at(h) and block.txs == ()
        # The altered bodies went nowhere: node1 relayed none of them to anyone (the taps hear every frame).
        bad_ids = {proposal_id(p) for p in altered}
        relayed = [Proposal.from_wire(body) for tap in taps for t, body in tap.messages if t == m.MsgType.PROPOSAL]
        assert not bad_ids & {proposal_id(p) for p in relayed}
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_polka_hidden_by_an_equivocators_junk_votes_reaches_every_node(tmp_path: Path) -> None:
    # Hole 2, network level. Four equal validators: a, b, c run, z is Byzantine (the test signs for it).
    # At the first round-0 proposal B of a height >= H0 (proposer a): through a keyless relay z sends b
    # and c MAX_PENDING_CONFLICTS + 2 junk conflicting prevotes, then its real prevote for B, which their
    # caps drop, and 0.1 s later a the real one; and two junk prevotes of the next height before its real
    # next-height prevote. b gets B and the round's honest votes 0.2 s late (after z's votes); c gets the
    # votes 0.2 s late and B 1 s late (after its propose timeout: it prevotes nil). So only a sees the
    # polka {a, b, z} and locks B; b and c never do, and z is silent from then on. a prevotes nil on any
    # other block and its re-proposal of B needs the round-0 polka b and c lack: without vote propagation
    # the chain halts for good. With it, a's VOTE_QUORUM brings b and c the polka, B is decided, and the
    # three keep finalizing.
    keys = make_keys(4, seed=70)
    z = keys[3]
    net = Net(tmp_path, 3, keys=keys[:3], genesis=Genesis.for_validators([k.public_key for k in keys], CHAIN))
    chain = net.genesis.chain_id
    relay_key = make_keys(1, seed=71)[0]
    state: dict[str, Any] = {"h": None, "a": None, "done": False}
    try:
        await net.start()
        await wait_for(lambda: min(net.heights()) >= 1, 20.0, "the three running")
        h0 = max(n.consensus.engine.height for n in net.nodes) + 1
        by_address = {n.key.address: i for i, n in enumerate(net.nodes)}

        def roles(proposer: bytes) -> tuple[int, int, int]:
            a = by_address[proposer]
            b, c = (i for i in range(3) if i != a)
            return a, b, c

        def hold(i: int) -> None:
            node = net.nodes[i]
            handle = node.p2p.handle

            def held(conn: Any, t: m.MsgType, rid: int, body: Any, payload: bytes) -> None:
                if t == m.MsgType.PROPOSAL and body.round == 0 and body.height >= h0 and state["h"] in (None,
                                                                                                        body.height):
                    state["h"], state["a"] = body.height, by_address[body.proposer]
                    if i != state["a"]:
                        reactor.callLater(0.2 if i == roles(body.proposer)[1] else 1.0, handle, conn, t, rid, body,
                                          payload)
                        return
                if (t == m.MsgType.VOTE and (body.height, body.round) == (state["h"], 0) and i != state["a"]
                        and conn.peer_id != relay_key.peer_id):
                    # the honest nodes' round-0 votes reach b and c after z's (as the proposal does)
                    reactor.callLater(0.2, handle, conn, t, rid, body, payload)
                    return
                handle(conn, t, rid, body, payload)
            node.p2p.handle = held
        for i in range(3):
            hold(i)
        # z's own connections would be dropped as soon as a node sees its equivocation: a keyless relay
        # (never blamed for carrying valid votes) hears the proposals and carries all of z's votes.
        relays = [await connect_ready(relay_key, n) for n in net.nodes]
        cap = MAX_PENDING_CONFLICTS + 2
        sent: dict[str, Any] = {}

        def on_message(msg_type: m.MsgType, rid: int, body: Any) -> None:
            if msg_type != m.MsgType.PROPOSAL or state["done"] or body.round != 0 or body.height < h0:
                return
            if state["h"] not in (None, body.height):
                return
            state["h"], state["done"] = body.height, True
            p = Proposal.from_wire(body)
            a, b, c = roles(p.proposer)
            h = p.height
            real = Vote(VoteType.PREVOTE, h, 0, p.block.hash, z.address).signed(z, chain)
            junk = [Vote(VoteType.PREVOTE, h, 0, bytes([i + 1, k + 1]) * 16, z.address).signed(z, chain)
                    for i in range(2) for k in range(cap)]
            nxt_junk = [Vote(VoteType.PREVOTE, h + 1, 0, bytes([9, k + 1]) * 16, z.address).signed(z, chain)
                        for k in range(2)]
            nxt_real = Vote(VoteType.PREVOTE, h + 1, 0, NIL_HASH, z.address).signed(z, chain)
            sent.update(block=p.block, real=real, nxt_real=nxt_real, b=b, c=c)
            for n, i in enumerate((b, c)):
                for v in [*junk[n * cap:(n + 1) * cap], real, *nxt_junk, nxt_real]:
                    relays[i].send(m.MsgType.VOTE, v.to_wire())
            # a gets the real votes a little later, so its relay of them cannot beat the junk to b and c.
            for v in (real, nxt_real):
                reactor.callLater(0.1, relays[a].send, m.MsgType.VOTE, v.to_wire())
        for relay in relays:
            relay.on_message = on_message

        await wait_for(lambda: "block" in sent, 20.0, "z's votes sent")
        h, b, c = sent["block"].height, sent["b"], sent["c"]
        # b and c refused z's real next-height vote for a cap: it stays out of their seen-caches.
        await wait_for(lambda: all(vote_id(sent["nxt_real"]) not in net.nodes[i].p2p.seen and
                                   net.nodes[i].p2p.connections[relay_key.peer_id].messages_in >= cap + 5
                                   for i in (b, c)), 5.0, "z's votes handled by b and c")
        await wait_for(lambda: min(net.heights()) >= h, 30.0, f"height {h} decided by all three")
        assert {n.store.block_hash_at(h) for n in net.nodes} == {sent["block"].hash}
        # Only a quorum proof could bring b and c z's real prevote (their caps dropped it, and its id is in
        # their seen-caches): each took one.
        assert all(net.nodes[i].p2p.accepted[m.MsgType.VOTE_QUORUM] >= 1 for i in (b, c))
        await wait_for(lambda: min(net.heights()) >= h + 3, 20.0, "the three keep finalizing")
    finally:
        await net.stop()
