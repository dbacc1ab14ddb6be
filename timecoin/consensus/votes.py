"""Vote bookkeeping for one height: per (round, type) vote sets with stake-weighted tallies.

A validator has one vote per (round, type). A second, different vote is an equivocation and becomes
evidence (SPEC §4); it is not counted. An identical second copy is a duplicate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from timecoin.ledger.block import NIL_HASH, Evidence, Vote, VoteType
from timecoin.ledger.validators import ValidatorSet, has_one_third, has_quorum


@dataclass
class VoteSet:
    """Votes of one (height, round, type)."""

    total_power: int
    votes: dict[bytes, Vote] = field(default_factory=dict)
    power_by_hash: dict[bytes, int] = field(default_factory=dict)
    power: int = 0

    def add(self, vote: Vote, power: int) -> Evidence | None | bool:
        """True if counted, False if a duplicate, Evidence if it conflicts with an earlier vote."""
        prior = self.votes.get(vote.validator)
        if prior is not None:
            if prior.block_hash == vote.block_hash:
                return False
            return Evidence.of(prior, vote)
        self.votes[vote.validator] = vote
        self.power_by_hash[vote.block_hash] = self.power_by_hash.get(vote.block_hash, 0) + power
        self.power += power
        return True

    def quorum_any(self) -> bool:
        return has_quorum(self.power, self.total_power)

    def quorum_for(self, block_hash: bytes) -> bool:
        return has_quorum(self.power_by_hash.get(block_hash, 0), self.total_power)

    def quorum_nil(self) -> bool:
        return self.quorum_for(NIL_HASH)

    def quorum_value(self) -> bytes | None:
        """The non-nil hash with > 2/3, if any."""
        for h, p in self.power_by_hash.items():
            if h != NIL_HASH and has_quorum(p, self.total_power):
                return h
        return None

    def votes_for(self, block_hash: bytes) -> list[Vote]:
        return [v for v in self.votes.values() if v.block_hash == block_hash]


class HeightVotes:
    """All vote sets of a height, plus who was seen in which round (for the f+1 round skip)."""

    def __init__(self, validators: ValidatorSet) -> None:
        self.validators = validators
        self.sets: dict[tuple[int, VoteType], VoteSet] = {}
        self.seen: dict[int, set[bytes]] = {}

    def get(self, round_: int, vtype: VoteType) -> VoteSet:
        key = (round_, vtype)
        vs = self.sets.get(key)
        if vs is None:
            vs = self.sets[key] = VoteSet(self.validators.total_power)
        return vs

    def add(self, vote: Vote) -> Evidence | None | bool:
        result = self.get(vote.round, vote.type).add(vote, self.validators.power_of(vote.validator))
        if result is True:
            self.mark_seen(vote.round, vote.validator)
        return result

    def mark_seen(self, round_: int, validator: bytes) -> None:
        self.seen.setdefault(round_, set()).add(validator)

    def one_third_seen(self, round_: int) -> bool:
        power = sum(self.validators.power_of(a) for a in self.seen.get(round_, ()))
        return has_one_third(power, self.validators.total_power)

    def rounds_seen(self) -> list[int]:
        return sorted(self.seen)
