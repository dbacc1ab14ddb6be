"""The engine against Byzantine relays, skewed clocks and equivocators (issue 10, SPEC §4).

Each test names the hole it pins and fails on an engine without the protection:

1. a keyless relay replaces a proposal's body (same signed header, other txs/evidence);
2. a Byzantine validator's conflicting votes fill the caps, so a polka one node sees never reaches another;
3. clock skew: a refusal for time was cached per block hash, so a re-proposal with a proof of lock was
   refused too;
4. an equivocating proposer sends more blocks than the engine keeps: a node holding > 2/3 precommits for a
   block it lacks must fetch it by hash;
5. validity cached by header hash let a known header carry any body;
7. a proposer's timestamp decided how long the next height waited.
(Hole 6 is the P2P archive: tests/unit/test_gossip.py and the p2p integration tests.)
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from tests.simnet import SimNet, conflicting_vote
from tests.unit.test_engine import Driver
from timecoin import crypto
from timecoin.consensus import engine as eng
from timecoin.consensus.votes import MAX_PENDING_CONFLICTS
from timecoin.errors import Reason, ValidationError
from timecoin.ledger.block import NIL_HASH, Proposal, QuorumProof, Vote, VoteType, tx_root
from timecoin.ledger.state import validate_block
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.memstore import MemoryStore

PRE, PC = VoteType.PREVOTE, VoteType.PRECOMMIT


def _some_tx(d: Driver) -> Transaction:
    key = d.others[0].key
    return Transaction.create(key, TxKind.TRANSFER, d.net.chain_id, 0, 10_000, 5, d.me.address)


def _altered(p: Proposal, d: Driver) -> Proposal:
    """``p`` with a body its header does not commit to: the signature (over the header hash) still verifies."""
    return replace(p, block=replace(p.block, txs=(_some_tx(d),)))


def _commits(actions: list[eng.Action]) -> list[eng.CommitBlock]:
    return [a for a in actions if isinstance(a, eng.CommitBlock)]


def _decide_height_1(d: Driver) -> eng.CommitBlock:
    """Height 1 decided by the engine under test (left at step COMMITTED), committed to every node's store."""
    e = d.engine
    p0 = d.proposal(0)
    e.on_proposal(p0, 0.01)
    for x in d.others:
        e.on_vote(d.vote(x, PRE, 0, p0.block.hash), 0.02)
    out: list[eng.Action] = []
    for x in d.others:
        out += e.on_vote(d.vote(x, PC, 0, p0.block.hash), 0.03)
    commit = _commits(out)[0]
    for x in d.net.nodes:
        x.app.commit(commit.block, commit.certificate)
    return commit


# -- hole 1: a relay replaces a proposal's body ------------------------------------------------------
def test_relayed_proposal_with_altered_body_is_refused_and_the_genuine_one_still_counts() -> None:
    d = Driver()
    e = d.engine
    genuine = d.proposal(0)
    altered = _altered(genuine, d)
    altered.verify_signature(d.net.node_of(d.proposers[0]).key.public_key, d.net.chain_id)   # still "signed"
    assert d.refused(altered) == Reason.BAD_BLOCK
    assert e.proposals == {}                                  # not stored
    assert d.my_votes(e.on_proposal(genuine, 0.01)) == [d.vote(d.me, PRE, 0, genuine.block.hash)]


def test_oversized_proposal_body_is_refused_before_it_is_stored() -> None:
    d = Driver()
    params = d.me.app.params
    d.me.app.params = replace(params, max_block_txs=0)
    d.net.node_of(d.proposers[0]).app.params = replace(params, max_block_txs=5)
    p = d.proposal(0, block=d.net.node_of(d.proposers[0]).app.propose(1, 0, 1))
    tx = _some_tx(d)
    fat = replace(p.block, header=replace(p.block.header, tx_root=tx_root((tx,))), txs=(tx,))
    proposer = d.net.node_of(d.proposers[0])
    fat_p = Proposal(1, 0, -1, proposer.address, fat).signed(proposer.key, d.net.chain_id)
    assert d.refused(fat_p) == Reason.BLOCK_TOO_LARGE
    assert d.engine.proposals == {}


