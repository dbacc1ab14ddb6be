"""The Tendermint engine (SPEC §4) over the in-memory simulated network of ``tests/simnet.py``.

Properties checked with 4 and 7 real validators (real keys, chain app, guard and engine): agreement at
every height under seeded reordering, drops and duplicates; liveness once messages flow; a silent
proposer costs exactly one round; equivocation becomes verifiable evidence (and jails the validator);
byzantine validators that show different proposals and votes to different nodes cannot split or stall
the correct ones; more than 1/3 of power silent finalizes nothing and locks nothing (and Algorithm 1
then waits in round 0: no round can end without 2f+1 messages); per-round timeout escalation; the
locking rules; and every refusal carries the right Reason.
"""
from __future__ import annotations

import random
from dataclasses import replace

import pytest

from tests.simnet import FAST, STAKE_UNIT, SimNet, SimNode, conflicting_vote, is_prevote, make_keys
from timecoin import crypto
from timecoin.consensus import engine as eng
from timecoin.consensus.votes import MAX_PENDING_CONFLICTS, VoteSet
from timecoin.errors import Reason, ValidationError
from timecoin.ledger.block import (
    NIL_HASH,
    Block,
    Evidence,
    Proposal,
    QuorumProof,
    Vote,
    VoteType,
    verify_certificate,
)

H = 12     # heights per chaos run: enough for every proposer to lead several times, still well under a second


def _check_certificates(net: SimNet) -> None:
    """Every committed block carries a certificate that proves finality on its own (SPEC §3)."""
    for node in net.nodes:
        for h, block in node.commits.items():
            verify_certificate(block, node.certificates[h], node.store.validator_set(h), net.chain_id)


# -- agreement and liveness under message chaos ----------------------------------------------------------
@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_agreement_and_liveness_with_reordering_drops_and_duplicates(n: int, seed: int) -> None:
    net = SimNet(n, seed=seed, drop=0.15, duplicate=0.15, latency=(0.001, 0.05), gossip_interval=0.05)
    net.start()
    assert net.run_until_height(H, max_time=60.0, max_events=200_000), \
        f"stuck at heights {[x.height for x in net.nodes]} after {net.now:.1f} s"
    assert net.assert_agreement() >= H
    _check_certificates(net)
    # the chaos really happened, and the duplicates were refused as such
    assert net.stats["dropped"] > 0 and net.stats["duplicated"] > 0
    assert sum(x.rejects[Reason.DUPLICATE] for x in net.nodes) > 0
    # every node executed the same chain: same state root at every common height
    for h in range(1, H + 1):
        assert len({x.store.get_block(h).header.state_root for x in net.nodes}) == 1


@pytest.mark.parametrize("n", [4, 7])
def test_clean_network_commits_every_height_in_round_0_with_rotating_proposers(n: int) -> None:
    net = SimNet(n, seed=5, latency=(0.001, 0.005))
    net.start()
    assert net.run_until_height(3 * n, max_time=10.0)
    assert net.assert_agreement() >= 3 * n
    node = net.nodes[0]
    assert all(node.commit_rounds[h] == 0 for h in range(1, 3 * n + 1))
    proposers = [node.commits[h].header.proposer for h in range(1, 3 * n + 1)]
    by_address = sorted(k.address for k in net.keys)
    # equal power: round robin in address order, every validator once per n heights
    assert proposers == [by_address[i % n] for i in range(3 * n)]


def test_stake_weighted_proposers_in_consensus() -> None:
    """Powers (3, 1): the heavy validator proposes 3 of every 4 blocks (and alone holds > 2/3)."""
    # a block interval, so the heavy validator (which decides alone) does not leave the light one behind
    net = SimNet(2, powers=[3, 1], seed=1, latency=(0.001, 0.005), timeouts=replace(FAST, block_interval=0.05))
    net.start()
    assert net.run_until_height(8, max_time=10.0)
    net.assert_agreement()
    heavy = net.keys[0].address
    proposers = [net.nodes[1].commits[h].header.proposer for h in range(1, 9)]
    assert proposers.count(heavy) == 6
    for i in range(0, 8, 4):
        assert proposers[i:i + 4].count(heavy) == 3


