"""Algorithm 1 of "The latest gossip on BFT consensus" (Buchman, Kwon, Milosevic 2018), rule by rule.

Each test drives one real engine (``tests/enginedriver.py``) with hand-signed proposals and votes and
asserts the exact vote it signs (a block hash or nil) and its lockedValue/lockedRound and
validValue/validRound. Every test is named after the paper's lines it checks, and each was seen to fail
under a mutant of the engine that breaks its rule (the mutants and which tests kill them are listed in
the commit message that added this file). Timeouts are fired by hand; see ``tests/enginedriver.py``.

The last test crashes one validator of a 4-node ``SimNet`` between signing a vote and sending it (SPEC §4
"Never double-sign", "Crash recovery").
"""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.enginedriver import NIL, PC, PRE, EngineDriver
from tests.simnet import Message, SimNet, SimNode
from timecoin.consensus import engine as eng
from timecoin.consensus.privval import vote_from_record
from timecoin.consensus.wal import WalKind
from timecoin.ledger.block import Proposal, Vote, VoteType, verify_certificate
from timecoin.ledger.validators import has_one_third, has_quorum

PROPOSE_STEP, PREVOTE_STEP, PRECOMMIT_STEP = eng.Step.PROPOSE, eng.Step.PREVOTE, eng.Step.PRECOMMIT


def _scheduled(actions: list[eng.Action], kind: eng.TimeoutKind) -> list[eng.ScheduleTimeout]:
    return [a for a in actions if isinstance(a, eng.ScheduleTimeout) and a.kind == kind]


# -- [L36–L43] the polka ---------------------------------------------------------------------------------
def test_L36_L41_a_polka_in_the_prevote_step_locks_and_precommits_the_value() -> None:
    d = EngineDriver()
    a, b, _ = d.others
    p = d.proposal(0)
    v = p.block.hash
    assert d.my_votes(d.propose(p)) == [d.mine(PRE, 0, v)]
    assert d.my_votes(d.votes(PRE, 0, v, [a])) == []                 # 2 of 4: no polka yet
    assert d.locked == (None, -1) and d.valid == (None, -1)
    out = d.votes(PRE, 0, v, [b])                                    # 3 of 4 (> 2/3): polka
    assert d.my_votes(out) == [d.mine(PC, 0, v)]                     # [L40]
    assert d.locked == (v, 0)                                        # [L38–L39]
    assert d.valid == (v, 0)                                         # [L42–L43]
    assert d.engine.step == PRECOMMIT_STEP                           # [L41]


def test_L42_L43_a_polka_seen_in_the_precommit_step_sets_validValue_but_not_the_lock() -> None:
    d = EngineDriver()
    a, b, c = d.others
    p = d.proposal(0)
    v = p.block.hash
    assert d.my_votes(d.propose(p)) == [d.mine(PRE, 0, v)]
    out = d.votes(PRE, 0, NIL, [a]) + d.votes(PRE, 0, v, [b])      # 3 of 4 prevotes, 2 for v: no polka
    assert _scheduled(out, eng.TimeoutKind.PREVOTE) and d.my_votes(out) == []
    assert d.my_votes(d.timeout(eng.TimeoutKind.PREVOTE)) == [d.mine(PC, 0, NIL)]
    assert d.engine.step == PRECOMMIT_STEP
    out = d.votes(PRE, 0, v, [c])                                    # the polka for v completes now
    assert d.my_votes(out) == []                                     # no second precommit
    assert d.valid == (v, 0)                                         # [L42–L43]
    assert d.locked == (None, -1)                                    # [L38] only in the prevote step


# -- [L22–L27] a fresh proposal while locked -----------------------------------------------------------
@pytest.mark.parametrize("repropose_locked", [False, True], ids=["other_value", "locked_value"])
def test_L22_L27_a_locked_node_prevotes_nil_for_a_fresh_other_value_and_its_locked_value_again(
        repropose_locked: bool) -> None:
    d = EngineDriver()
    a, b, _ = d.others
    p0 = d.proposal(0)
    v = p0.block.hash
    d.propose(p0)
    d.votes(PRE, 0, v, [a, b])
    assert d.locked == (v, 0)
    d.next_round()
    p1 = d.proposal(1, pol_round=-1, block=p0.block if repropose_locked else None)
    expected = v if repropose_locked else NIL
    assert repropose_locked or p1.block.hash != v
    assert d.my_votes(d.propose(p1)) == [d.mine(PRE, 1, expected)]
    assert d.locked == (v, 0)