def test_reproposal_with_altered_body_is_never_committed() -> None:
    """Round 0's block B gets a polka we see; round 1 re-proposes B (pol_round 0), but a relay delivers it
    first with another body. We must refuse it, and the block we commit must be B's true body."""
    d = Driver()
    e = d.engine
    p0 = d.proposal(0)
    e.on_proposal(p0, 0.01)                                   # validated: B's hash is known as valid
    for x in d.others:
        e.on_vote(d.vote(x, PRE, 0, NIL_HASH), 0.02)
    for x in d.others:
        e.on_vote(d.vote(x, PC, 0, NIL_HASH), 0.03)
    e.on_timeout(1, 0, eng.TimeoutKind.PRECOMMIT, 0.04)
    assert e.round == 1
    p1 = d.proposal(1, pol_round=0, block=p0.block)
    bad = _altered(p1, d)
    out: list[eng.Action] = []
    try:
        out += e.on_proposal(bad, 0.05)
    except Exception as exc:                                  # the fixed engine refuses it
        assert getattr(exc, "reason", None) == Reason.BAD_BLOCK
    for x in d.others[:2]:
        out += e.on_vote(d.vote(x, PRE, 0, p0.block.hash), 0.06)
    try:
        out += e.on_proposal(p1, 0.07)
    except Exception as exc:
        assert getattr(exc, "reason", None) == Reason.DUPLICATE
    for x in d.others:
        out += e.on_vote(d.vote(x, PC, 1, p0.block.hash), 0.08)
    commits = _commits(out)
    assert len(commits) == 1
    assert commits[0].block.txs == p0.block.txs and commits[0].block.encoded == p0.block.encoded


# -- hole 5: validity cached by header hash ------------------------------------------------------------
def test_a_known_valid_header_does_not_vouch_for_another_body() -> None:
    d = Driver()
    genuine = d.proposal(0)
    assert d.me.app.validate(genuine.block)
    assert not d.me.app.validate(_altered(genuine, d).block)


# -- hole 3: timeliness is judged once, on a fresh proposal, and never cached as invalid --------------
def test_untimely_fresh_proposal_gets_nil_but_its_reproposal_with_a_proof_of_lock_is_prevoted() -> None:
    d = Driver()
    e = d.engine
    ahead = d.net.node_of(d.proposers[0]).app.propose(1, 0, 10_001)    # 10.001 s: our clock is at ~0
    p0 = d.proposal(0, block=ahead)
    assert d.my_votes(e.on_proposal(p0, 0.01)) == [d.vote(d.me, PRE, 0, NIL_HASH)]
    for x in d.others:                                        # the others (clocks ahead of ours) prevote it
        e.on_vote(d.vote(x, PRE, 0, ahead.hash), 11.0)
    assert e.valid_value == ahead and e.valid_round == 0       # a polka for it [L42-L43]
    for x in d.others:
        e.on_vote(d.vote(x, PC, 0, NIL_HASH), 11.0)
    e.on_timeout(1, 0, eng.TimeoutKind.PRECOMMIT, 11.1)
    p1 = d.proposal(1, pol_round=0, block=ahead)
    assert d.my_votes(e.on_proposal(p1, 11.2)) == [d.vote(d.me, PRE, 1, ahead.hash)]


@pytest.mark.parametrize(("offset_ms", "timely"), [
    (0, True), (-49, True), (249, True),          # receive - ts within [-precision, message_delay + precision]
    (-60, False), (260, False),                   # a clock 60 ms behind the proposer's; a message 260 ms late
    (-9_000, False),                              # stamped 9 s in our future (inside the old 10 s drift bound)
])
def test_fresh_proposal_timeliness_window(offset_ms: int, timely: bool) -> None:
    d = Driver()
    ts = 1_000
    p0 = d.proposal(0, block=d.net.node_of(d.proposers[0]).app.propose(1, 0, ts))
    vote = d.my_votes(d.engine.on_proposal(p0, (ts + offset_ms) / 1000))
    assert vote == [d.vote(d.me, PRE, 0, p0.block.hash if timely else NIL_HASH)]