def test_block_interval_spaces_blocks() -> None:
    net = SimNet(4, seed=2, timeouts=replace(FAST, block_interval=0.5), latency=(0.001, 0.005))
    net.start()
    assert net.run_until_height(4, max_time=10.0)
    times = [net.nodes[0].commits[h].header.timestamp for h in range(1, 5)]
    assert all(b - a >= 500 for a, b in zip(times, times[1:], strict=False))
    kinds = {a.kind for x in net.nodes for _, a in x.scheduled}
    assert eng.TimeoutKind.BLOCK_INTERVAL in kinds


# -- faults ----------------------------------------------------------------------------------------------
def test_silent_proposer_costs_exactly_one_round() -> None:
    net = SimNet(4, seed=3, latency=(0.001, 0.005))

    def silent_at_3(src: int, dst: int, m: Proposal | Vote) -> bool:
        # everything the round-0 proposer of height 3 sends at height 3 is lost
        node = net.nodes[src]
        return not (m.height == 3 and node.address == node.app.proposer(3, 0))

    net.filters.append(silent_at_3)
    net.start()
    assert net.run_until_height(6, max_time=10.0)
    net.assert_agreement()
    silent = net.nodes[0].app.proposer(3, 0)
    assert any(isinstance(m, Proposal) and m.height == 3 for m in net.node_of(silent).signed)
    for node in net.nodes:
        assert node.commit_rounds[3] == 1
        assert [node.commit_rounds[h] for h in (1, 2, 4, 5, 6)] == [0, 0, 0, 0, 0]
        assert node.commits[3].header.proposer == net.nodes[0].app.proposer(3, 1) != silent
    # the cost is one propose timeout, not a hang: height 3 took longer than timeout_propose, height 4 did not
    t = net.nodes[1].commit_times
    assert t[3] - t[2] > FAST.propose
    assert t[4] - t[3] < FAST.propose


@pytest.mark.parametrize("n", [4, 7])
def test_equivocation_becomes_evidence_and_jails_the_validator(n: int) -> None:
    net = SimNet(n, seed=4, latency=(0.001, 0.01))
    byz = net.nodes[-1]
    forged: list[Vote] = []

    def equivocate(node: SimNode, msg: Proposal | Vote) -> list[Proposal | Vote]:
        # at height 2 the byzantine validator also signs (with its key, no guard) a prevote for another block
        if node is byz and is_prevote(msg) and msg.height == 2 and not forged:
            forged.append(conflicting_vote(byz.key, msg, net.chain_id))
            return list(forged)
        return []

    net.hooks.append(equivocate)
    net.start()
    assert net.run_until_height(6, max_time=10.0)
    net.assert_agreement()
    honest = [x for x in net.nodes if x is not byz]
    real = next(m for m in byz.signed if is_prevote(m) and m.height == 2)
    # a node that decided height 2 before both votes reached it never compares them; the others must
    detected = [x for x in honest if x.evidence]
    assert len(detected) >= len(honest) - 1
    for node in detected:
        ev = node.evidence[0]
        ev.verify(node.store.validator_set(2), net.chain_id)        # raises unless it proves equivocation
        assert ev == Evidence.of(real, forged[0])
        assert ev.validator == byz.address and ev.height == 2
    # the evidence went into a block, which jailed the validator and dropped it from later sets
    node = honest[0]
    with_ev = [h for h, b in node.commits.items() if b.evidence]
    assert with_ev, "no block included the evidence"
    h_ev = with_ev[0]
    assert node.commits[h_ev].evidence[0].validator == byz.address
    assert node.store.get_account(byz.address).jailed
    assert byz.address not in node.store.validator_set(h_ev + 2)
    assert byz.address in node.store.validator_set(h_ev)


def test_equivocating_vote_for_an_unbacked_value_waits_and_yields_evidence() -> None:
    """Direct: the second, different vote is reported (EvidenceFound); its value, which no first vote backs
    and no quorum proof justified, is not tallied (it waits in the bounded pending list, votes.py)."""
    d = Driver()
    net, node = d.net, d.me
    bad = d.others[0].key
    first = Vote(VoteType.PREVOTE, 1, 0, b"\x01" * 32, bad.address).signed(bad, net.chain_id)
    second = conflicting_vote(bad, first, net.chain_id, b"\x02" * 32)
    assert node.engine.on_vote(first, 0.0) == []
    out = node.engine.on_vote(second, 0.0)
    assert out == [eng.EvidenceFound(Evidence.of(first, second))]
    out[0].evidence.verify(node.store.validator_set(1), net.chain_id)
    tally = node.engine.votes.get(0, VoteType.PREVOTE)
    assert tally.power_by_hash.get(b"\x02" * 32, 0) == 0
    assert tally.votes[bad.address] == first
    # evidence in the wrong order, or about two equal votes, is refused
    with pytest.raises(ValidationError) as exc:
        Evidence(out[0].evidence.vote_b, out[0].evidence.vote_a).verify(node.store.validator_set(1), net.chain_id)
    assert exc.value.reason == Reason.BAD_EVIDENCE


