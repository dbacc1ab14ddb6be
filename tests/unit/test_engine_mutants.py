"""Rules of the consensus engine that the rule-by-rule tests left unchecked, found by mutation testing.

``tox -e mutation`` (docs/consensus.md, "Mutation testing") runs mutmut over ``consensus/engine.py``,
``consensus/votes.py`` and ``ledger/validators.py``; each test here was written for mutants that survived
the other tests, and asserts the rule they break (Algorithm 1 of "The latest gossip on BFT consensus",
``[Lnn]`` = its line numbers, and SPEC §4), not how the engine happens to implement it. The mutants each
test kills are named in its docstring (mutmut's names, ``<function>__mutmut_<n>``).
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from tests.enginedriver import NIL, PC, PRE, EngineDriver
from tests.simnet import SimNet, SimNode, conflicting_vote
from timecoin.consensus import engine as eng
from timecoin.consensus.votes import MAX_JUSTIFIED, MAX_PENDING_CONFLICTS, VoteSet
from timecoin.errors import Reason, ValidationError
from timecoin.ledger.block import Block, Proposal, QuorumProof, Vote, VoteType

PROPOSE_STEP, PREVOTE_STEP, PRECOMMIT_STEP = eng.Step.PROPOSE, eng.Step.PREVOTE, eng.Step.PRECOMMIT


def _reason(call: object, *args: object) -> Reason:
    """The reason of the ValidationError ``call(*args)`` raises (the test fails if it raises nothing)."""
    with pytest.raises(ValidationError) as exc:
        call(*args)  # type: ignore[operator]
    return exc.value.reason


def _at_height_2(block: Block) -> Block:
    """``block`` relabelled for height 2 (its body still matches its header): a next-height proposal's block."""
    return replace(block, header=replace(block.header, height=2))


def _other_block(d: EngineDriver, round_: int, ts_ms: int) -> Block:
    """Another block of the proposer of ``round_`` (an equivocating proposer's second value)."""
    return d.net.node_of(d.proposers[round_]).app.propose(1, round_, ts_ms)


# -- SPEC §4 block time: the timeliness window is closed at both ends --------------------------------------
def test_timeliness_window_includes_both_bounds() -> None:
    """``ts - precision <= receive time <= ts + message_delay + precision`` (SPEC §4 "Block time"): a
    proposal received exactly at either bound is timely, a hair beyond is not. Values exact in binary.
    Kills ``Timeouts.timely`` 2 and 3 (``<`` for ``<=``)."""
    t = eng.Timeouts(precision=0.25, message_delay=0.5)
    assert t.timely(10.0, 9.75) and t.timely(10.0, 10.75)
    assert not t.timely(10.0, 9.74) and not t.timely(10.0, 10.76)


def test_fresh_proposal_timeliness_uses_the_block_timestamp_in_milliseconds() -> None:
    """A block stamped 1000 s (in ms, as headers are) received at 1000.1 s is timely and gets our prevote;
    received 2 s later it gets nil [L22, SPEC §4]. Kills ``on_proposal`` 88 (``/ 1001``)."""
    for delay, expected in ((0.1, True), (2.0, False)):
        d = EngineDriver()
        p0 = d.proposal(0, block=d.block(0, ts_ms=1_000_000))
        vote = d.my_votes(d.engine.on_proposal(p0, 1000.0 + delay))
        assert vote == [d.mine(PRE, 0, p0.block.hash if expected else NIL)]


@pytest.mark.parametrize("timely", [True, False])
def test_a_replayed_proposal_keeps_the_timeliness_judged_when_it_first_arrived(timely: bool) -> None:
    """WAL replay hands the proposal back with the verdict of its first arrival (``timely=``): the engine
    must use it, not re-judge by the replay time (SPEC §4: judged once, on arrival). Replayed 100 s late
    yet timely -> prevote; replayed on time yet judged untimely -> nil. Kills ``on_proposal`` 80."""
    d = EngineDriver()
    p0 = d.proposal(0)
    now = 100.0 if timely else d.t
    assert d.my_votes(d.engine.on_proposal(p0, now, timely=timely)) == [
        d.mine(PRE, 0, p0.block.hash if timely else NIL)]


def _own_proposal(now: float, prev_block_time: float) -> Proposal:
    net = SimNet(1, timeouts=eng.Timeouts(block_interval=0.0))
    node = net.nodes[0]
    node.engine.start_height(1, now, prev_block_time)
    out = node.engine.on_timeout(1, 0, eng.TimeoutKind.BLOCK_INTERVAL, now)
    [p] = [a.proposal for a in out if isinstance(a, eng.BroadcastProposal)]
    return p


def test_the_proposer_stamps_its_block_with_its_own_clock_so_that_peers_find_it_timely() -> None:
    """Proposer-based timestamps (SPEC §4): a fresh block is stamped with the proposer's clock (strictly
    after its parent), so a peer whose clock agrees and gets it at once finds it timely. At 1000 s, parent
    at 1000 s. Kills ``_propose`` 11 and 15 (a second off at that clock)."""
    p = _own_proposal(1000.0, 1000.0)
    ts = p.block.header.timestamp
    assert ts > 1_000_000
    assert eng.Timeouts().timely(ts / 1000, 1000.0)


def test_a_proposal_after_a_future_stamped_parent_is_still_stamped_after_it() -> None:
    """Block timestamps strictly increase (SPEC §4) even when the parent's proposer stamped it ahead of our
    clock (parent 5 s, our clock 1 s). Kills ``_propose`` 12 and 14."""
    assert _own_proposal(1.0, 5.0).block.header.timestamp > 5_000