# -- hole 7: the next height's wait depends on local time -----------------------------------------------
def test_a_future_stamped_parent_does_not_stretch_the_block_interval() -> None:
    net = SimNet(1, timeouts=eng.Timeouts(block_interval=1.0))
    node = net.nodes[0]
    out = node.engine.start_height(1, 100.0, prev_block_time=109.5)   # parent stamped 9.5 s in our future
    waits = [a.delay for a in out if isinstance(a, eng.ScheduleTimeout) and a.kind == eng.TimeoutKind.BLOCK_INTERVAL]
    assert waits and max(waits) <= 1.0


def test_proposal_timestamps_strictly_increase() -> None:
    net = SimNet(1, timeouts=eng.Timeouts(block_interval=0.0))
    net.start()
    assert net.run_until_height(5, max_time=5.0)
    stamps = [net.nodes[0].commits[h].header.timestamp for h in range(1, 6)]
    assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False))
    blk = net.nodes[0].commits[5]
    fresh = MemoryStore(net.genesis)
    for h in range(1, 5):
        fresh.commit_block(net.nodes[0].commits[h], net.nodes[0].certificates[h],
                           validate_block(fresh, net.genesis.params, net.nodes[0].commits[h], fresh.tip_hash(),
                                          net.nodes[0].commits[h - 1].header.timestamp if h > 1 else 0))
    same_time = replace(blk, header=replace(blk.header, timestamp=stamps[3]))
    with pytest.raises(ValidationError) as exc:
        validate_block(fresh, net.genesis.params, same_time, fresh.tip_hash(), stamps[3])
    assert exc.value.reason == Reason.BAD_TIMESTAMP


# -- hole 4: an equivocating proposer ------------------------------------------------------------------
def _proposals(d: Driver, n: int) -> list[Proposal]:
    proposer = d.net.node_of(d.proposers[0])
    return [Proposal(1, 0, -1, proposer.address, proposer.app.propose(1, 0, 1 + i)).signed(proposer.key,
                                                                                          d.net.chain_id)
            for i in range(n)]


def test_a_block_with_votes_sent_after_the_first_proposal_is_kept_and_decided() -> None:
    d = Driver()
    e = d.engine
    first, second, third = _proposals(d, 3)
    e.on_proposal(first, 0.01)
    for p in (second, third):
        try:
            e.on_proposal(p, 0.01)
        except Exception as exc:
            assert getattr(exc, "reason", None) == Reason.DUPLICATE
    out: list[eng.Action] = []
    for x in d.others:
        out += e.on_vote(d.vote(x, PC, 0, third.block.hash), 0.02)
    assert [c.block for c in _commits(out)] == [third.block]


def test_precommit_quorum_for_a_block_never_received_fetches_it_from_its_voters() -> None:
    d = Driver()
    e = d.engine
    ps = _proposals(d, 8)
    for p in ps:
        try:
            e.on_proposal(p, 0.01)
        except Exception as exc:
            assert getattr(exc, "reason", None) == Reason.DUPLICATE
    wanted = _proposals(d, 9)[-1].block                        # never sent to us at all
    out: list[eng.Action] = []
    for x in d.others:
        out += e.on_vote(d.vote(x, PC, 0, wanted.hash), 0.02)
    fetches = [a for a in out if isinstance(a, eng.FetchBlock)]
    assert len(fetches) == 1
    assert fetches[0].block_hash == wanted.hash and sorted(fetches[0].voters) == sorted(x.address for x in d.others)
    assert not _commits(out)
    assert d.refused_block(replace(wanted, txs=(_some_tx(d),))) == Reason.BAD_BLOCK   # body must match
    assert d.refused_block(ps[0].block) == Reason.DUPLICATE                            # already held
    assert [c.block for c in _commits(e.on_block(wanted, 0.03))] == [wanted]


def test_unrequested_blocks_are_not_kept() -> None:
    d = Driver()
    stray = _proposals(d, 1)[0].block
    assert d.refused_block(stray) == Reason.BAD_BLOCK        # no vote names it: we never asked for it
    assert d.engine.block_by_hash(stray.hash) is None