# -- [L28–L33] a proof of lock -------------------------------------------------------------------------
@pytest.mark.parametrize("pol_round", [1, 2])
def test_L28_L33_a_proof_of_lock_from_the_lock_round_or_newer_unlocks(pol_round: int) -> None:
    """Locked on v in round 1; round 3 proposes w with pol_round 1 (the lock's own round: the boundary
    lockedRound <= vr) or 2. The engine prevotes w exactly when it holds > 2/3 prevotes for w in the POL
    round: not before. A second polka in round 1 takes equivocators (3 of 5 here), fine for a rule test."""
    d = EngineDriver(5, free_rounds=4)
    a, b, c, z = d.others
    d.next_round()
    p1 = d.proposal(1)
    v = p1.block.hash
    assert d.my_votes(d.propose(p1)) == [d.mine(PRE, 1, v)]
    assert d.my_votes(d.votes(PRE, 1, v, [a, b, c])) == [d.mine(PC, 1, v)]
    assert d.locked == (v, 1)
    w = d.block(pol_round, ts_ms=7777)
    assert w.hash != v
    if pol_round == 1:
        out = d.votes(PRE, 1, w.hash, [z, a, b])                     # a, b equivocate: 3 of 5 for w
        assert any(isinstance(x, eng.EvidenceFound) for x in out)
        d.go_to_round(3)
        last = [c]
    else:
        d.next_round()
        d.votes(PRE, 2, w.hash, [a, b, c])                           # 3 of 5 for w in round 2
        d.next_round()
        last = [z]
    assert d.engine.round == 3
    p3 = d.proposal(3, pol_round=pol_round, block=w)
    assert d.my_votes(d.propose(p3)) == []                           # no proof of lock yet: [L28] waits
    assert d.engine.step == PROPOSE_STEP
    out = d.votes(PRE, pol_round, w.hash, last)                     # 4 of 5: the proof of lock
    assert d.my_votes(out) == [d.mine(PRE, 3, w.hash)]
    assert d.locked == (v, 1)                                        # prevoting w does not move the lock


def test_L28_L33_a_proof_of_lock_older_than_the_lock_gives_nil() -> None:
    """Locked on v in round 2; round 3 re-proposes w with pol_round 1 backed by a real polka of round 1
    (which this node never locked on: it did not get round 1's proposal). lockedRound 2 > vr 1: nil."""
    d = EngineDriver(5, free_rounds=4)
    a, b, c, z = d.others
    d.next_round()
    w = d.block(1)
    d.votes(PRE, 1, w.hash, [a, b, c, z])                            # 4 of 5 for w in round 1
    assert d.engine.votes.get(1, PRE).quorum_for(w.hash)
    d.next_round()
    p2 = d.proposal(2)
    v = p2.block.hash
    assert d.my_votes(d.propose(p2)) == [d.mine(PRE, 2, v)]
    assert d.my_votes(d.votes(PRE, 2, v, [a, b, c])) == [d.mine(PC, 2, v)]
    assert d.locked == (v, 2)
    d.next_round()
    p3 = d.proposal(3, pol_round=1, block=w)
    assert d.my_votes(d.propose(p3)) == [d.mine(PRE, 3, NIL)]
    assert d.locked == (v, 2)


# -- [L15–L16] the proposer re-proposes validValue ------------------------------------------------------
def test_L15_L16_the_proposer_re_proposes_validValue_with_validRound() -> None:
    """Locked on v in round 0; in round 1 a polka for w forms while we are in the precommit step, so
    validValue = w, validRound = 1 but the lock stays on v. We propose round 3: w with pol_round 1 (not a
    fresh block, not the locked value), and prevote it ourselves (its POL is newer than our lock [L28])."""
    d = EngineDriver()
    a, b, c = d.others
    assert d.net.node_of(d.proposers[3]) is d.me
    p0 = d.proposal(0)
    v = p0.block.hash
    d.propose(p0)
    d.votes(PRE, 0, v, [a, b])
    assert d.locked == (v, 0) and d.valid == (v, 0)
    d.next_round()
    p1 = d.proposal(1)
    w = p1.block.hash
    assert d.my_votes(d.propose(p1)) == [d.mine(PRE, 1, NIL)]
    d.votes(PRE, 1, w, [a, b])
    assert d.my_votes(d.timeout(eng.TimeoutKind.PREVOTE)) == [d.mine(PC, 1, NIL)]
    d.votes(PRE, 1, w, [c])
    assert d.valid == (w, 1) and d.locked == (v, 0)
    d.next_round()
    out = d.next_round()                                             # round 3 starts: we propose at once
    assert [(p.round, p.pol_round, p.block.hash) for p in d.proposals(out)] == [(3, 1, w)]
    assert d.my_votes(out)[-1] == d.mine(PRE, 3, w)