def test_an_equivocators_vote_still_counts_for_its_value() -> None:
    """Algorithm 1 counts votes per value from distinct senders. Here one correct validator is silent and
    the equivocator's first vote to us is for another value: only its second vote (for our block) makes
    the polka and the decision, and the certificate holds its precommit."""
    d = Driver()
    e, pre, pc = d.engine, VoteType.PREVOTE, VoteType.PRECOMMIT
    honest, byz = d.others[0], d.others[1]                   # d.others[2] stays silent
    p0 = d.proposal(0)
    e.on_proposal(p0, 0.01)
    other = b"\x77" * 32
    z_first = d.vote(byz, pre, 0, other)
    e.on_vote(z_first, 0.01)
    e.on_vote(d.vote(honest, pre, 0, p0.block.hash), 0.02)
    out = e.on_vote(d.vote(byz, pre, 0, p0.block.hash), 0.03)
    assert any(isinstance(a, eng.EvidenceFound) for a in out)
    assert d.my_votes(out) == [d.vote(d.me, pc, 0, p0.block.hash)]            # the polka counted it
    assert e.locked_round == 0
    e.on_vote(d.vote(byz, pc, 0, other), 0.04)
    e.on_vote(d.vote(honest, pc, 0, p0.block.hash), 0.05)
    out = e.on_vote(d.vote(byz, pc, 0, p0.block.hash), 0.06)
    commit = next(a for a in out if isinstance(a, eng.CommitBlock))
    assert commit.block == p0.block
    assert byz.address in dict(commit.certificate.signatures)
    verify_certificate(commit.block, commit.certificate, d.me.store.validator_set(1), d.net.chain_id)
    # the "any value" tally still counts each validator once
    assert e.votes.get(0, pre).power == 3 * STAKE_UNIT


def test_vote_set_counts_conflicts_per_value_within_bounds() -> None:
    """votes.py: a conflicting vote counts toward its value if nil or backed by someone's first vote; else
    it waits (at most MAX_PENDING_CONFLICTS per validator) until a first vote backs it. Never counted twice."""
    keys = make_keys(4, "voteset")
    vs = VoteSet(total_power=4)
    z, a = keys[0], keys[1]

    def v(key: crypto.PrivateKey, h: bytes) -> Vote:
        return Vote(VoteType.PREVOTE, 1, 0, h, key.address).signed(key, "c")

    x, y = b"\x01" * 32, b"\x02" * 32
    assert vs.add(v(z, x), 1) is True
    junk = [bytes([9, i]) + bytes(30) for i in range(50)]
    for j in junk:                                            # a flood of distinct values nobody backs
        assert isinstance(vs.add(v(z, j), 1), Evidence)
    assert len(vs.pending[z.address]) == MAX_PENDING_CONFLICTS
    assert set(vs.power_by_hash) == {x} and vs.power == 1
    assert vs.add(v(a, junk[0]), 1) is True                 # a first vote backs junk[0]: z's waiting vote counts
    assert vs.power_by_hash[junk[0]] == 2 and vs.power == 2
    assert len(vs.pending[z.address]) == MAX_PENDING_CONFLICTS - 1
    assert vs.add(v(z, junk[0]), 1) is False                # and is now a duplicate
    assert isinstance(vs.add(v(z, NIL_HASH), 1), Evidence)  # nil always counts
    assert vs.power_by_hash[NIL_HASH] == 1
    assert vs.add(v(z, NIL_HASH), 1) is False
    assert isinstance(vs.add(v(a, y), 1), Evidence)         # y: nobody's first vote, waits
    assert y not in vs.power_by_hash
    assert vs.add(v(z, x), 1) is False
    assert sorted(vote.validator for vote in vs.votes_for(junk[0])) == sorted([z.address, a.address])