# -- [L57–L67] a timeout acts only in its own height, round and step -------------------------------------
def test_a_timeout_of_another_height_or_after_the_decision_does_nothing() -> None:
    """OnTimeout*(h, r) fire only if ``h = h_p`` and ``r = round_p`` [L57, L61, L65]; after the decision the
    height is over. Kills ``on_timeout`` 7 (``and`` for ``or``)."""
    d = EngineDriver()
    for kind in (eng.TimeoutKind.PROPOSE, eng.TimeoutKind.PREVOTE, eng.TimeoutKind.PRECOMMIT):
        assert d.engine.on_timeout(7, 0, kind, 0.01) == []
    assert (d.engine.round, d.engine.step) == (0, PROPOSE_STEP)
    p0 = d.proposal(0)
    d.propose(p0)
    d.votes(PRE, 0, p0.block.hash, d.others)
    [commit] = d.commits(d.votes(PC, 0, p0.block.hash, d.others))
    assert d.engine.step == eng.Step.COMMITTED
    for kind in eng.TimeoutKind:
        assert d.engine.on_timeout(1, 0, kind, 1.0) == []
    assert (d.engine.round, d.engine.step) == (0, eng.Step.COMMITTED)


def test_a_stale_propose_or_prevote_timeout_of_an_earlier_round_does_nothing() -> None:
    """Round 1 has started; round 0's propose and prevote timeouts fire late (the service does not cancel
    timers). [L57]/[L61] require ``r = round_p``: no nil vote in round 1. Kills ``on_timeout`` 27 (``or``
    for ``and`` in [L61]) and the same mutant of [L57]."""
    d = EngineDriver()
    d.next_round()
    assert (d.engine.round, d.engine.step) == (1, PROPOSE_STEP)
    assert d.my_votes(d.timeout(eng.TimeoutKind.PROPOSE, 0)) == []
    assert d.engine.step == PROPOSE_STEP
    p1 = d.proposal(1)
    assert d.my_votes(d.propose(p1)) == [d.mine(PRE, 1, p1.block.hash)]
    assert d.my_votes(d.timeout(eng.TimeoutKind.PREVOTE, 0)) == []
    assert d.engine.step == PREVOTE_STEP


# -- messages of the height just decided are dropped silently ---------------------------------------------
def test_late_messages_of_the_decided_height_are_dropped_without_blame() -> None:
    """Between the decision and the next height's start, votes of the decided height keep arriving (a
    relay's copy of one we counted, the slow validator's precommit): dropped silently, no refusal that
    would blame an honest relay (``_defer``). Kills ``_defer`` 8."""
    d = EngineDriver()
    a, b, c = d.others
    p0 = d.proposal(0)
    d.propose(p0)
    d.votes(PRE, 0, p0.block.hash, [a, b, c])
    assert d.commits(d.votes(PC, 0, p0.block.hash, [a, b]))
    assert d.engine.on_vote(d.vote(a, PC, 0, p0.block.hash), 1.0) == []      # a copy of a counted vote
    assert d.engine.on_vote(d.vote(c, PC, 0, p0.block.hash), 1.0) == []      # the last one, late
    assert d.engine.on_proposal(p0, 1.0) == []


# -- memory bounds: MAX_ROUND_AHEAD is the furthest round accepted, not the first refused --------------------
def test_messages_exactly_max_round_ahead_are_accepted_one_further_refused() -> None:
    """``MAX_ROUND_AHEAD``: "votes/proposals further ahead than this are refused" -- round r + 100 is not
    further ahead than 100. For this height (vote, proposal, quorum proof) and the next (buffered). Kills
    ``on_vote`` 10, ``on_proposal`` 10, ``on_quorum`` 13, ``_defer`` 16."""
    d = EngineDriver(4, free_rounds=0)
    a, b, c = d.others
    far = eng.MAX_ROUND_AHEAD
    assert d.engine.on_vote(d.vote(a, PRE, far, NIL), 0.01) == []      # 1 of 4 there: counted, no skip
    assert d.engine.votes.get(far, PRE).votes.get(a.address) is not None
    d2 = EngineDriver(4, free_rounds=0)
    proposer = d2.net.node_of(d2.net.nodes[0].app.proposer(1, far))
    block = proposer.app.propose(1, far, 1)
    p = Proposal(1, far, -1, proposer.address, block).signed(proposer.key, d2.net.chain_id)
    d2.engine.on_proposal(p, 0.001)
    assert d2.engine.proposals.get(far) == p
    d3 = EngineDriver(4, free_rounds=0)
    proof = QuorumProof.from_votes([d3.vote(x, PRE, far, NIL) for x in d3.others])
    d3.engine.on_quorum(proof, 0.01)
    assert d3.engine.votes.get(far, PRE).quorum_nil()
    nxt = Vote(PRE, 2, far, NIL, a.address).signed(a.key, d.net.chain_id)
    assert d.engine.on_vote(nxt, 0.02) == [] and nxt in d.engine.buffered_next_height
    too_far = Vote(PRE, 2, far + 1, NIL, b.address).signed(b.key, d.net.chain_id)
    assert _reason(d.engine.on_vote, too_far, 0.02) == Reason.WRONG_ROUND


def test_a_proposal_with_a_pol_round_below_minus_one_is_refused() -> None:
    """pol_round is -1 (no proof of lock) or a round below the proposal's [L28: ``0 <= vr < r``]; -2 is
    malformed. Kills ``on_proposal`` 18."""
    d = EngineDriver()
    node = d.net.node_of(d.proposers[1])
    p = Proposal(1, 1, -2, node.address, d.block(1)).signed(node.key, d.net.chain_id)
    assert _reason(d.engine.on_proposal, p, 0.01) == Reason.WRONG_ROUND


# -- an equivocating proposer's other blocks: kept when votes name them, bounded otherwise -----------------
def _equivocation(d: EngineDriver, n: int) -> tuple[Proposal, list[Proposal]]:
    """Round 0's first proposal (delivered) and ``n`` other signed proposals of the same proposer."""
    node = d.net.node_of(d.proposers[0])
    first = d.proposal(0)
    d.propose(first)
    others = [Proposal(1, 0, -1, node.address, _other_block(d, 0, 100 + i)).signed(node.key, d.net.chain_id)
              for i in range(n)]
    assert len({p.block.hash for p in [first, *others]}) == n + 1
    return first, others