# -- [L44–L46] nil precommit -----------------------------------------------------------------------------
def test_L44_L46_more_than_two_thirds_nil_prevotes_precommit_nil_at_once() -> None:
    d = EngineDriver()
    a, b, c = d.others
    p0 = d.proposal(0)
    assert d.my_votes(d.propose(p0)) == [d.mine(PRE, 0, p0.block.hash)]
    out = d.votes(PRE, 0, NIL, [a, b])                               # 2 of 4 nil: not yet
    assert d.my_votes(out) == [] and d.engine.step == PREVOTE_STEP
    out = d.votes(PRE, 0, NIL, [c])                                  # 3 of 4 nil, no timeout needed
    assert d.my_votes(out) == [d.mine(PC, 0, NIL)]
    assert d.engine.step == PRECOMMIT_STEP and d.locked == (None, -1)


# -- [L61–L64] the prevote timeout ---------------------------------------------------------------------
def test_L61_L64_the_prevote_timeout_precommits_nil_never_the_proposal() -> None:
    """3 equal validators: our prevote for v plus one more is exactly 2/3, no polka; the third prevotes
    nil, so > 2/3 prevotes of any kind [L34] arm the timeout; when it fires we precommit nil."""
    d = EngineDriver(3, free_rounds=1)
    a, b = d.others
    p0 = d.proposal(0)
    v = p0.block.hash
    assert d.my_votes(d.propose(p0)) == [d.mine(PRE, 0, v)]
    assert d.my_votes(d.votes(PRE, 0, v, [a])) == []                 # exactly 2/3 for v
    out = d.votes(PRE, 0, NIL, [b])
    assert d.my_votes(out) == []
    assert [(x.round, x.kind) for x in _scheduled(out, eng.TimeoutKind.PREVOTE)] == [(0, eng.TimeoutKind.PREVOTE)]
    assert d.my_votes(d.timeout(eng.TimeoutKind.PREVOTE)) == [d.mine(PC, 0, NIL)]
    assert d.engine.step == PRECOMMIT_STEP and d.locked == (None, -1)


# -- quorums [L34, L36, L44, L47, L49]: by stake, and strictly more than 2/3 ----------------------------------
STAKES = [1, 1, 1, 5]       # total 8: > 2/3 needs 6


def _stake_driver() -> tuple[EngineDriver, list[SimNode], SimNode]:
    d = EngineDriver(4, STAKES)
    big = d.net.nodes[3]
    assert d.me is not big and d.engine.validators.power_of(d.me.address) * 5 == d.engine.validators.power_of(
        big.address)
    return d, [x for x in d.others if x is not big], big


def test_L36_L49_quorum_by_stake_three_of_four_small_validators_are_no_polka_and_no_decision() -> None:
    """Powers (1, 1, 1, 5): a majority by count (the three small ones, 3 of 8) is no 2f+1."""
    d, small, big = _stake_driver()
    p0 = d.proposal(0)
    v = p0.block.hash
    assert d.my_votes(d.propose(p0)) == [d.mine(PRE, 0, v)]
    assert d.my_votes(d.votes(PRE, 0, v, small)) == []               # 3 of 4 validators, 3 of 8 power
    assert d.locked == (None, -1) and d.valid == (None, -1)
    assert d.my_votes(d.votes(PRE, 0, v, [big])) == [d.mine(PC, 0, v)]
    out = d.votes(PC, 0, v, small)                                   # with ours: 3 of 4, 3 of 8 power
    assert d.commits(out) == [] and d.engine.step == PRECOMMIT_STEP
    [commit] = d.commits(d.votes(PC, 0, v, [big]))
    assert commit.block == p0.block


