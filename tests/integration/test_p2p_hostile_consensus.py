"""Hostile peers against the consensus paths of the peer layer (issue 11, findings 4, 5 and 7), over real TLS.

The worlds here are observers on a generated chain whose validators never run: the test holds the
validators' keys, so it can play a Byzantine validator (sign whatever it likes) while the nodes under test
sit still at a known height. Raw peers (tests/p2pnet.py) deliver what the test signs or forges.

* Finding 4: a validator's next-height proposal that the node one height behind could have refused must be
  refused there, before it is relayed; otherwise the relay, an honest node, is charged (and banned) by a
  peer already at that height.
* Finding 5: a keyless peer's votes and proposals that the engine refuses must not reach the consensus WAL
  (only inputs the engine accepts are logged).
* Finding 7: a consensus frame for a height outside [h, h+1] costs about what reading its frame header does
  (its height is read at a fixed offset, before the body is decoded), and get_blocks answers are held to a
  byte budget per peer.
"""
from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.chaingen import ChainBuilder, ChainSpec, make_genesis
from tests.p2pnet import Net, banned, connect_ready, make_keys, score, sleep, wait_for
from timecoin import crypto
from timecoin.consensus import engine as eng
from timecoin.consensus.wal import WalKind, WalRecord
from timecoin.errors import Reason, ValidationError
from timecoin.ledger.block import NIL_HASH, Block, Header, Proposal, QuorumProof, Vote, VoteType, tx_root
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.node import Node
from timecoin.p2p import service as p2p_service
from timecoin.p2p.gossip import message_id
from timecoin.p2p.peers import DELTAS, Event
from timecoin.p2p.service import ENVELOPE_HEADER
from timecoin.store import Store
from timecoin.wire import messages as m
from timecoin.wire.framing import FrameDecoder, encode_frame

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
        # Judged: the signer itself delivered it, so the fault is its own, charged (race-prone or not).
        await wait_for(lambda: score(a, signer) < 0, 5.0, "A judged the proposal")
        await sleep(0.5)                              # time for a relayed copy to reach B and be judged
        assert not banned(b, a.key) and score(b, a.key) == 0, (fault, score(b, a.key))
        assert a.p2p.relayed[m.MsgType.PROPOSAL] == 0 and p not in a.consensus.engine.buffered_next_height
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


# -- finding 5: the consensus WAL holds only what the engine accepted ---------------------------------------
def wal_path(node: Node) -> str:
    return os.path.join(node.config.datadir, "consensus.wal")


def wal_records_from(node: Node, offset: int) -> list[WalRecord]:
    """The records of ``node``'s WAL from byte ``offset`` (read here, without opening it as a log)."""
    with open(wal_path(node), "rb") as f:
        f.seek(offset)
        data = f.read()
    out, off = [], 0
    while off + 8 <= len(data):
        length, crc = struct.unpack_from(">II", data, off)
        if length == 0:
            break                                  # the log's end: preallocated zeros follow
        body = data[off + 8: off + 8 + length]
        assert len(body) == length and zlib.crc32(body) == crc
        out.append(WalRecord(WalKind(body[0]), body[1:]))
        off += 8 + length
    return out


async def observer_at_height_1(tmp_path: Path, seed: int) -> tuple[Net, ChainSpec, Node]:
    """One observer of a 2-validator chain nobody runs, settled at height 1: its round-0 propose timeout has
    fired (and is in its WAL), and nothing else will happen there unless a peer sends something."""
    spec = make_genesis(validators=2, chain_id=CHAIN, seed=seed)
    net = Net(tmp_path, 0, observers=1, genesis=spec.genesis, keys=make_keys(1, seed=seed), sync_interval="60")
    await net.start(connect=False)
    node = net.nodes[0]
    await wait_for(lambda: node.consensus.engine.step >= eng.Step.PREVOTE, 5.0, "the propose timeout fired")
    await sleep(0.1)
    return net, spec, node


def junk_block(key: crypto.PrivateKey, txs: int) -> Block:
    """A height-1 block "proposed" by ``key`` carrying ``txs`` copies of one transfer (never valid: junk)."""
    tx = Transaction.create(key, TxKind.TRANSFER, CHAIN, 0, 10_000, 5, key.address)
    body = (tx,) * txs
    header = Header(1, 0, bytes(32), 1, key.address, tx_root(body), bytes(32), bytes(32), tx_root(()))
    return Block(header, body)