def _deliver_other(d: EngineDriver, p: Proposal) -> list[eng.Action]:
    """A second proposal of a round: refused as DUPLICATE unless it completes something (then its actions)."""
    try:
        return d.engine.on_proposal(p, d._tick())
    except ValidationError as exc:
        assert exc.reason == Reason.DUPLICATE
        return []


def test_other_blocks_no_vote_names_are_kept_newest_first_up_to_the_bound_and_served_to_peers() -> None:
    """An equivocating proposer's other blocks that no vote names: at most ``MAX_UNBACKED_PER_ROUND`` a round,
    the newest kept (engine docstring; bounded memory), each round its own slot, and the kept ones are
    served to a peer's fetch (``block_by_hash``) and are not fetched again (``on_block``: DUPLICATE).
    Kills ``_keep_other`` 4 and 8, ``block_by_hash`` 4-7."""
    assert eng.MAX_UNBACKED_PER_ROUND == 2
    d = EngineDriver()
    _, (b1, b2, b3) = _equivocation(d, 3)
    for p in (b1, b2, b3):
        _deliver_other(d, p)
    held = [d.engine.block_by_hash(p.block.hash) for p in (b1, b2, b3)]
    assert held == [None, b2.block, b3.block]
    assert _reason(d.engine.on_block, b3.block, 0.5) == Reason.DUPLICATE
    # round 1's equivocation does not evict round 0's
    d.next_round()
    node = d.net.node_of(d.proposers[1])
    d.propose(d.proposal(1))
    for i in range(2):
        _deliver_other(d, Proposal(1, 1, -1, node.address, _other_block(d, 1, 900 + i)).signed(
            node.key, d.net.chain_id))
    assert [d.engine.block_by_hash(p.block.hash) for p in (b2, b3)] == [b2.block, b3.block]


def test_a_redelivered_other_block_evicts_nothing() -> None:
    """Relays deliver copies: a copy of a kept other block is a duplicate and must not push another kept
    block out of the bounded slot. Kills ``on_proposal`` 50 and 52."""
    d = EngineDriver()
    _, (b1, b2) = _equivocation(d, 2)
    for p in (b1, b2, b2):
        _deliver_other(d, p)
    assert d.engine.block_by_hash(b1.block.hash) == b1.block and d.engine.block_by_hash(b2.block.hash) == b2.block


@pytest.mark.parametrize("by", ["vote", "quorum"])
def test_an_other_block_a_vote_names_is_kept_for_good(by: str) -> None:
    """Once a vote (or a quorum proof) names an equivocating proposer's other block, it leaves the bounded
    slot: later other blocks cannot evict it, and > 2/3 precommits for it decide it [L49 matches any
    proposal of the round]. Kills ``on_vote`` 48, ``on_quorum`` 91, ``_promote`` 1-3."""
    d = EngineDriver()
    a, b, c = d.others
    _, (b1, b2, b3, b4) = _equivocation(d, 4)
    _deliver_other(d, b1)
    if by == "vote":
        d.votes(PRE, 0, b1.block.hash, [a])
    else:
        d.engine.on_quorum(QuorumProof.from_votes([d.vote(x, PRE, 0, b1.block.hash) for x in d.others]), d._tick())
    for p in (b2, b3, b4):
        _deliver_other(d, p)
    assert d.engine.block_by_hash(b1.block.hash) == b1.block
    [commit] = d.commits(d.votes(PC, 0, b1.block.hash, [a, b, c]))
    assert commit.block == b1.block


def test_an_other_block_arriving_after_votes_named_it_is_kept_for_good() -> None:
    """The votes came first, the block second: it is kept outside the bounded slot at once. Kills
    ``_keep_other`` 1."""
    d = EngineDriver()
    a, b, c = d.others
    _, (b1, b2, b3) = _equivocation(d, 3)
    d.votes(PRE, 0, b1.block.hash, [a])
    for p in (b1, b2, b3):
        _deliver_other(d, p)
    assert d.engine.block_by_hash(b1.block.hash) == b1.block
    [commit] = d.commits(d.votes(PC, 0, b1.block.hash, [a, b, c]))
    assert commit.block == b1.block


def test_an_other_block_that_completes_a_decision_decides_on_arrival() -> None:
    """> 2/3 precommits for a block we lack (we fetch it), then the proposer's second proposal brings it:
    [L49] fires on that proposal, whose handling returns the commit. Kills ``on_proposal`` 65 and 66."""
    d = EngineDriver()
    a, b, c = d.others
    _, (b1,) = _equivocation(d, 1)
    out = d.votes(PC, 0, b1.block.hash, [a, b, c])
    assert [f.block_hash for f in out if isinstance(f, eng.FetchBlock)] == [b1.block.hash]
    [commit] = d.commits(d.engine.on_proposal(b1, d._tick()))
    assert commit.block == b1.block


# -- [L55] a proposal is a message of its round too -----------------------------------------------------
def test_L55_a_proposal_from_more_than_one_third_of_power_in_a_higher_round_skips_to_it() -> None:
    """[L55] counts f + 1 messages ``<*, h_p, round, *, *>`` of any kind: a proposal of round r from a
    validator with > 1/3 of the power moves us to r (and we prevote it there). Powers (1, 1, 1, 3).
    Kills ``on_proposal`` 90 (the proposer not marked seen)."""
    d = EngineDriver(4, [1, 1, 1, 3])
    big = d.net.nodes[3]
    assert d.me is not big
    r = next(r for r in range(1, len(d.proposers)) if d.proposers[r] == big.address)
    p = d.proposal(r)
    out = d.propose(p)
    assert d.engine.round == r
    assert d.my_votes(out) == [d.mine(PRE, r, p.block.hash)]