def test_decision_on_an_equivocating_proposers_other_block() -> None:
    """The round's proposer showed us one block and the others another, which they decided: the decision
    rule [L49] matches any proposal of the round, so we decide it too (no block sync needed)."""
    d = Driver()
    e = d.engine
    proposer = d.net.node_of(d.proposers[0])
    decided = d.proposal(0)
    ours = Proposal(1, 0, -1, proposer.address, proposer.app.propose(1, 0, 4321)).signed(
        proposer.key, d.net.chain_id)
    assert ours.block.hash != decided.block.hash
    e.on_proposal(ours, 0.01)
    for x in d.others[:2]:
        e.on_vote(d.vote(x, VoteType.PRECOMMIT, 0, decided.block.hash), 0.02)
    assert d.refused(decided) == Reason.DUPLICATE          # not voted on (the first proposal was), but kept
    out = e.on_vote(d.vote(d.others[2], VoteType.PRECOMMIT, 0, decided.block.hash), 0.03)
    assert [a.block for a in out if isinstance(a, eng.CommitBlock)] == [decided.block]


@pytest.mark.parametrize(("n", "silent"), [(4, 2), (7, 3)])
def test_more_than_one_third_silent_finalizes_nothing_then_recovers(n: int, silent: int) -> None:
    net = SimNet(n, seed=6, latency=(0.001, 0.01), gossip_interval=0.1)
    muted = net.nodes[n - silent:]
    for x in muted:
        x.mute = True
    net.start()
    net.run_for(10.0)
    honest = net.nodes[:n - silent]
    assert all(not x.commits and x.height == 0 for x in net.nodes)
    for x in honest:
        # nothing unsafe: no honest node locked or precommitted a block
        assert x.engine.locked_round == -1 and x.engine.locked_value is None
        assert all(m.is_nil for m in x.signed if isinstance(m, Vote) and m.type == VoteType.PRECOMMIT)
        # Algorithm 1 waits for 2f+1 prevotes before any prevote timeout [L34]: the round cannot end
        assert (x.engine.height, x.engine.round, x.engine.step) == (1, 0, eng.Step.PREVOTE)
    # messages flow again (gossip re-sends what was lost): the network finalizes and keeps going
    for x in muted:
        x.mute = False
    assert net.run_until_height(4, max_time=30.0)
    net.assert_agreement()
    _check_certificates(net)


def test_timeouts_escalate_per_round() -> None:
    timeouts = eng.Timeouts(propose=0.04, propose_delta=0.01, prevote=0.01, prevote_delta=0.005,
                            precommit=0.01, precommit_delta=0.005, block_interval=0.0)
    net = SimNet(4, seed=7, timeouts=timeouts, latency=(0.001, 0.005))
    rounds_lost = 5
    # every proposal of height 1 before round 5 is lost: rounds 0..4 end by timeouts
    net.filters.append(lambda src, dst, m: not (isinstance(m, Proposal) and m.height == 1 and m.round < rounds_lost))
    net.start()
    assert net.run_until_height(1, max_time=10.0)
    net.assert_agreement()
    assert {x.commit_rounds[1] for x in net.nodes} == {rounds_lost}
    for node in net.nodes:
        delays: dict[eng.TimeoutKind, dict[int, float]] = {}
        for _, a in node.scheduled:
            if a.height == 1:
                delays.setdefault(a.kind, {})[a.round] = a.delay
        for kind in (eng.TimeoutKind.PREVOTE, eng.TimeoutKind.PRECOMMIT):
            got = delays[kind]
            assert set(range(rounds_lost)) <= set(got)
            for r, d in got.items():
                assert d == pytest.approx(timeouts.for_step(kind, r))
        propose = delays[eng.TimeoutKind.PROPOSE]
        assert len(propose) >= rounds_lost - 2           # not scheduled in the rounds this node proposed
        for r, d in propose.items():
            assert d == pytest.approx(0.04 + 0.01 * r)
    # and the rounds took longer and longer: the last lost round lasted longer than the first
    ends = sorted(t for t, a in net.nodes[0].scheduled if a.height == 1 and a.kind == eng.TimeoutKind.PRECOMMIT)
    assert len(ends) == rounds_lost
    assert ends[-1] - ends[-2] > ends[1] - ends[0] + 0.02