@pytest_twisted.ensureDeferred
async def test_a_keyless_peers_current_height_junk_never_reaches_the_wal(tmp_path: Path) -> None:
    # A keyless peer sends N votes and a few 20 kB proposals of the current height, all signed by its own
    # key (not a validator's): the engine refuses each (not_validator: a race-prone point, once), so the WAL
    # must not grow by a byte for them. Then it relays one genuine validator vote: that one is logged.
    n_votes, n_proposals = 1000, 10
    net, spec, node = await observer_at_height_1(tmp_path, seed=84)
    keyless = make_keys(1, seed=85)[0]
    try:
        peer = await connect_ready(keyless, node)
        conn = node.p2p.connections[keyless.peer_id]
        before = node.consensus.wal.size
        for i in range(n_votes):
            peer.send(m.MsgType.VOTE, Vote(VoteType.PREVOTE, 1, i % 50, i.to_bytes(32, "big"),
                                           keyless.address).signed(keyless, CHAIN).to_wire())
        block = junk_block(keyless, 150)
        for r in range(n_proposals):
            peer.send(m.MsgType.PROPOSAL, Proposal(1, r, -1, keyless.address, block).signed(keyless, CHAIN).to_wire())
        validator = spec.validators[0]
        genuine = Vote(VoteType.PREVOTE, 1, 0, NIL_HASH, validator.address).signed(validator, CHAIN)
        peer.send(m.MsgType.VOTE, genuine.to_wire())
        await wait_for(lambda: conn.messages_in >= n_votes + n_proposals + 1, 20.0, "the junk handled")
        await wait_for(lambda: node.consensus.engine.votes.get(0, VoteType.PREVOTE).votes.get(validator.address),
                       5.0, "the genuine vote counted")
        grown = node.consensus.wal.size - before
        assert wal_records_from(node, before) == [WalRecord(WalKind.VOTE, genuine.encoded)], grown
        assert score(node, keyless) >= DELTAS[Event.NOT_VALIDATOR] and not banned(node, keyless)
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_only_inputs_the_engine_accepts_are_logged(tmp_path: Path) -> None:
    # ConsensusService.receive_*, as the P2P layer calls them: every refused input (whatever the reason) leaves
    # the WAL as it was; an accepted one is logged once (its copy is a refused duplicate). A next-height
    # message is buffered, not logged yet: it is logged when its height starts, after this height's marker.
    net, spec, node = await observer_at_height_1(tmp_path, seed=86)
    consensus = node.consensus
    v0, v1 = spec.validators
    outsider = make_keys(1, seed=87)[0]
    try:
        before = node.consensus.wal.size
        forged = replace(Vote(VoteType.PREVOTE, 1, 0, NIL_HASH, v0.address).signed(outsider, CHAIN),
                         validator=v0.address)
        proposer = next(k for k in spec.validators if k.address == consensus.app.proposer(1, 0))
        swapped = Proposal(1, 0, -1, proposer.address, junk_block(proposer, 3)).signed(proposer, CHAIN)
        refused: list[tuple[Any, Any]] = [
            (consensus.receive_vote, Vote(VoteType.PREVOTE, 1, 0, NIL_HASH, outsider.address).signed(outsider, CHAIN)),
            (consensus.receive_vote, forged),
            (consensus.receive_vote, Vote(VoteType.PREVOTE, 1, eng.MAX_ROUND_AHEAD + 1, NIL_HASH,
                                          v0.address).signed(v0, CHAIN)),
            (consensus.receive_vote, Vote(VoteType.PREVOTE, 3, 0, NIL_HASH, v0.address).signed(v0, CHAIN)),
            (consensus.receive_proposal, Proposal(1, 0, -1, outsider.address, junk_block(outsider, 3)).signed(
                outsider, CHAIN)),
            (consensus.receive_proposal, replace(swapped, block=replace(swapped.block, txs=swapped.block.txs[:2]))),
            (consensus.receive_quorum, QuorumProof.from_votes(sorted(
                [Vote(VoteType.PREVOTE, 1, 0, NIL_HASH, k.address).signed(k, CHAIN) for k in (v0, outsider)],
                key=lambda v: v.validator))),
        ]
        for receive, msg in refused:                  # (the swapped body: one its header does not commit to)
            with pytest.raises(ValidationError):
                receive(msg)
        assert node.consensus.wal.size == before
        genuine = Vote(VoteType.PREVOTE, 1, 0, NIL_HASH, v1.address).signed(v1, CHAIN)
        consensus.receive_vote(genuine)
        with pytest.raises(ValidationError) as copy:
            consensus.receive_vote(genuine)
        assert copy.value.reason == Reason.DUPLICATE
        consensus.receive_vote(Vote(VoteType.PREVOTE, 2, 0, NIL_HASH, v1.address).signed(v1, CHAIN))   # buffered
        assert wal_records_from(node, before) == [WalRecord(WalKind.VOTE, genuine.encoded)]
    finally:
        await net.stop()