# -- the next-height buffer caps per (sender, round, type) ------------------------------------------------
def test_next_height_buffer_counts_each_message_type_separately() -> None:
    """The cap is ``MAX_BUFFERED_PER_KIND`` per (sender, round, type) (``_defer``): the proposer of round 0 of
    the next height may send its proposal, its prevote, a conflicting prevote (evidence later) and its
    precommit, all buffered. Kills ``_defer`` 24, 26, 27."""
    d = EngineDriver()
    net = d.net
    proposer = net.node_of(d.me.app.proposer(2, 0))
    block = _at_height_2(d.block(0))
    prop = Proposal(2, 0, -1, proposer.address, block).signed(proposer.key, net.chain_id)
    pre = Vote(PRE, 2, 0, NIL, proposer.address).signed(proposer.key, net.chain_id)
    msgs = [prop, pre, conflicting_vote(proposer.key, pre, net.chain_id, b"\x05" * 32),
            Vote(PC, 2, 0, NIL, proposer.address).signed(proposer.key, net.chain_id)]
    for m in msgs:
        if isinstance(m, Proposal):
            assert d.engine.on_proposal(m, 0.01) == []
        else:
            assert d.engine.on_vote(m, 0.01) == []
    assert list(d.engine.buffered_next_height) == msgs


# -- votes.py ---------------------------------------------------------------------------------------------
def test_a_value_nobody_voted_for_has_no_quorum_whatever_the_total() -> None:
    """No vote, no power: even in a set of total power 1. Kills ``VoteSet.quorum_for`` 9."""
    vs = VoteSet(total_power=1)
    assert not vs.quorum_for(b"\x01" * 32) and not vs.quorum_nil() and vs.quorum_value() is None


def test_vote_set_justify_counts_the_waiting_votes_of_that_value_only_and_holds_a_bounded_number() -> None:
    """``VoteSet.justify`` (votes.py): a value a QuorumProof showed > 2/3 for gets its waiting conflicting
    votes counted, once, and no other value's; justifying it again changes nothing and is not a refusal;
    at most ``MAX_JUSTIFIED`` values a set. Kills ``VoteSet.justify`` 1-8."""
    d = EngineDriver()
    z, a, _ = d.others
    x, y, w = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    vs = VoteSet(total_power=4)
    first = d.vote(z, PRE, 0, NIL)
    assert vs.add(first, 1) is True
    for h in (x, y):                                  # nobody's first vote: both wait
        vs.add(conflicting_vote(z.key, first, d.net.chain_id, h), 1)
    assert x not in vs.power_by_hash and y not in vs.power_by_hash
    assert vs.justify(x) is True
    assert vs.power_by_hash.get(x) == 1 and y not in vs.power_by_hash
    assert [v.validator for v in vs.votes_for(x)] == [z.address]
    assert vs.justify(x) is True and vs.power_by_hash.get(x) == 1                 # idempotent
    assert MAX_JUSTIFIED == 2
    assert vs.justify(NIL) is True
    assert vs.justify(w) is False                                                # full
    vs.add(conflicting_vote(z.key, first, d.net.chain_id, w), 1)
    assert w not in vs.power_by_hash                                             # w was not justified
    assert vs.add(d.vote(a, PRE, 0, y), 1) is True and vs.power_by_hash.get(y) == 2   # backed now: counts


def test_vote_set_and_height_votes_answer_for_values_and_rounds_they_never_saw() -> None:
    """``votes_for`` of a value nobody voted for is empty; a round nobody was seen in has no f + 1.
    Kills ``VoteSet.votes_for`` 3, 5 and ``HeightVotes.one_third_seen`` 5, 7."""
    d = EngineDriver()
    assert d.engine.votes.get(0, PRE).votes_for(b"\x09" * 32) == []
    assert d.engine.votes.one_third_seen(42) is False


# -- vote propagation: QuorumProof checks and what a proof brings -------------------------------------------
def test_a_quorum_proof_with_exactly_two_thirds_or_a_repeated_signer_is_refused() -> None:
    """A proof must carry > 2/3 of the power from distinct validators (engine ``on_quorum``; strict quorum,
    SPEC §4): 2 of 3 equal validators is exactly 2/3, and one validator listed twice is one vote. Kills
    ``on_quorum`` 21 (power counted from 1) and 23 (``<`` for ``<=``: a repeated signer)."""
    d = EngineDriver(3, free_rounds=1)
    a, b = d.others
    votes = [d.vote(x, PRE, 0, NIL) for x in (a, b)]
    assert _reason(d.engine.on_quorum, QuorumProof.from_votes(votes), 0.01) == Reason.BAD_CERTIFICATE
    d4 = EngineDriver()
    a, b, _ = d4.others
    va, vb = d4.vote(a, PRE, 0, NIL), d4.vote(b, PRE, 0, NIL)
    (sa, sb) = sorted([(va.validator, va.signature), (vb.validator, vb.signature)])
    repeated = QuorumProof(PRE, 1, 0, NIL, (sa, sa, sb))
    assert _reason(d4.engine.on_quorum, repeated, 0.01) == Reason.BAD_CERTIFICATE
    assert d4.engine.votes.get(0, PRE).power == 0


def test_a_quorum_proof_counts_an_equivocators_vote_nobody_else_backed_yet_and_reports_the_equivocation() -> None:
    """We prevoted nil (the proposal of B came after our propose timeout). z (the lowest address, so first in
    the proof) filled its per-validator room with junk conflicting prevotes, so its real prevote for B was
    dropped. A proof {z, a, b} for B arrives: the value is justified before its votes are added, so z's vote
    counts although no first vote backed B when it was added, the polka is seen (we precommit B
    [L36-L40]), and z's equivocation comes out as evidence. Kills ``on_quorum`` 79 and 89."""
    d = EngineDriver()
    z = min(d.others, key=lambda x: x.address)
    a, b = (x for x in d.others if x is not z)
    assert d.my_votes(d.timeout(eng.TimeoutKind.PROPOSE)) == [d.mine(PRE, 0, NIL)]
    p0 = d.proposal(0)
    d.propose(p0)
    first = d.vote(z, PRE, 0, b"\x0a" * 32)
    d.engine.on_vote(first, d._tick())
    for i in range(MAX_PENDING_CONFLICTS):
        d.engine.on_vote(conflicting_vote(z.key, first, d.net.chain_id, bytes([0x10 + i]) * 32), d._tick())
    real_z = conflicting_vote(z.key, first, d.net.chain_id, p0.block.hash)
    d.engine.on_vote(real_z, d._tick())
    assert p0.block.hash not in d.engine.votes.get(0, PRE).power_by_hash          # dropped: no room
    out = d.engine.on_quorum(QuorumProof.from_votes([real_z, d.vote(a, PRE, 0, p0.block.hash),
                                                     d.vote(b, PRE, 0, p0.block.hash)]), d._tick())
    assert d.engine.votes.get(0, PRE).quorum_for(p0.block.hash)
    assert d.my_votes(out) == [d.mine(PC, 0, p0.block.hash)]
    assert [x.evidence.validator for x in out if isinstance(x, eng.EvidenceFound)] == [z.address]