def test_L36_L49_quorum_by_stake_the_big_validator_and_one_small_are_a_polka_and_a_decision() -> None:
    """Powers (1, 1, 1, 5): a minority by count (the big one and us, 6 of 8) is 2f+1."""
    d, _, big = _stake_driver()
    p0 = d.proposal(0)
    v = p0.block.hash
    d.propose(p0)
    assert d.my_votes(d.votes(PRE, 0, v, [big])) == [d.mine(PC, 0, v)]   # 2 of 4 validators, 6 of 8 power
    assert d.locked == (v, 0)
    [commit] = d.commits(d.votes(PC, 0, v, [big]))
    assert commit.block == p0.block
    assert sorted(dict(commit.certificate.signatures)) == sorted([d.me.address, big.address])
    verify_certificate(commit.block, commit.certificate, d.me.store.validator_set(1), d.net.chain_id)


def test_quorum_is_strictly_more_than_two_thirds_and_round_skip_strictly_more_than_one_third() -> None:
    """The paper's 2f+1 is read as > 2/3 of power and f+1 as > 1/3 (3 validators of equal power)."""
    unit = 10**11
    assert not has_quorum(2 * unit, 3 * unit) and has_quorum(2 * unit + 1, 3 * unit)
    assert not has_one_third(unit, 3 * unit) and has_one_third(unit + 1, 3 * unit)


def test_L36_L49_L61_quorum_strictness_at_engine_level_with_one_byzantine_of_three() -> None:
    """3 equal validators, b Byzantine: we and a prevote v (exactly 2/3: no polka), a and b precommit v
    (exactly 2/3: no decision, though we hold the proposal); b's nil prevote arms the timeout: nil."""
    d = EngineDriver(3, free_rounds=1)
    a, b = d.others
    p0 = d.proposal(0)
    v = p0.block.hash
    d.propose(p0)
    assert d.my_votes(d.votes(PRE, 0, v, [a])) == []
    assert d.locked == (None, -1) and d.valid == (None, -1)
    out = d.votes(PC, 0, v, [a, b])
    assert d.commits(out) == [] and d.my_votes(out) == []
    d.votes(PRE, 0, NIL, [b])
    assert d.my_votes(d.timeout(eng.TimeoutKind.PREVOTE)) == [d.mine(PC, 0, NIL)]
    assert d.engine.step == PRECOMMIT_STEP and d.engine.decision is None


# -- [L49] the decision ----------------------------------------------------------------------------------
def test_L49_precommits_of_an_earlier_round_decide_when_its_proposal_is_held() -> None:
    d = EngineDriver()
    a, b, c = d.others
    p0 = d.proposal(0)
    d.propose(p0)
    d.go_to_round(2)
    assert d.commits(d.votes(PC, 0, p0.block.hash, [a, b])) == []
    [commit] = d.commits(d.votes(PC, 0, p0.block.hash, [c]))
    assert commit.block == p0.block and commit.certificate.round == 0
    assert d.engine.step == eng.Step.COMMITTED and d.engine.round == 2
    verify_certificate(commit.block, commit.certificate, d.me.store.validator_set(1), d.net.chain_id)


def test_L49_L55_precommits_of_a_later_round_move_us_there_and_decide_once_its_proposal_arrives() -> None:
    """> 2/3 precommits of a later round are also > 1/3 there, so [L55] moves us to that round first; the
    decision [L49] then waits for the value itself (its proposal)."""
    d = EngineDriver()
    p1 = d.proposal(1)
    assert d.commits(d.votes(PC, 1, p1.block.hash, d.others)) == []  # the value is not held yet
    assert d.engine.round == 1                                       # (> 1/3 there: [L55] moved us)
    [commit] = d.commits(d.propose(p1))
    assert commit.block == p1.block and commit.certificate.round == 1


# -- [L55] round skip -------------------------------------------------------------------------------------
def test_L55_more_than_one_third_of_power_in_a_higher_round_skips_to_it_exactly_one_third_does_not() -> None:
    """Powers (1, 1, 1, 3), total 6: two small validators are exactly 1/3 (no skip); the big one alone is
    1/2 (skip)."""
    d = EngineDriver(4, [1, 1, 1, 3])
    big = d.net.nodes[3]
    small = [x for x in d.others if x is not big]
    assert d.me is not big and len(small) == 2
    d.votes(PRE, 3, NIL, small[:1])
    d.votes(PC, 3, NIL, small[1:])
    assert (d.engine.round, d.engine.step) == (0, PROPOSE_STEP)       # exactly 1/3: stay
    out = d.votes(PRE, 2, NIL, [big])                                # 3 of 6 in round 2
    assert (d.engine.round, d.engine.step) == (2, PROPOSE_STEP)
    assert [x.round for x in _scheduled(out, eng.TimeoutKind.PROPOSE)] == [2]
    assert d.my_votes(out) == []


