"""VoteSet.quorum_value is remembered between counts and recomputed after each one (consensus/votes.py)."""
from __future__ import annotations

from timecoin.consensus.votes import VoteSet
from timecoin.ledger.block import NIL_HASH, Vote, VoteType

X, Y = b"\x01" * 32, b"\x02" * 32


def vote(i: int, block_hash: bytes) -> Vote:
    return Vote(VoteType.PREVOTE, 1, 0, block_hash, bytes([i]) * 20)


def test_quorum_value_follows_every_count() -> None:
    vs = VoteSet(total_power=4)
    assert vs.quorum_value() is None
    for i in range(3):
        assert vs.quorum_value() is None              # asked before and after each count
        assert vs.add(vote(i, NIL_HASH if i == 0 else X), 1) is True
    assert vs.quorum_value() is None                  # 2 of 4 for X
    assert vs.add(vote(3, X), 1) is True
    assert vs.quorum_value() == X and vs.quorum_value() == X


def test_a_justified_conflict_that_completes_a_quorum_shows_at_once() -> None:
    vs = VoteSet(total_power=3)
    assert vs.add(vote(0, X), 1) is True and vs.add(vote(1, X), 1) is True
    assert vs.add(vote(2, Y), 1) is True
    assert vs.quorum_value() is None
    assert vs.justify(X) is True
    vs.add(vote(2, X), 1)                             # the equivocator's vote for X counts now
    assert vs.quorum_value() == X