def test_evicting_a_senders_oldest_next_height_round_drops_all_of_it_and_nothing_else() -> None:
    """``MAX_BUFFERED_ROUNDS`` next-height rounds per sender; a newer round evicts the sender's oldest whole
    (its proposal too), and every other cap stays as it was: the sender's kept rounds and other senders'
    counts in the evicted round (``_defer``). Kills ``_evict_next_round`` 2, 10, 12, 13 (for an evicted round 1
    or 2), 14."""
    d = EngineDriver()
    net, e = d.net, d.engine
    r0 = next(r for r in range(1, 20) if d.me.app.proposer(2, r) != d.me.address)
    a = net.node_of(d.me.app.proposer(2, r0))
    b = next(x for x in d.others if x is not a)

    def v(x: SimNode, vtype: VoteType, r: int, h: bytes = NIL) -> Vote:
        return Vote(vtype, 2, r, h, x.address).signed(x.key, net.chain_id)

    prop = Proposal(2, r0, -1, a.address, _at_height_2(d.block(0))).signed(a.key, net.chain_id)
    assert e.on_proposal(prop, 0.01) == []
    for m in (v(a, PRE, r0), v(b, PRE, r0), v(b, PRE, r0, b"\x01" * 32)):       # b's round-r0 prevotes: at cap
        assert e.on_vote(m, 0.01) == []
    kept = range(r0 + 1, r0 + eng.MAX_BUFFERED_ROUNDS)
    for r in kept:
        assert e.on_vote(v(a, PC, r), 0.01) == []
    assert e.on_vote(v(a, PC, r0 + 1, b"\x02" * 32), 0.01) == []                 # a's round r0+1 precommits: at cap
    assert e.on_vote(v(a, PRE, r0 + 1), 0.01) == []
    assert e.on_vote(v(a, PRE, r0 + 1, b"\x02" * 32), 0.01) == []                # and its prevotes
    assert e.on_vote(v(a, PRE, r0 + eng.MAX_BUFFERED_ROUNDS), 0.01) == []        # evicts a's round r0
    a_msgs = [m for m in e.buffered_next_height if (m.proposer if isinstance(m, Proposal) else m.validator)
              == a.address]
    assert prop not in e.buffered_next_height and {m.round for m in a_msgs} == {*kept, r0 + eng.MAX_BUFFERED_ROUNDS}
    assert _reason(e.on_vote, v(a, PC, r0 + 1, b"\x03" * 32), 0.01) == Reason.DUPLICATE
    assert _reason(e.on_vote, v(a, PRE, r0 + 1, b"\x03" * 32), 0.01) == Reason.DUPLICATE
    assert _reason(e.on_vote, v(b, PRE, r0, b"\x04" * 32), 0.01) == Reason.DUPLICATE


# -- a refused signature schedules the step's timeout itself (engine ``_refused``) -------------------------
def test_a_refused_precommit_schedules_the_precommit_timeout_even_without_a_prevote_quorum() -> None:
    """The guard refuses our nil precommit (it signed a conflicting precommit of this round before a crash):
    the engine schedules the precommit timeout itself, with the precommit step's duration, so the round
    ends [L65]. The prevote timeout was fired by hand here (Algorithm 1's OnTimeoutPrevote acts whether or
    not a timer was set), so no prevote quorum ever scheduled anything. Kills ``_refused`` 2."""
    t = eng.Timeouts(prevote=0.5, prevote_delta=0.01, precommit=0.7, precommit_delta=0.02)
    d = EngineDriver()
    d.engine.timeouts = t
    p0 = d.proposal(0)
    assert d.my_votes(d.propose(p0)) == [d.mine(PRE, 0, p0.block.hash)]
    assert d.me.signer.sign_vote(Vote(PC, 1, 0, b"\x07" * 32, d.me.address)) is not None
    out = d.timeout(eng.TimeoutKind.PREVOTE)
    assert d.my_votes(out) == []
    assert [a for a in out if isinstance(a, eng.ScheduleTimeout)] == [
        eng.ScheduleTimeout(1, 0, eng.TimeoutKind.PRECOMMIT, 0.7)]
    assert d.engine.step == PRECOMMIT_STEP
    assert d.timeout(eng.TimeoutKind.PRECOMMIT) and d.engine.round == 1