# -- hole 2: a Byzantine validator's conflicting votes cannot hide a polka ------------------------------
def test_a_quorum_proof_brings_the_votes_a_cap_dropped() -> None:
    """Validator z sends us junk conflicting prevotes, then its real prevote for B: the real one is over the
    per-validator cap and dropped. A peer that holds the polka sends a QuorumProof: we now see it and lock."""
    d = Driver()
    e = d.engine
    p0 = d.proposal(0)
    z, a, _ = d.others
    e.on_proposal(p0, 0.01)                                   # we prevote B
    junk = [bytes([i + 1]) * 32 for i in range(MAX_PENDING_CONFLICTS + 2)]
    e.on_vote(d.vote(z, PRE, 0, junk[0]), 0.02)
    for h in junk[1:]:
        e.on_vote(conflicting_vote(z.key, d.vote(z, PRE, 0, junk[0]), d.net.chain_id, h), 0.02)
    real_z = conflicting_vote(z.key, d.vote(z, PRE, 0, junk[0]), d.net.chain_id, p0.block.hash)
    e.on_vote(real_z, 0.02)
    e.on_vote(d.vote(a, PRE, 0, NIL_HASH), 0.02)
    assert e.locked_round == -1                               # we and z (dropped) only: no polka here
    proof = QuorumProof.from_votes([d.vote(d.me, PRE, 0, p0.block.hash), real_z,
                                    d.vote(d.others[2], PRE, 0, p0.block.hash)])
    out = e.on_quorum(proof, 0.03)
    assert e.locked_value == p0.block and e.locked_round == 0
    assert d.my_votes(out) == [d.vote(d.me, PC, 0, p0.block.hash)]


def test_quorum_proofs_are_checked_before_anything_counts() -> None:
    d = Driver()
    e = d.engine
    p0 = d.proposal(0)
    e.on_proposal(p0, 0.01)
    good = [d.vote(x, PRE, 0, p0.block.hash) for x in d.others]
    two = QuorumProof.from_votes(good[:2])                                   # 2 of 4: not > 2/3
    assert d.refused_quorum(two) == Reason.BAD_CERTIFICATE
    forged = QuorumProof.from_votes([good[0], good[1], replace(good[2], signature=good[1].signature)])
    assert d.refused_quorum(forged) == Reason.BAD_SIGNATURE
    outsider = crypto.PrivateKey(b"\x07" * 32)
    stranger = Vote(PRE, 1, 0, p0.block.hash, outsider.address).signed(outsider, d.net.chain_id)
    assert d.refused_quorum(QuorumProof.from_votes(good[:2] + [stranger])) == Reason.NOT_VALIDATOR
    ordered = QuorumProof.from_votes(good)
    unordered = replace(ordered, signatures=tuple(reversed(ordered.signatures)))
    assert d.refused_quorum(unordered) == Reason.BAD_CERTIFICATE
    assert e.locked_round == -1 and e.votes.get(0, PRE).power == e.validators.power_of(d.me.address)
    e.on_quorum(QuorumProof.from_votes(good), 0.02)
    assert e.locked_round == 0
    assert d.refused_quorum(QuorumProof.from_votes(good)) == Reason.DUPLICATE


def test_next_height_junk_cannot_crowd_out_a_validators_real_vote_for_good() -> None:
    """Two junk next-height prevotes fill z's buffer slots and its real one is refused; once the height
    starts, a peer's quorum proof still brings the real vote in."""
    d = Driver()
    e = d.engine
    z = d.others[0]
    junk = [d.vote(z, PRE, 0, bytes([9]) * 32, height=2),
            conflicting_vote(z.key, d.vote(z, PRE, 0, bytes([9]) * 32, height=2), d.net.chain_id, bytes([8]) * 32)]
    for v in junk:
        assert e.on_vote(v, 0.0) == []
    commit = _decide_height_1(d)
    proposer2 = d.net.node_of(d.me.app.proposer(2, 0))
    b2 = proposer2.app.propose(2, 0, commit.block.header.timestamp + 1)
    real = [Vote(PRE, 2, 0, b2.hash, x.address).signed(x.key, d.net.chain_id) for x in d.net.nodes]
    real_z = next(v for v in real if v.validator == z.address)
    with pytest.raises(Exception) as exc:                     # over z's cap while we are still at height 1...
        e.on_vote(real_z, 0.03)
    assert getattr(exc.value, "reason", None) == Reason.DUPLICATE
    e.start_height(2, 0.04, commit.block.header.timestamp / 1000)
    others = [v for v in real if v.validator not in (z.address, d.me.address)]
    # ...and once at height 2, a proof from a peer that saw the polka (z's real vote in it) is accepted
    out = e.on_quorum(QuorumProof.from_votes(others + [real_z]), 0.05)
    assert e.votes.get(0, PRE).quorum_for(b2.hash)
    assert isinstance(out, list)