# -- finding 7: CPU and bytes for free ---------------------------------------------------------------------
def _cpu_per_call(fn: Any, n: int, repeats: int = 3) -> float:
    """CPU seconds per call of ``fn(i)`` for i in range(n): the best of ``repeats`` runs (bounded)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for i in range(n):
            fn(i)
        best = min(best, (time.process_time() - t0) / n)
    return best


@pytest_twisted.ensureDeferred
async def test_an_out_of_window_proposal_costs_about_a_frame_header_not_a_decode(tmp_path: Path) -> None:
    # A keyless peer sends proposals with a 1 MiB block for heights outside [h, h+1] (far ahead and behind).
    # Handling one (PeerConnection.process_one, the node's whole path for a queued frame) must cost a bounded
    # multiple of reading a frame header -- a FrameDecoder taking small frames off the stream -- whatever the
    # size of the body, which must never be decoded. The far-ahead height is remembered as the peer's; no
    # charge (honest peers send both kinds when one side lags).
    n = 20
    net, spec, node = await observer_at_height_1(tmp_path, seed=88)
    keyless = make_keys(1, seed=89)[0]
    try:
        await connect_ready(keyless, node)
        conn = node.p2p.connections[keyless.peer_id]
        block = junk_block(keyless, 7_000)
        payloads = [m.encode_message(m.MsgType.PROPOSAL, Proposal(h, 0, -1, keyless.address, block).signed(
            keyless, CHAIN).to_wire()) for h in (1_000, 0)]
        assert all(len(p) > 1 << 20 for p in payloads)
        handled = conn.messages_in

        def handle(i: int) -> None:
            conn.inbox.append(payloads[i % 2])
            conn.process_one()

        small = b"".join(encode_frame(m.encode_message(m.MsgType.PING, {"nonce": i, "payload": b""}))
                         for i in range(1000))
        per_message = per_header = float("inf")
        for _ in range(3):                            # interleaved, the best of each: both see the same machine
            per_message = min(per_message, _cpu_per_call(handle, n, repeats=1))
            per_header = min(per_header, _cpu_per_call(lambda i: FrameDecoder().feed(small), 1, repeats=1) / 1000)
        assert conn.messages_in == handled + 3 * n and not conn.inbox
        print(f"CPU per out-of-window 1 MiB proposal: {per_message * 1e6:.1f} us; "
              f"per frame header read: {per_header * 1e6:.2f} us")
        assert per_message <= 20 * per_header, (per_message, per_header)
        assert conn.height == 999 and score(node, keyless) == 0 and keyless.peer_id in node.p2p.connections
        assert node.consensus.engine.height == 1 and node.p2p.accepted[m.MsgType.PROPOSAL] == 0
    finally:
        await net.stop()


def _blocks_bytes(peer: Any) -> tuple[list[int], list[int]]:
    """(bytes of each BLOCKS answer received, reasons of each REJECT) so far, from a raw peer's log."""
    sizes = [len(m.encode_message(t, body)) for t, body in peer.messages if t == m.MsgType.BLOCKS]
    return sizes, [body.reason for t, body in peer.messages if t == m.MsgType.REJECT]


@pytest_twisted.ensureDeferred
async def test_get_blocks_answers_are_held_to_a_byte_budget_per_peer(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A peer asks again and again for a range of 40 blocks of ~3 kB (request rate limit lifted: the byte
    # budget alone must bind). With a budget of BURST bytes at once, RATE per minute and PER_REQUEST per
    # answer, it gets at most BURST + RATE x elapsed + one block over all its answers; each answer holds at
    # least one block, or the request is refused rate_limited (and not charged: the limit is ours).
    burst, rate, per_request = 24 << 10, 12 << 10, 16 << 10
    monkeypatch.setattr(p2p_service, "RESPONSE_BYTES_BURST", burst, raising=False)
    monkeypatch.setattr(p2p_service, "RESPONSE_BYTES_PER_MINUTE", rate, raising=False)
    spec = make_genesis(validators=2, chain_id=CHAIN, seed=90, funded=2)
    net = Net(tmp_path, 0, observers=1, genesis=spec.genesis, keys=make_keys(1, seed=90), sync_interval="60",
              rate_limit="1000000", rate_limit_burst="1000", sync_response_bytes=str(per_request))
    builder = ChainBuilder(Store(net.chain_path(0)), spec)
    builder.build(40, txs_per_block=20)
    biggest = max(b.size + len(c.encoded) for b, c in builder.store.get_blocks(1, 40))
    builder.store.close()
    asker = make_keys(1, seed=91)[0]
    asks = 30
    try:
        await net.start(connect=False)
        node = net.nodes[0]
        peer = await connect_ready(asker, node)
        t0 = time.monotonic()
        for i in range(asks):
            peer.send(m.MsgType.GET_BLOCKS, {"start": 1, "count": 100}, request_id=i + 1)
        await wait_for(lambda: sum(map(len, _blocks_bytes(peer))) >= asks, 10.0, "every request answered")
        elapsed = time.monotonic() - t0
        sizes, rejects = _blocks_bytes(peer)
        total = sum(sizes)
        print(f"{asks} get_blocks of 40 x {biggest} B blocks: {total} B answered, {len(rejects)} refused")
        assert total <= burst + rate * elapsed / 60 + biggest + 1024 * len(sizes), (total, sizes)
        assert sizes and all(size <= per_request + biggest + 1024 for size in sizes)
        assert all(reason == int(Reason.RATE_LIMITED) for reason in rejects) and len(rejects) >= asks // 2
        assert score(node, asker) >= 0
    finally:
        await net.stop()