def test_a_refused_prevote_schedules_the_prevote_timeout_once_with_its_duration() -> None:
    """The guard refuses our prevote of round 1 (it signed another round-1 prevote before a crash): the
    engine schedules the prevote timeout (prevote duration, round 1) [L34 would, on 2f+1 prevotes we may
    now never see]; when 2f+1 prevotes then arrive, [L34] ("for the first time") does not schedule it again,
    and likewise for the precommit timeout [L47]. Each with its own step's duration. Kills ``_refused`` 5, 15
    and 22, ``_step_once`` 128."""
    t = eng.Timeouts(prevote=0.5, prevote_delta=0.01, precommit=0.7, precommit_delta=0.02)
    d = EngineDriver()
    d.engine.timeouts = t
    a, b, c = d.others
    d.next_round()
    assert d.me.signer.sign_vote(Vote(PRE, 1, 1, b"\x07" * 32, d.me.address)) is not None
    out = d.propose(d.proposal(1))
    assert d.my_votes(out) == []
    sched = [x for x in out if isinstance(x, eng.ScheduleTimeout)]
    assert sched == [eng.ScheduleTimeout(1, 1, eng.TimeoutKind.PREVOTE, 0.51)]
    out = d.votes(PRE, 1, NIL, [a, b, c])                     # 2f+1 nil: precommit nil at once [L44]
    assert not [x for x in out if isinstance(x, eng.ScheduleTimeout) and x.kind == eng.TimeoutKind.PREVOTE]
    assert d.my_votes(out) == [d.mine(PC, 1, NIL)]
    # round 2: the guard refuses the precommit (a conflicting one was signed), then 2f+1 precommits arrive
    d.next_round()
    p2 = d.proposal(2)
    assert d.my_votes(d.propose(p2)) == [d.mine(PRE, 2, p2.block.hash)]
    assert d.me.signer.sign_vote(Vote(PC, 1, 2, b"\x07" * 32, d.me.address)) is not None
    out = d.votes(PRE, 2, NIL, [a, b, c])
    assert [x for x in out if isinstance(x, eng.ScheduleTimeout)] == [          # [L34], then the refusal's
        eng.ScheduleTimeout(1, 2, eng.TimeoutKind.PREVOTE, 0.52),
        eng.ScheduleTimeout(1, 2, eng.TimeoutKind.PRECOMMIT, 0.74)]
    out = d.votes(PC, 2, NIL, [a, b, c])
    assert not [x for x in out if isinstance(x, eng.ScheduleTimeout) and x.kind == eng.TimeoutKind.PRECOMMIT]


# -- blocks fetched by hash (``on_block``) ----------------------------------------------------------------
def test_a_fetched_block_of_another_height_or_after_the_decision_is_refused_as_the_wrong_height() -> None:
    """``on_block`` takes blocks of the height being decided only: another height, or any block once it is
    decided, is WRONG_HEIGHT (no blame: a late answer to our fetch). Kills ``on_block`` 6, 9, 11."""
    d = EngineDriver()
    a, b, c = d.others
    p0 = d.proposal(0)
    other = _other_block(d, 0, 4242)
    d.votes(PRE, 0, other.hash, [a])                           # a vote names it: it would be wanted
    wrong = d.net.node_of(d.proposers[0]).app.propose(1, 0, 4343)
    wrong = replace(wrong, header=replace(wrong.header, height=2))
    assert _reason(d.engine.on_block, wrong, 0.1) == Reason.WRONG_HEIGHT
    d.propose(p0)
    d.votes(PRE, 0, p0.block.hash, [b, c])
    assert d.commits(d.votes(PC, 0, p0.block.hash, [a, b, c]))
    assert _reason(d.engine.on_block, other, 0.2) == Reason.WRONG_HEIGHT


def test_after_a_fetched_block_arrives_the_engine_takes_further_input() -> None:
    """A fetched block a prevote names is stored (not decided), and the engine keeps going: the precommits
    that follow decide it [L49]. Kills ``on_block`` 1 (the clock lost)."""
    d = EngineDriver()
    a, b, c = d.others
    d.propose(d.proposal(0))
    other = _other_block(d, 0, 4242)
    d.votes(PRE, 0, other.hash, [a])
    assert d.engine.on_block(other, d._tick()) == []
    [commit] = d.commits(d.votes(PC, 0, other.hash, [a, b, c]))
    assert commit.block == other


def test_a_relayed_copy_of_a_waiting_conflicting_vote_is_a_duplicate() -> None:
    """votes.py: a conflicting vote for a value nobody backs waits (bounded); a relay's copy of it is a
    duplicate (``add`` returns False; the engine refuses it as DUPLICATE), not a new equivocation that would
    take another waiting slot. Kills ``VoteSet.add`` 23."""
    d = EngineDriver()
    z = d.others[0]
    first = d.vote(z, PRE, 0, b"\x01" * 32)
    waiting = conflicting_vote(z.key, first, d.net.chain_id, b"\x02" * 32)
    vs = VoteSet(total_power=4)
    assert vs.add(first, 1) is True
    assert vs.add(waiting, 1) is not False and len(vs.pending[z.address]) == 1
    assert vs.add(waiting, 1) is False and len(vs.pending[z.address]) == 1
    d.engine.on_vote(first, 0.01)
    assert [type(a) for a in d.engine.on_vote(waiting, 0.01)] == [eng.EvidenceFound]
    assert _reason(d.engine.on_vote, waiting, 0.01) == Reason.DUPLICATE


