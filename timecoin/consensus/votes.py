"""Vote bookkeeping for one height: per (round, type) vote sets with stake-weighted tallies.

A validator has one vote per (round, type). A second, different vote is an equivocation and becomes
evidence (SPEC §4). An identical second copy is a duplicate.

Algorithm 1 counts "2f+1 ⟨PREVOTE, h, r, id(v)⟩" per value, from distinct senders: an equivocator's vote
for v counts toward v even if it also voted for v'. That is not a safety risk (two quorums for different
values still need > 1/3 of power to vote for both) but it is needed for liveness: an equivocator that
shows v to some correct nodes and v' to others would otherwise leave them unable to see the polka or
the decision the rest saw, and correct nodes could then disagree on locks round after round. So a
conflicting vote is also counted toward its own value, never twice toward the "any value" tally.
To bound memory (byzantine validators can sign endless distinct hashes), a conflicting vote is counted
at once only for nil, a value that is some validator's first vote, or a *justified* value (below);
otherwise up to ``MAX_PENDING_CONFLICTS`` of them wait per validator and count when a first vote backs
their value, and any more are dropped.

Dropping is where a Byzantine validator could split honest nodes: it shows node A its real vote for v
while A's room is free, and shows node B junk first, so B drops the real one; A sees a polka (or a
decision) that B never can. Vote propagation closes this (SPEC §4), as CometBFT's
``VoteSetMaj23``/``VoteSetBits`` do: a node that holds > 2/3 of a round's votes of one kind for a value
sends them, as a :class:`~timecoin.ledger.block.QuorumProof`, to its peers at that height. The proof needs
no trust: the receiver checks every signature and the power, then marks the value *justified* in that set
(:meth:`VoteSet.justify`) and counts every vote of the proof, conflicting or not. So whatever the
Byzantine validators send, and in whatever order, if one honest node holds a quorum every honest node
gets it (at the next gossip tick while both are at that height; by sync once the first has decided).
Compared with CometBFT's two-step claim and bitmap, the proof is bigger (n signatures instead of a
claim) but it cannot be a lie, so it costs no round trip and opens no memory to a peer's claims.
Memory stays bounded: at most ``MAX_JUSTIFIED`` justified values per set (with < 1/3 Byzantine power
only one value, nil included, can have > 2/3; the second slot is slack), so a set holds at most n first
votes, n × (n + 2) counted conflicts and 4n waiting ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from timecoin.ledger.block import NIL_HASH, Evidence, Vote, VoteType
from timecoin.ledger.validators import ValidatorSet, has_one_third, has_quorum

MAX_PENDING_CONFLICTS = 4     # per validator and (round, type): conflicting votes for values nobody else backs
MAX_JUSTIFIED = 2             # values per (round, type) whose > 2/3 a QuorumProof showed (a value and nil)


@dataclass
class VoteSet:
    """Votes of one (height, round, type)."""

    total_power: int
    votes: dict[bytes, Vote] = field(default_factory=dict)              # each validator's first vote
    power_by_hash: dict[bytes, int] = field(default_factory=dict)
    power: int = 0                                                       # each validator once
    by_hash: dict[bytes, dict[bytes, Vote]] = field(default_factory=dict)  # value -> validator -> vote
    pending: dict[bytes, list[tuple[Vote, int]]] = field(default_factory=dict)  # validator -> uncounted
    justified: set[bytes] = field(default_factory=set)                   # values a QuorumProof showed > 2/3 for
    # quorum_value()'s answer, valid until the next _count (the engine asks ~10 times per vote it takes)
    _value: tuple[bytes | None] | None = field(default=None, init=False, repr=False, compare=False)

    def add(self, vote: Vote, power: int) -> Evidence | None | bool:
        """True if counted, False if a duplicate, Evidence if it conflicts with an earlier vote."""
        prior = self.votes.get(vote.validator)
        if prior is None:
            self.votes[vote.validator] = vote
            self.power += power
            self._count(vote, power)
            self._release(vote.block_hash)          # conflicting votes that waited for a backer now count
            return True
        if vote.validator in self.by_hash.get(vote.block_hash, {}) or any(
                w.block_hash == vote.block_hash for w, _ in self.pending.get(vote.validator, ())):
            return False
        if (vote.block_hash == NIL_HASH or vote.block_hash in self.justified
                or any(v.block_hash == vote.block_hash for v in self.votes.values())):
            self._count(vote, power)
        else:
            waiting = self.pending.setdefault(vote.validator, [])
            if len(waiting) < MAX_PENDING_CONFLICTS:
                waiting.append((vote, power))
        return Evidence.of(prior, vote)

    def justify(self, block_hash: bytes) -> bool:
        """A verified QuorumProof showed > 2/3 for ``block_hash``: its conflicting votes count from now on
        (waiting ones at once). False if ``MAX_JUSTIFIED`` other values already are (nothing changes)."""
        if block_hash in self.justified:
            return True
        if len(self.justified) >= MAX_JUSTIFIED:
            return False
        self.justified.add(block_hash)
        self._release(block_hash)
        return True

    def _release(self, block_hash: bytes) -> None:
        """Count the waiting conflicting votes for ``block_hash``: it is now backed or justified."""
        for waiting in self.pending.values():
            for item in [w for w in waiting if w[0].block_hash == block_hash]:
                waiting.remove(item)
                self._count(*item)

    def quorums(self) -> list[bytes]:
        """Every value (nil included) with > 2/3 of the power."""
        return [h for h, p in self.power_by_hash.items() if has_quorum(p, self.total_power)]

    def _count(self, vote: Vote, power: int) -> None:
        self._value = None
        self.by_hash.setdefault(vote.block_hash, {})[vote.validator] = vote
        self.power_by_hash[vote.block_hash] = self.power_by_hash.get(vote.block_hash, 0) + power

    def quorum_any(self) -> bool:
        return has_quorum(self.power, self.total_power)

    def quorum_for(self, block_hash: bytes) -> bool:
        return has_quorum(self.power_by_hash.get(block_hash, 0), self.total_power)

    def quorum_nil(self) -> bool:
        return self.quorum_for(NIL_HASH)

    def quorum_value(self) -> bytes | None:
        """The non-nil hash with > 2/3, if any."""
        if self._value is not None:
            return self._value[0]
        found = None
        for h, p in self.power_by_hash.items():
            if h != NIL_HASH and has_quorum(p, self.total_power):
                found = h
                break
        self._value = (found,)
        return found

    def votes_for(self, block_hash: bytes) -> list[Vote]:
        """One vote per validator that voted for ``block_hash`` (an equivocator's included)."""
        return list(self.by_hash.get(block_hash, {}).values())


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