@pytest.mark.parametrize(("n", "byzantine"), [(4, 1), (7, 2)])
@pytest.mark.parametrize("seed", [1, 2, 9])
def test_byzantine_split_brain_proposers_and_voters(n: int, byzantine: int, seed: int) -> None:
    """f < n/3 byzantine validators show one proposal and one vote to half of the correct nodes and a
    conflicting one (signed with their keys, no guard) to the other half: a competing *real* block of that
    height and round (valid, built by the Byzantine node), and votes for it, never junk hashes. Correct
    nodes relay what they accept (gossip). Agreement must hold, and the correct nodes must keep finalizing
    by consensus alone (no block sync): this needs the paper's per-value counting of an equivocator's votes
    and its decision rule matching any proposal of the round (regressions: both once livelocked or stalled
    here)."""
    net = SimNet(n, seed=seed, drop=0.1, duplicate=0.1, latency=(0.001, 0.05), gossip_interval=0.05)
    byz = set(range(n - byzantine, n))
    correct = [i for i in range(n) if i not in byz]
    group_b = set(random.Random(seed).sample(correct, len(correct) // 2))
    alternative: set[bytes] = set()
    competing: dict[tuple[int, int], Block] = {}     # (height, round) -> the real block group b is shown

    def competing_block(node: SimNode, height: int, round_: int, ts: int) -> Block:
        """A real, valid block of that height and round (not a junk hash): what the Byzantine side backs."""
        if (height, round_) not in competing and node.height + 1 == height:
            competing[(height, round_)] = node.app.propose(height, round_, ts + 1 + round_)
        return competing.get((height, round_)) or node.app.propose(node.height + 1, round_, ts + 1)

    def two_faced(node: SimNode, msg: Proposal | Vote) -> list[Proposal | Vote]:
        if node.index not in byz:
            return []
        if isinstance(msg, Proposal):
            block = competing_block(node, msg.height, msg.round, msg.block.header.timestamp)
            alt: Proposal | Vote = Proposal(msg.height, msg.round, msg.pol_round, node.address, block).signed(
                node.key, net.chain_id)
        else:
            block = competing_block(node, msg.height, msg.round, int(net.now * 1000))
            other = block.hash if block.hash != msg.block_hash else NIL_HASH
            alt = conflicting_vote(node.key, msg, net.chain_id, other)
        alternative.add(alt.signature)
        return [alt]

    net.hooks.append(two_faced)
    net.filters.append(lambda src, dst, m: src not in byz or (     # byzantine nodes offer no quorum proofs
        not isinstance(m, QuorumProof) and (m.signature in alternative) == (dst in group_b)))
    net.start()
    assert net.run_until_height(H, nodes=[net.nodes[i] for i in correct], max_time=60.0, max_events=200_000), \
        f"correct nodes stuck at {[net.nodes[i].height for i in correct]}"
    net.assert_agreement()
    _check_certificates(net)
    assert alternative and any(net.nodes[i].evidence for i in correct)
    assert not any(net.nodes[i].synced for i in range(n))


def test_lagging_node_catches_up_by_block_sync() -> None:
    """The harness's block sync: a node down for many heights takes certified blocks from a peer."""
    net = SimNet(4, seed=8, latency=(0.001, 0.01), sync_after=0.2)           # no gossip: old heights never return
    late = net.nodes[3]
    net.crash(late)
    net.start()
    assert net.run_until_height(10, nodes=net.nodes[:3], max_time=10.0)
    assert late.height == 0
    late = net.restart(late)
    assert net.run_until_height(net.nodes[0].height + 2, max_time=20.0)
    net.assert_agreement()
    assert late.synced and late.synced[0] == 1


# -- a single engine driven by hand ----------------------------------------------------------------------
class Driver:
    """One engine under test (a validator that proposes in none of rounds 0..2) and the others' keys."""

    def __init__(self) -> None:
        self.net = SimNet(4)
        app = self.net.nodes[0].app
        self.proposers = [app.proposer(1, r) for r in range(3)]
        self.me = next(x for x in self.net.nodes if x.address not in self.proposers)
        self.engine = self.me.engine
        self.actions = self.engine.start_height(1, 0.0, 0.0)
        self.others = [x for x in self.net.nodes if x is not self.me]

    def proposal(self, round_: int, pol_round: int = -1, block: Block | None = None) -> Proposal:
        node = self.net.node_of(self.proposers[round_])
        block = block or node.app.propose(1, round_, round_ + 1)     # ms: timely at the times the tests use
        return Proposal(1, round_, pol_round, node.address, block).signed(node.key, self.net.chain_id)

    def vote(self, node: SimNode, vtype: VoteType, round_: int, block_hash: bytes, height: int = 1) -> Vote:
        return Vote(vtype, height, round_, block_hash, node.address).signed(node.key, self.net.chain_id)

    def my_votes(self, actions: list[eng.Action]) -> list[Vote]:
        return [a.vote for a in actions if isinstance(a, eng.BroadcastVote)]

    def refused(self, msg: Proposal | Vote) -> Reason:
        with pytest.raises(ValidationError) as exc:
            if isinstance(msg, Proposal):
                self.engine.on_proposal(msg, 0.0)
            else:
                self.engine.on_vote(msg, 0.0)
        return exc.value.reason

    def refused_block(self, block: Block) -> Reason:
        with pytest.raises(ValidationError) as exc:
            self.engine.on_block(block, 0.0)
        return exc.value.reason

    def refused_quorum(self, proof: QuorumProof) -> Reason:
        with pytest.raises(ValidationError) as exc:
            self.engine.on_quorum(proof, 0.0)
        return exc.value.reason


def test_refusals_carry_the_right_reason() -> None:
    d = Driver()
    e, pre = d.engine, VoteType.PREVOTE
    a = d.others[0]
    outsider = make_keys(1, "outsider")[0]
    # votes
    assert d.refused(Vote(pre, 1, 0, NIL_HASH, outsider.address).signed(outsider, d.net.chain_id)) \
        == Reason.NOT_VALIDATOR
    forged = Vote(pre, 1, 0, NIL_HASH, a.address).signed(outsider, d.net.chain_id)
    assert forged.validator == outsider.address
    assert d.refused(replace(forged, validator=a.address)) == Reason.BAD_SIGNATURE
    good = d.vote(a, pre, 0, NIL_HASH)
    flipped = bytearray(good.signature)
    flipped[10] ^= 1
    assert d.refused(replace(good, signature=bytes(flipped))) == Reason.BAD_SIGNATURE
    other_chain = Vote(pre, 1, 0, NIL_HASH, a.address).signed(a.key, "another-chain")
    assert d.refused(other_chain) == Reason.BAD_SIGNATURE
    assert d.refused(d.vote(a, pre, 0, NIL_HASH, height=3)) == Reason.WRONG_HEIGHT
    assert d.refused(d.vote(a, pre, 0, NIL_HASH, height=0)) == Reason.WRONG_HEIGHT
    assert d.refused(d.vote(a, pre, eng.MAX_ROUND_AHEAD + 1, NIL_HASH)) == Reason.WRONG_ROUND
    assert e.on_vote(good, 0.0) == []
    assert d.refused(good) == Reason.DUPLICATE
    assert e.votes.get(0, pre).power == STAKE_UNIT           # counted once
    # proposals
    p0 = d.proposal(0)
    imposter = next(x for x in d.others if x.address != d.proposers[0])
    assert d.refused(Proposal(1, 0, -1, imposter.address, p0.block).signed(imposter.key, d.net.chain_id)) \
        == Reason.NOT_VALIDATOR
    assert d.refused(replace(p0, signature=bytes(64))) == Reason.BAD_SIGNATURE
    assert d.refused(replace(p0, pol_round=0).signed(d.net.node_of(p0.proposer).key, d.net.chain_id)) \
        == Reason.WRONG_ROUND
    wrong_height = replace(p0.block, header=replace(p0.block.header, height=2))
    prop_node = d.net.node_of(p0.proposer)
    assert d.refused(Proposal(1, 0, -1, p0.proposer, wrong_height).signed(prop_node.key, d.net.chain_id)) \
        == Reason.BAD_BLOCK
    assert d.refused(Proposal(1, eng.MAX_ROUND_AHEAD + 1, -1, p0.proposer, p0.block).signed(
        prop_node.key, d.net.chain_id)) == Reason.WRONG_ROUND
    assert d.my_votes(e.on_proposal(p0, 0.0)) == [d.vote(d.me, pre, 0, p0.block.hash)]
    assert d.refused(p0) == Reason.DUPLICATE
    second = Proposal(1, 0, -1, p0.proposer, prop_node.app.propose(1, 0, 5000)).signed(prop_node.key, d.net.chain_id)
    assert second.block.hash != p0.block.hash
    assert d.refused(second) == Reason.DUPLICATE             # the first proposal of a round wins


def test_next_height_messages_are_buffered_then_applied() -> None:
    d = Driver()
    e = d.engine
    early = d.vote(d.others[0], VoteType.PREVOTE, 0, NIL_HASH, height=2)
    assert e.on_vote(early, 0.0) == []                       # buffered, not refused
    assert e.votes.get(0, VoteType.PREVOTE).power == 0
    # decide height 1 by hand, then start height 2: the buffered vote is counted there
    p0 = d.proposal(0)
    e.on_proposal(p0, 0.01)
    for x in d.others:
        e.on_vote(d.vote(x, VoteType.PREVOTE, 0, p0.block.hash), 0.02)
    out: list[eng.Action] = []
    for x in d.others:
        out += e.on_vote(d.vote(x, VoteType.PRECOMMIT, 0, p0.block.hash), 0.03)
    commit = next(a for a in out if isinstance(a, eng.CommitBlock))
    d.me.app.commit(commit.block, commit.certificate)
    e.start_height(2, 0.04, commit.block.header.timestamp / 1000)
    assert e.votes.get(0, VoteType.PREVOTE).votes.get(early.validator) == early
    # and a late vote for the finished height is refused as the wrong height
    assert d.refused(d.vote(d.others[0], VoteType.PRECOMMIT, 0, p0.block.hash)) == Reason.WRONG_HEIGHT


def test_observer_engine_follows_without_signing() -> None:
    """An engine without a signer decides from others' messages and never votes."""
    net = SimNet(4)
    app = net.nodes[0].app
    watcher = eng.Engine(app, None, FAST)
    watcher.start_height(1, 0.0, 0.0)
    assert not watcher.is_validator
    proposer = net.node_of(app.proposer(1, 0))
    block = proposer.app.propose(1, 0, 1000)
    out = watcher.on_proposal(Proposal(1, 0, -1, proposer.address, block).signed(proposer.key, net.chain_id), 0.0)
    for x in net.nodes[:3]:
        out += watcher.on_vote(Vote(VoteType.PREVOTE, 1, 0, block.hash, x.address).signed(x.key, net.chain_id), 0.0)
    for x in net.nodes[:3]:
        out += watcher.on_vote(Vote(VoteType.PRECOMMIT, 1, 0, block.hash, x.address).signed(x.key, net.chain_id),
                               0.0)
    assert not any(isinstance(a, eng.BroadcastVote | eng.BroadcastProposal) for a in out)
    assert [a.block for a in out if isinstance(a, eng.CommitBlock)] == [block]


# -- next-height buffer, block interval 0, refused signatures ----------------------------------------------
def test_next_height_buffer_checks_sender_and_signature_dedupes_and_caps_per_sender() -> None:
    """Before any height-2 check could run, a peer could fill the buffer with 10,000 junk messages. Now only
    signed messages of height 2's validators are buffered, once each, a few per (sender, round, type)."""
    d = Driver()
    e, pre, pc = d.engine, VoteType.PREVOTE, VoteType.PRECOMMIT
    a, b = d.others[0], d.others[1]
    outsider = make_keys(1, "outsider")[0]
    assert d.refused(Vote(pre, 2, 0, NIL_HASH, outsider.address).signed(outsider, d.net.chain_id)) \
        == Reason.NOT_VALIDATOR
    forged = replace(Vote(pre, 2, 0, NIL_HASH, a.address).signed(outsider, d.net.chain_id), validator=a.address)
    assert d.refused(forged) == Reason.BAD_SIGNATURE
    assert d.refused(d.vote(a, pre, eng.MAX_ROUND_AHEAD + 1, NIL_HASH, height=2)) == Reason.WRONG_ROUND
    first = d.vote(a, pre, 0, NIL_HASH, height=2)
    assert e.on_vote(first, 0.0) == []
    assert d.refused(first) == Reason.DUPLICATE
    # an equivocation still fits (it becomes evidence at height 2), a third value for the same slot does not
    assert e.on_vote(d.vote(a, pre, 0, b"\x01" * 32, height=2), 0.0) == []
    # refusals over a bound blame no one (DUPLICATE): the relay that delivers them is usually honest
    assert d.refused(d.vote(a, pre, 0, b"\x02" * 32, height=2)) == Reason.DUPLICATE
    # at most MAX_BUFFERED_ROUNDS rounds per sender: a newer round evicts the sender's oldest, an older is refused
    for r in range(1, eng.MAX_BUFFERED_ROUNDS):
        assert e.on_vote(d.vote(a, pc, r, NIL_HASH, height=2), 0.0) == []
    newest = d.vote(a, pc, eng.MAX_BUFFERED_ROUNDS, NIL_HASH, height=2)
    assert e.on_vote(newest, 0.0) == []
    rounds_of_a = {m.round for m in e.buffered_next_height if m.validator == a.address}
    assert rounds_of_a == set(range(1, eng.MAX_BUFFERED_ROUNDS + 1))          # round 0 made way
    assert d.refused(d.vote(a, pc, 0, NIL_HASH, height=2)) == Reason.DUPLICATE
    # one flooding validator does not crowd out another
    for i in range(50):
        with pytest.raises(ValidationError):
            e.on_vote(d.vote(a, pre, 0, i.to_bytes(32, "big"), height=2), 0.0)
    other = d.vote(b, pre, 0, NIL_HASH, height=2)
    assert e.on_vote(other, 0.0) == []
    assert len(e._next_height_msgs) == eng.MAX_BUFFERED_ROUNDS + 1       # a: its newest rounds; b: one
    assert other in e.buffered_next_height and first not in e.buffered_next_height    # a's round 0 was evicted


def test_round_0_proposer_goes_through_a_zero_block_interval_timeout() -> None:
    """block_interval = 0: the proposer's round 0 starts with a BLOCK_INTERVAL timeout of delay 0, so a
    single validator's decision never comes out of start_height itself (the reactor turns)."""
    net = SimNet(1)
    node = net.nodes[0]
    out = node.engine.start_height(1, 0.0, 0.0)
    assert not any(isinstance(a, eng.BroadcastProposal | eng.CommitBlock) for a in out)
    assert eng.ScheduleTimeout(1, 0, eng.TimeoutKind.BLOCK_INTERVAL, 0.0) in out
    out = node.engine.on_timeout(1, 0, eng.TimeoutKind.BLOCK_INTERVAL, 0.0)
    commit = next(a for a in out if isinstance(a, eng.CommitBlock))
    assert commit.block.height == 1
    net = SimNet(1)
    net.start()
    assert net.run_until_height(5, max_time=5.0)
    assert all(r == 0 for r in net.nodes[0].commit_rounds.values())


@pytest.mark.parametrize("step", [2, 3])
def test_a_guard_ahead_of_the_engine_never_stalls_the_round(step: int) -> None:
    """A single validator whose guard already signed a later step of round 0 (a crash that lost the WAL
    record): its prevote (and precommit) of round 0 are refused, no quorum can form there, and yet the
    refused votes schedule the step timeouts, round 1 starts and the height is decided."""
    net = SimNet(1)
    node = net.nodes[0]
    signer = node.signer
    if step == 2:          # a prevote for some other block of round 0
        assert signer.sign_vote(Vote(VoteType.PREVOTE, 1, 0, b"\x07" * 32, node.address)) is not None
    else:                  # a precommit of round 0 (later than any prevote)
        assert signer.sign_vote(Vote(VoteType.PRECOMMIT, 1, 0, b"\x07" * 32, node.address)) is not None
    net.start()
    assert net.run_until_height(3, max_time=5.0), f"stuck at round {node.engine.round} step {node.engine.step}"
    assert node.commit_rounds[1] == 1 and node.commit_rounds[2] == 0
    round0 = [m for m in node.signed if isinstance(m, Vote) and m.height == 1 and m.round == 0]
    # nothing conflicting went out: a prevote guard still allows the (later) nil precommit, nothing else
    assert round0 == ([] if step == 3 else [Vote(VoteType.PRECOMMIT, 1, 0, NIL_HASH, node.address).signed(
        node.key, net.chain_id)])