# -- crash between signing and sending ------------------------------------------------------------------
class CrashingNet(SimNet):
    """A SimNet whose ``crash_when(node, vote)`` node crashes right after its engine signed that vote: the
    guard has recorded it, but it is neither logged nor sent."""

    crash_when = None
    lost: list[Vote]

    def perform(self, node: SimNode, actions: list[eng.Action]) -> None:
        for i, a in enumerate(actions):
            if self.crash_when is not None and isinstance(a, eng.BroadcastVote) and self.crash_when(node, a.vote):
                self.crash_when = None
                super().perform(node, actions[:i])
                self.lost = [a.vote]
                self.crash(node)
                return
        super().perform(node, actions)


def _truncate_to_last_marker(path: str) -> int:
    """Drop every WAL record after the last END_HEIGHT marker (a lost WAL tail); returns how many."""
    with open(path, "rb") as f:
        data = f.read()
    off, keep, count = 0, 0, 0
    while off + 8 <= len(data):
        length, _ = struct.unpack_from(">II", data, off)
        if length == 0:
            break                                  # the log's end: preallocated zeros follow
        off += 8 + length
        count += 1
        if data[off - length] == WalKind.END_HEIGHT:
            keep, count = off, 0
    with open(path, "r+b") as f:
        f.truncate(keep)
    return count


def _assert_no_conflicting_signatures(messages: list[Message]) -> None:
    slots: dict[tuple[int, int, int], set[bytes]] = {}
    for m in messages:
        kind = 0 if isinstance(m, Proposal) else int(m.type)
        slots.setdefault((m.height, m.round, kind), set()).add(m.signing_payload())
    assert not {k: v for k, v in slots.items() if len(v) > 1}


@pytest.mark.parametrize("wal", ["intact", "height_lost"])
@pytest.mark.parametrize("vtype", [VoteType.PREVOTE, VoteType.PRECOMMIT], ids=["prevote", "precommit"])
def test_crash_between_signing_and_sending_never_double_signs(tmp_path: Path, vtype: VoteType, wal: str) -> None:
    """One of 4 validators crashes after its guard signed its height-2 vote and before it went out.

    ``intact``: the WAL replay rebuilds the engine's state (round, step, lock) and re-sends the very vote
    the guard recorded. ``height_lost``: the WAL lost all of height 2 (as if it were never written), so the
    restarted engine times out towards nil votes of that round: the guard must refuse them. Either way the
    others finalize without it, it catches up (gossip re-sends height 2), agreement holds, and it never signs
    two different votes for one (height, round, type)."""
    net = CrashingNet(4, seed=11, latency=(0.001, 0.005), gossip_interval=0.2, wal_dir=str(tmp_path))
    app = net.nodes[0].app
    victim = next(x for x in net.nodes if x.address not in {app.proposer(2, r) for r in range(2)})   # votes only
    net.crash_when = lambda node, m: node is victim and m.height == 2 and m.type == vtype and not m.is_nil
    net.start()
    assert net.run(lambda: not victim.online, max_time=5.0)
    lost = net.lost[0]
    assert lost not in victim.signed
    e = victim.engine
    before = (e.height, e.round, e.step, e.locked_round, e.locked_value, e.valid_round, e.valid_value)
    record = victim.signer.last_signed()
    assert record is not None and vote_from_record(*record[2:]) == lost          # the guard holds it
    if wal == "height_lost":
        assert victim.wal is not None
        assert _truncate_to_last_marker(victim.wal.path) > 0
    assert net.run_until_height(4, nodes=[x for x in net.nodes if x is not victim], max_time=5.0)
    victim = net.restart(victim)
    e = victim.engine
    if wal == "intact":
        assert (e.height, e.round, e.step, e.locked_round, e.locked_value, e.valid_round, e.valid_value) == before
        assert victim.signed[-1] == lost                                       # re-sent, same signature
        if vtype == VoteType.PRECOMMIT:                                        # and the lock is back
            assert e.locked_value is not None and (e.locked_value.hash, e.locked_round) == (lost.block_hash, lost.round)
    else:
        assert (e.height, e.round, e.step) == (2, 0, PROPOSE_STEP)
    assert net.run_until_height(8, max_time=10.0)
    net.assert_agreement()
    _assert_no_conflicting_signatures([*victim.signed, lost])
    assert not victim.synced