def test_the_next_height_backstop_refuses_when_full_but_a_senders_newer_round_still_replaces_its_oldest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``MAX_BUFFERED_NEXT_HEIGHT`` is a backstop over all senders (DUPLICATE: no blame); a message that
    evicts its sender's oldest round frees as much as it takes, so it is let in even when the buffer is full.
    The bound is lowered to 4 here (the real one needs > 400 validators to reach). Kills ``_defer`` 100-104."""
    monkeypatch.setattr(eng, "MAX_BUFFERED_NEXT_HEIGHT", 4)
    d = EngineDriver()
    a, b, _ = d.others

    def v(x: SimNode, r: int) -> Vote:
        return Vote(PRE, 2, r, NIL, x.address).signed(x.key, d.net.chain_id)

    for r in range(eng.MAX_BUFFERED_ROUNDS):
        assert d.engine.on_vote(v(a, r), 0.01) == []
    assert len(d.engine.buffered_next_height) == 4
    assert _reason(d.engine.on_vote, v(b, 0), 0.01) == Reason.DUPLICATE                  # full
    assert d.engine.on_vote(v(a, eng.MAX_BUFFERED_ROUNDS), 0.01) == []                  # evicts a's round 0
    assert sorted(m.round for m in d.engine.buffered_next_height) == list(range(1, eng.MAX_BUFFERED_ROUNDS + 1))


def test_the_power_of_a_non_validator_is_zero() -> None:
    """``ValidatorSet.power_of``: an address outside the set holds no power. Kills ``power_of`` 4, 5."""
    d = EngineDriver()
    assert d.engine.validators.power_of(b"\x00" * 20) == 0
    assert d.engine.validators.power_of(d.me.address) > 0


# -- round 0 waits until time(h-1) + block_interval, no longer ---------------------------------------------
@pytest.mark.parametrize(("now", "parent", "wait"), [(100.0, 99.5, 0.5), (100.0, 50.0, 0.0), (100.0, 100.0, 1.0)])
def test_round_0_waits_until_the_parent_time_plus_the_block_interval(now: float, parent: float, wait: float) -> None:
    """SPEC §4: the round-0 proposer waits until time(h-1) + block_interval (at most block_interval by the
    local clock): half the interval left -> 0.5 s; the parent long past -> 0 (propose at once); the parent
    just now -> the whole interval. The propose timeout of round 0 counts from the end of that wait [L21].
    Values exact in binary. Kills ``_start_round`` 17, 18."""
    t = eng.Timeouts(block_interval=1.0)
    net = SimNet(1, timeouts=t)
    out = net.nodes[0].engine.start_height(1, now, parent)
    sched = {a.kind: a.delay for a in out if isinstance(a, eng.ScheduleTimeout)}
    assert sched == {eng.TimeoutKind.BLOCK_INTERVAL: wait, eng.TimeoutKind.PROPOSE: wait + t.propose}


# -- [L49–L54] the decision ---------------------------------------------------------------------------------
def test_a_precommit_quorum_for_a_missing_block_fetches_it_by_height_round_and_hash_then_decides() -> None:
    """> 2/3 precommits of round 0 for a block we never got: one FetchBlock naming the height, the round
    whose precommits we hold, the hash and its voters (engine ``FetchBlock``); when the block comes, it is
    decided and is decision_p[h_p] [L51]. Kills ``_step_once`` 26, 27, 38."""
    d = EngineDriver()
    a, b, c = d.others
    d.propose(d.proposal(0))
    missing = _other_block(d, 0, 4242)
    out = d.votes(PC, 0, missing.hash, [a, b, c])
    assert [x for x in out if isinstance(x, eng.FetchBlock)] == [
        eng.FetchBlock(1, 0, missing.hash, tuple(sorted(x.address for x in (a, b, c))))]
    [commit] = d.commits(d.engine.on_block(missing, d._tick()))
    assert commit.block == missing and d.engine.decision == missing


# -- every enabled rule fires on the input that enables it ------------------------------------------------
def test_L28_then_L36_a_proof_of_lock_proposal_arriving_last_is_prevoted_locked_and_precommitted_at_once() -> None:
    """Round 1's prevotes for v (> 2/3) are here before round 1's proposal of v with pol_round 0 (round 0's
    polka). On the proposal: prevote v [L28], and with that the polka of round 1 is complete in the prevote
    step: lock and precommit v [L36-L41], all on that one input (the rules are "upon", not "on the next
    message"). Kills ``_step_once`` 113."""
    d = EngineDriver()
    a, b, c = d.others
    d.next_round()                                              # round 0 ends with nothing from us
    v = d.block(0)
    d.votes(PRE, 0, v.hash, [a, b, c])                          # round 0's polka for v (the proof of lock)
    d.votes(PRE, 1, v.hash, [a, b, c])                          # round 1's prevotes, early
    assert d.engine.round == 1 and d.engine.step == PROPOSE_STEP
    out = d.propose(d.proposal(1, pol_round=0, block=v))
    assert d.my_votes(out) == [d.mine(PRE, 1, v.hash), d.mine(PC, 1, v.hash)]
    assert d.locked == (v.hash, 1)


def test_L44_then_L47_our_nil_precommit_completing_the_precommit_quorum_schedules_the_timeout_at_once() -> None:
    """Two nil precommits are here; > 2/3 nil prevotes make us precommit nil [L44], which completes > 2/3
    precommits: the precommit timeout [L47] is scheduled on that same input. Kills ``_step_once`` 168."""
    d = EngineDriver()
    a, b, c = d.others
    d.votes(PC, 0, NIL, [a, b])
    d.timeout(eng.TimeoutKind.PROPOSE)                          # we prevote nil
    out = d.votes(PRE, 0, NIL, [a, b])
    assert d.my_votes(out) == [d.mine(PC, 0, NIL)]
    assert [x.kind for x in out if isinstance(x, eng.ScheduleTimeout)] == [
        eng.TimeoutKind.PREVOTE, eng.TimeoutKind.PRECOMMIT]


# -- the next height's messages, applied when it starts --------------------------------------------------
def _decide_height_1(d: EngineDriver) -> eng.CommitBlock:
    p0 = d.proposal(0)
    d.propose(p0)
    d.votes(PRE, 0, p0.block.hash, d.others)
    [commit] = d.commits(d.votes(PC, 0, p0.block.hash, d.others))
    for x in d.net.nodes:
        x.app.commit(commit.block, commit.certificate)
    return commit


def test_a_buffered_next_height_proposal_is_judged_timely_as_of_its_arrival_and_the_round_still_starts() -> None:
    """A height-2 proposal stamped 1000 s arrives at 1000.05 s, while we still finish height 1: timely on
    arrival. Height 2 starts at 1003 s (3 s later: untimely by then): we prevote it (SPEC §4: judged once, on
    arrival), and round 0's propose timeout is still scheduled [L21]. Kills ``start_height`` 37, 41, 44, 49,
    50."""
    d = EngineDriver()
    commit = _decide_height_1(d)
    proposer = d.net.node_of(d.me.app.proposer(2, 0))
    assert proposer is not d.me
    block = proposer.app.propose(2, 0, 1_000_000)
    p = Proposal(2, 0, -1, proposer.address, block).signed(proposer.key, d.net.chain_id)
    assert d.engine.on_proposal(p, 1000.05) == []
    out = d.engine.start_height(2, 1003.0, commit.block.header.timestamp / 1000)
    assert d.my_votes(out) == [Vote(PRE, 2, 0, block.hash, d.me.address).signed(d.me.key, d.net.chain_id)]
    assert [x.kind for x in out if isinstance(x, eng.ScheduleTimeout)][0] == eng.TimeoutKind.PROPOSE


def test_a_buffered_message_refused_when_its_height_starts_does_not_drop_the_ones_after_it() -> None:
    """Buffered height-2 messages are judged again when height 2 starts: an equivocating proposer's second
    proposal of a round is refused then (DUPLICATE: the first one is the round's), and the votes buffered
    after it still count. Kills ``start_height`` 57. (A proposal from a validator that is not its round's
    proposer, which this test used, is now refused before it is buffered: tests/unit/test_engine_relay.py.)"""
    d = EngineDriver()
    net = d.net
    r = next(r for r in range(20) if d.me.app.proposer(2, r) != d.me.address)
    proposer = net.node_of(d.me.app.proposer(2, r))
    first, second = (Proposal(2, r, -1, proposer.address, _at_height_2(d.block(0, ts))).signed(
        proposer.key, net.chain_id) for ts in (5, 6))
    assert first.block.hash != second.block.hash
    assert d.engine.on_proposal(first, 0.01) == [] and d.engine.on_proposal(second, 0.01) == []
    voter = next(x for x in d.others if x is not proposer)
    late = Vote(PRE, 2, r, NIL, voter.address).signed(voter.key, net.chain_id)
    assert d.engine.on_vote(late, 0.01) == []
    commit = _decide_height_1(d)
    d.engine.start_height(2, d._tick(), commit.block.header.timestamp / 1000)
    assert d.engine.proposals == {r: first}
    assert d.engine.votes.get(r, PRE).votes.get(voter.address) == late


# -- QuorumProof refusals carry their reasons ----------------------------------------------------------------
def test_quorum_proofs_too_far_ahead_or_for_a_third_value_of_a_set_are_refused_with_their_reasons() -> None:
    """``on_quorum``: a proof more than ``MAX_ROUND_AHEAD`` rounds ahead is WRONG_ROUND; once a vote set has
    ``MAX_JUSTIFIED`` justified values, a proof for a third is DUPLICATE (bounded memory; only > 1/3 of
    equivocating power could even sign it). Kills ``on_quorum`` 15, 17, 80, 82."""
    d = EngineDriver()
    far = [d.vote(x, PRE, eng.MAX_ROUND_AHEAD + 1, NIL) for x in d.others]
    assert _reason(d.engine.on_quorum, QuorumProof.from_votes(far), 0.01) == Reason.WRONG_ROUND
    assert MAX_JUSTIFIED == 2
    for value in (NIL, b"\x01" * 32):
        d.engine.on_quorum(QuorumProof.from_votes([d.vote(x, PRE, 5, value) for x in d.others]), d._tick())
    third = QuorumProof.from_votes([d.vote(x, PRE, 5, b"\x02" * 32) for x in d.others])
    assert _reason(d.engine.on_quorum, third, 0.02) == Reason.DUPLICATE


# -- validator sets (ledger/validators.py) -------------------------------------------------------------
def test_a_validator_set_holds_every_validator_with_positive_power_and_none_without() -> None:
    """``ValidatorSet``: who may vote is whoever has power > 0 -- power 1 (the smallest) included, power 0
    excluded. Kills ``ValidatorSet.__init__`` 6, 7."""
    from timecoin.ledger.validators import Validator, ValidatorSet
    vs = ValidatorSet([Validator(b"\x01" * 20, b"\x02" * 33, 1), Validator(b"\x03" * 20, b"\x04" * 33, 0)])
    assert b"\x01" * 20 in vs and b"\x03" * 20 not in vs
    assert len(vs) == 1 and vs.total_power == 1


def test_a_stale_block_interval_timeout_never_makes_us_propose_in_another_round() -> None:
    """We propose round 0, after the block interval. Before that timer fires, > 1/3 of the power is seen in
    round 1 and we move there [L55] (someone else proposes round 1). The round-0 timer then fires: it
    belongs to round 0 and we are not round 1's proposer, so nothing is proposed [L14: only
    proposer(h_p, round_p) proposes]. Kills ``on_timeout`` 11."""
    probe = EngineDriver()
    p0_addr, p1_addr = probe.proposers[0], probe.proposers[1]
    assert p0_addr != p1_addr
    d = EngineDriver(me=probe.net.node_of(p0_addr).index)
    assert any(isinstance(x, eng.ScheduleTimeout) and x.kind == eng.TimeoutKind.BLOCK_INTERVAL for x in d.actions)
    d.votes(PRE, 1, NIL, [x for x in d.others if x.address != p1_addr][:2])
    assert (d.engine.round, d.engine.step) == (1, PROPOSE_STEP)
    assert d.proposals(d.timeout(eng.TimeoutKind.BLOCK_INTERVAL, 0)) == []
    assert d.engine.proposals == {}


def test_a_refused_precommit_after_the_precommit_timeout_was_scheduled_schedules_nothing_more() -> None:
    """> 2/3 precommits (others') already scheduled round 0's precommit timeout [L47]; our own nil precommit
    is then refused by the guard: the timeout is already set, so nothing more is scheduled ([L47]: "for the
    first time"; one precommit timeout a round). Kills ``_refused`` 19."""
    d = EngineDriver()
    a, b, c = d.others
    p0 = d.proposal(0)
    d.propose(p0)
    out = d.votes(PC, 0, NIL, [a, b, c])
    assert [x.kind for x in out if isinstance(x, eng.ScheduleTimeout)] == [eng.TimeoutKind.PRECOMMIT]
    assert d.me.signer.sign_vote(Vote(PC, 1, 0, b"\x07" * 32, d.me.address)) is not None
    out = d.timeout(eng.TimeoutKind.PREVOTE)
    assert d.my_votes(out) == [] and d.engine.step == PRECOMMIT_STEP
    assert [x for x in out if isinstance(x, eng.ScheduleTimeout)] == []