def test_a_polka_hidden_from_some_nodes_by_conflicting_votes_still_reaches_them() -> None:
    """Network level, 4 validators, z Byzantine. Height 1, round 0: z shows nodes b and c junk conflicting
    prevotes that fill its per-validator cap before its real prevote for the proposal B reaches them, so the
    real one is dropped there; node a (the proposer) counts it. c gets the proposal only after its propose
    timeout (asynchrony before stabilisation) and prevotes nil. So a sees the polka {a, b, z} and locks B;
    b and c never do, and z is silent from then on. a (locked) prevotes nil on every fresh block, and a's
    re-proposal of B needs the round-0 polka that b and c lack: without vote propagation the chain halts
    for good. With QuorumProof gossip, a's proof of the polka reaches b and c and B is decided."""
    net = SimNet(4, seed=3, latency=(0.001, 0.01), gossip_interval=0.05)
    pa = net.nodes[0].app.proposer(1, 0)
    a = net.node_of(pa)
    z, b, c = (x for x in net.nodes if x is not a)
    cap = MAX_PENDING_CONFLICTS + 2

    def round0(src: int, dst: int, m: Proposal | Vote) -> bool:
        if src == z.index:
            return False                                      # z sends nothing but the scripted votes below
        if isinstance(m, Proposal) and m.height == 1 and m.round == 0 and dst in (b.index, c.index):
            late = 0.015 if dst == b.index else 0.06          # b after z's votes; c after its propose timeout
            net.at(late, lambda: net.deliver(net.nodes[dst], m))
            return False
        return True

    def z_script(node: object, msg: Proposal | Vote) -> list[Proposal | Vote]:
        if node is not z or not isinstance(msg, Vote) or msg.type != PRE or (msg.height, msg.round) != (1, 0):
            return []
        net.at(0.0, lambda: net.deliver(a, msg))
        for i, dst in enumerate((b, c)):
            junk = [Vote(PRE, 1, 0, bytes([i + 1, k + 1]) * 16, z.address).signed(z.key, net.chain_id)
                    for k in range(cap)]
            for v in [*junk, msg]:
                net.at(0.0, lambda dst=dst, v=v: net.deliver(dst, v))
        return []

    net.filters.append(round0)
    net.hooks.append(z_script)
    net.start()
    honest = [a, b, c]
    assert net.run_until_height(2, nodes=honest, max_time=30.0)
    net.assert_agreement()
    b0 = next(m for m in a.signed if isinstance(m, Proposal) and (m.height, m.round) == (1, 0)).block
    assert {x.commits[1].hash for x in honest} == {b0.hash}      # a's lock held: only B could be decided


def test_next_height_proposal_with_altered_body_is_refused_before_it_is_buffered() -> None:
    """Hole 1 through the next-height buffer: an altered body buffered first would make the genuine proposal
    (same signature, same header hash) a "duplicate" and be refused itself when the height starts."""
    d = Driver()
    e = d.engine
    commit = _decide_height_1(d)
    # we are still at height 1 (the service has not started height 2): height 2's proposal arrives early
    proposer = d.net.node_of(d.me.app.proposer(2, 0))
    b2 = proposer.app.propose(2, 0, commit.block.header.timestamp + 1)
    genuine = Proposal(2, 0, -1, proposer.address, b2).signed(proposer.key, d.net.chain_id)
    with pytest.raises(ValidationError) as exc:              # e is still at height 1 (decided)
        e.on_proposal(_altered(genuine, d), 0.04)
    assert exc.value.reason == Reason.BAD_BLOCK
    assert e.on_proposal(genuine, 0.04) == []                 # buffered
    assert genuine in e.buffered_next_height
