"""The Tendermint consensus state machine, pure: events in, actions out (SPEC §4).

Algorithm 1 of "The latest gossip on BFT consensus" (Buchman, Kwon, Milosevic, 2018,
arXiv:1807.04938); the ``[Lnn]`` marks below cite its line numbers. The engine never touches the
reactor, sockets or the clock: every input carries ``now`` (seconds), and the outputs are actions for
the service to perform (broadcast, schedule a timeout, commit a block, report evidence). What it
needs from the world is injected:

* ``app`` (:class:`ConsensusApp`): validator sets and proposers per height/round, ``getValue()``
  (build a block) and ``valid(v)`` (fully validate a block; cached per hash here).
* ``signer``: the double-sign guard (``privval``); it durably records what it signs *before*
  returning a signature, and refuses a conflicting signature. A refused signature means no vote, and
  never a stall: see :meth:`Engine._refused`.
* ``on_accept`` (optional): called with each peer input (proposal, vote, quorum proof) once every check
  has passed and before it changes any state or leads to a signature; the service logs it to the WAL
  there. So only accepted inputs are logged (a refused one costs no disk), and every input a signature
  rests on is logged before the signer is asked (the service's signer syncs the WAL before signing).

The reactor turns between heights: the round-0 proposer always goes through a BLOCK_INTERVAL timeout
(delay 0 when the interval is 0 or already over), so with ``block_interval = 0`` a single validator's
decision never comes out of the call that started the height, and ``start_height`` never recurses.

Next-height messages (a peer one step ahead) are buffered, bounded: only from validators of h+1 (that
set is known a height ahead: set changes apply at h+2), signature checked, deduplicated, at most
``MAX_BUFFERED_PER_KIND`` per (sender, round, type) and ``MAX_BUFFERED_ROUNDS`` rounds per sender. A
buffered message is relayed, so it gets every check its own height would make that does not depend on
round state (:meth:`Engine._check_proposal`; the proposer of each round of h+1 is known at h, as its
priorities are): an honest relay one height behind never passes on what a peer at h+1 must refuse.

Quorums are stake-weighted and strict (> 2/3 of total power, integer arithmetic); the paper's
``2f + 1`` is read as "> 2/3 of power" and ``f + 1`` as "> 1/3 of power".

Against Byzantine peers and relays (SPEC §4; docs/consensus.md has the threat table):

* Proposal integrity: the proposal signature covers the header hash only, so the body is checked against
  the header's roots and the size caps (``app.check_body``) before a proposal is stored, voted on or
  relayed. One block hash is one body everywhere, so caching validity per hash is sound.
* Block time (proposer-based timestamps, as CometBFT): a *fresh* proposal (``pol_round = -1``) is timely
  if ``ts - precision <= receive time <= ts + message_delay + precision``, judged once, on arrival, and
  an untimely one gets a nil prevote [L22]. A re-proposal with a proof of lock [L28] is never judged by
  its time: > 2/3 of the network already found it acceptable. Timeliness is not a property of the block,
  so it never enters the validity cache, which only holds verdicts that cannot change within a height.
  The clock assumption: honest validators' clocks are within ``precision`` of each other, and a proposal
  reaches them within ``message_delay``. Beyond that, safety still holds (time is never used for safety);
  what suffers is liveness of the skewed node's own proposals (others prevote nil on them, so they cost a
  round) and its votes on others' fresh proposals (nil). The wait before a height's round 0 is at most
  ``block_interval`` by the local clock, whatever timestamp the parent's proposer chose.
* Equivocating proposer: the first proposal of a round is the one voted on; other proposals' blocks are
  kept when votes name them ([L36] and [L49] match any proposal of the round), at most
  ``MAX_UNBACKED_PER_ROUND`` a round otherwise. Holding > 2/3 precommits for a block we lack emits
  :class:`FetchBlock`: the voters held it, and it comes back through :meth:`Engine.on_block` (or as a
  certified block).
* Vote propagation: :meth:`Engine.quorums` / :meth:`Engine.on_quorum` exchange self-verifying
  :class:`~timecoin.ledger.block.QuorumProof` objects, so a vote a node dropped for want of room still reaches
  it when it matters (the reasoning is in ``votes.py``).
"""
from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from timecoin.consensus.votes import MAX_JUSTIFIED, HeightVotes, VoteSet
from timecoin.errors import InvalidSignature, Reason, ValidationError
from timecoin.ledger.block import (
    NIL_HASH,
    Block,
    CommitCertificate,
    Evidence,
    Proposal,
    QuorumProof,
    Vote,
    VoteType,
)
from timecoin.ledger.validators import ValidatorSet

MAX_ROUND_AHEAD = 100          # votes/proposals further ahead than this are refused (memory bound)
MAX_BUFFERED_NEXT_HEIGHT = 10_000    # backstop; the per-sender caps below bind first for any real set
MAX_BUFFERED_PER_KIND = 2      # per (sender, round, type) of the next height: the message and one conflicting
MAX_BUFFERED_ROUNDS = 4        # distinct next-height rounds buffered per sender
MAX_UNBACKED_PER_ROUND = 2     # an equivocating proposer's other blocks kept per round before a vote names them
MAX_CACHED_PROPOSERS = 1_024  # (height, round) -> proposer entries kept (this height's and the next's rounds)


class Step(enum.IntEnum):
    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3
    COMMITTED = 4              # decided; waiting for the service to start the next height


class TimeoutKind(enum.IntEnum):
    BLOCK_INTERVAL = 0         # the proposer waits until time(h-1) + block_interval (SPEC §4)
    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3


@dataclass(frozen=True)
class Timeouts:
    """Per-phase timeouts: base + round × delta, seconds (SPEC §4)."""

    propose: float = 0.04
    propose_delta: float = 0.001
    prevote: float = 0.01
    prevote_delta: float = 0.001
    precommit: float = 0.01
    precommit_delta: float = 0.001
    block_interval: float = 1.0
    # Proposer-based timestamps (SPEC §4 "Block time"): a fresh proposal is timely when
    # ts - precision <= receive time <= ts + message_delay + precision. Devnet/test values.
    precision: float = 0.05
    message_delay: float = 0.2

    def timely(self, timestamp: float, received: float) -> bool:
        """Is a fresh proposal stamped ``timestamp`` timely when received at ``received`` (seconds)?"""
        return timestamp - self.precision <= received <= timestamp + self.message_delay + self.precision

    def for_step(self, kind: TimeoutKind, round_: int) -> float:
        if kind == TimeoutKind.PROPOSE:
            return self.propose + round_ * self.propose_delta
        if kind == TimeoutKind.PREVOTE:
            return self.prevote + round_ * self.prevote_delta
        return self.precommit + round_ * self.precommit_delta


# -- actions ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BroadcastProposal:
    proposal: Proposal


@dataclass(frozen=True)
class BroadcastVote:
    vote: Vote


@dataclass(frozen=True)
class ScheduleTimeout:
    height: int
    round: int
    kind: TimeoutKind
    delay: float


@dataclass(frozen=True)
class CommitBlock:
    block: Block
    certificate: CommitCertificate


@dataclass(frozen=True)
class EvidenceFound:
    evidence: Evidence


@dataclass(frozen=True)
class FetchBlock:
    """We hold > 2/3 precommits for a block we never received: get it by hash from the validators that
    precommitted it (they held it to vote), then hand it to :meth:`Engine.on_block` (or commit it with its
    certificate, which is what those votes are)."""

    height: int
    round: int
    block_hash: bytes
    voters: tuple[bytes, ...]


Action = BroadcastProposal | BroadcastVote | ScheduleTimeout | CommitBlock | EvidenceFound | FetchBlock


class ConsensusApp(Protocol):
    chain_id: str

    def validator_set(self, height: int) -> ValidatorSet: ...

    def proposer(self, height: int, round_: int) -> bytes: ...

    def propose(self, height: int, round_: int, timestamp_ms: int) -> Block: ...

    def check_body(self, block: Block) -> None: ...

    def validate(self, block: Block) -> bool: ...


class Signer(Protocol):
    address: bytes

    def sign_vote(self, vote: Vote) -> Vote | None: ...

    def sign_proposal(self, proposal: Proposal) -> Proposal | None: ...


class Engine:
    """One validator's (or observer's, with ``signer=None``) view of consensus."""

    def __init__(self, app: ConsensusApp, signer: Signer | None, timeouts: Timeouts,
                 on_accept: Callable[[Proposal | Vote | QuorumProof], None] | None = None) -> None:
        self.app = app
        self.signer = signer
        self.timeouts = timeouts
        self.on_accept = on_accept
        self.height = 0
        self.round = 0
        self.step = Step.COMMITTED
        self.now = 0.0
        self._next_height_msgs: list[tuple[Proposal | Vote, float]] = []   # with the time each arrived
        self._next_seen: set[bytes] = set()                          # dedupe of the buffer
        self._next_per_key: dict[tuple[bytes, int, int], int] = {}   # (sender, round, type) -> count
        self._next_rounds: dict[bytes, set[int]] = {}                # sender -> buffered rounds
        self._proposers: dict[tuple[int, int], bytes] = {}           # (height, round) -> proposer, h and h+1
        self._next_validators: tuple[int, ValidatorSet] | None = None    # (h+1, its set), read once per height
        self._signers: tuple[int, frozenset[bytes]] | None = None        # (h, who may sign at h or h+1)

    # -- lifecycle -------------------------------------------------------------------------------
    def start_height(self, height: int, now: float, prev_block_time: float) -> list[Action]:
        """Begin ``height`` [L52–L54 after a decision; L10 at start]: reset locks, start round 0."""
        self.now = now
        self.height = height
        self.validators = self.app.validator_set(height)
        self._proposers, self._next_validators = {}, None
        self.prev_block_time = prev_block_time
        self.locked_value: Block | None = None     # [L6]
        self.locked_round = -1                     # [L7]
        self.valid_value: Block | None = None      # [L8]
        self.valid_round = -1                      # [L9]
        self.decision: Block | None = None         # [L5]
        self.proposals: dict[int, Proposal] = {}     # the first proposal of each round: the one voted on
        self._timely: dict[int, bool] = {}           # per round: was its fresh proposal timely when it arrived
        # Blocks of this height we hold, by hash: every round's first proposal, and blocks some vote names
        # (an equivocating proposer's others, blocks fetched by hash). Bounded by the votes' own bounds.
        self._blocks: dict[bytes, Block] = {}
        # An equivocating proposer's other blocks that no vote names yet: at most MAX_UNBACKED_PER_ROUND a
        # round (newest kept). A decided block evicted here is fetched by hash instead (FetchBlock).
        self._unbacked: dict[int, dict[bytes, Block]] = {}
        self._fetching: set[bytes] = set()
        self.votes = HeightVotes(self.validators)
        self._valid_cache: dict[bytes, bool] = {}
        self._prevote_timeout_done: set[int] = set()
        self._precommit_timeout_done: set[int] = set()
        self._l36_done: set[int] = set()
        out: list[Action] = []
        self._start_round(0, out)       # round 0 proposes through a timeout: no rule can fire yet
        buffered, self._next_height_msgs = self._next_height_msgs, []
        self._next_seen, self._next_per_key, self._next_rounds = set(), {}, {}
        for msg, arrived in buffered:
            if msg.height != height:
                continue
            try:
                if isinstance(msg, Proposal):         # judged timely or not as of its arrival, not of now
                    out += self.on_proposal(msg, now, timely=self.timeouts.timely(msg.block.header.timestamp / 1000,
                                                                                 arrived))
                else:
                    out += self.on_vote(msg, now)
            except ValidationError:
                continue
        return out

    @property
    def is_validator(self) -> bool:
        return self.signer is not None and self.signer.address in self.validators

    # -- inputs ----------------------------------------------------------------------------------
    def on_proposal(self, p: Proposal, now: float, timely: bool | None = None) -> list[Action]:
        """A proposal from the network. Raises ValidationError(reason) if it must be refused.

        ``now`` is its receive time, which judges a fresh proposal's timeliness (SPEC §4), once, here;
        ``timely`` overrides that judgement (WAL replay: it was judged when it first arrived, and what we
        signed then is bound by the guard anyway).
        """
        self.now = max(self.now, now)
        if self._defer(p, now):
            return []
        if p.round > self.round + MAX_ROUND_AHEAD:
            raise ValidationError(Reason.WRONG_ROUND, f"round {p.round} too far ahead of {self.round}")
        self._check_proposal(p)
        prior = self.proposals.get(p.round)
        if prior is not None:
            if p.block.hash == prior.block.hash or self.block_by_hash(p.block.hash) is not None:
                raise ValidationError(Reason.DUPLICATE, "proposal already received")
            # An equivocating proposer: only the first proposal is voted on, but the paper's rules [L36],
            # [L49] match any proposal of the round, so keep its block if votes name it (bounded otherwise).
            self._verify_proposal(p)
            self._accept(p)
            self._keep_other(p.round, p.block)
            out: list[Action] = []
            self._process(out)
            if out:
                return out
            raise ValidationError(Reason.DUPLICATE, "a different proposal for this round was received first")
        self._verify_proposal(p)
        self._accept(p)
        self.proposals[p.round] = p
        self._blocks[p.block.hash] = p.block
        if p.pol_round == -1:
            self._timely[p.round] = (timely if timely is not None
                                     else self.timeouts.timely(p.block.header.timestamp / 1000, now))
        self.votes.mark_seen(p.round, p.proposer)
        out: list[Action] = []
        self._process(out)
        return out

    def on_block(self, block: Block, now: float) -> list[Action]:
        """A block fetched by hash after :class:`FetchBlock`. Kept only if a vote of this height names it and
        its body matches its header; raises ValidationError otherwise (BAD_BLOCK, DUPLICATE, WRONG_HEIGHT)."""
        self.now = max(self.now, now)
        if block.height != self.height or self.step == Step.COMMITTED:
            raise ValidationError(Reason.WRONG_HEIGHT, f"block {block.height}, we are deciding {self.height}")
        if self.block_by_hash(block.hash) is not None:
            raise ValidationError(Reason.DUPLICATE, "block already held")
        if not self._voted_for(block.hash):
            raise ValidationError(Reason.BAD_BLOCK, "no vote of this height names that block (not requested)")
        self.app.check_body(block)
        self._blocks[block.hash] = block
        out: list[Action] = []
        self._process(out)
        return out

    def on_quorum(self, q: QuorumProof, now: float) -> list[Action]:
        """A peer's proof that > 2/3 of a round voted one value (vote propagation, see votes.py).

        Checked in full before anything counts: current height, every signer a distinct validator in
        ascending order, their power > 2/3, every signature valid (signatures already verified are cached).
        Then the value is justified in its vote set and every vote of the proof is added. Raises
        ValidationError: WRONG_HEIGHT/WRONG_ROUND (no blame), NOT_VALIDATOR, BAD_CERTIFICATE, BAD_SIGNATURE
        (the sender built a bad proof), DUPLICATE (nothing new, or the set's justified values are full).
        """
        self.now = max(self.now, now)
        if q.height != self.height or self.step == Step.COMMITTED:
            raise ValidationError(Reason.WRONG_HEIGHT, f"quorum of height {q.height}, we are at {self.height}")
        if q.round > self.round + MAX_ROUND_AHEAD:
            raise ValidationError(Reason.WRONG_ROUND, f"round {q.round} too far ahead of {self.round}")
        votes = q.votes()
        power, prev = 0, b""
        for vote in votes:
            if vote.validator <= prev:
                raise ValidationError(Reason.BAD_CERTIFICATE, "signers not in strictly ascending order")
            prev = vote.validator
            val = self.validators.by_address.get(vote.validator)
            if val is None:
                raise ValidationError(Reason.NOT_VALIDATOR, "a signer is not a validator of this height")
            power += val.power
        if not self.validators.quorum(power):
            raise ValidationError(Reason.BAD_CERTIFICATE, "the signers do not hold > 2/3 of the power")
        vs = self.votes.get(q.round, q.type)
        counted = vs.by_hash.get(q.block_hash, {})
        if all(vote.validator in counted for vote in votes):
            raise ValidationError(Reason.DUPLICATE, "every vote of that quorum is already counted")
        for vote in votes:
            try:
                vote.verify_signature(self.validators.by_address[vote.validator].pubkey, self.app.chain_id)
            except InvalidSignature:
                raise ValidationError(Reason.BAD_SIGNATURE, "a vote of the quorum does not verify") from None
        if q.block_hash not in vs.justified and len(vs.justified) >= MAX_JUSTIFIED:     # justify() would refuse
            raise ValidationError(Reason.DUPLICATE, "enough values of that round are justified already")
        self._accept(q)
        vs.justify(q.block_hash)
        out: list[Action] = []
        for vote in votes:
            result = self.votes.add(vote)
            if isinstance(result, Evidence):
                out.append(EvidenceFound(result))
        self._promote(q.block_hash)
        self._process(out)
        return out

    def quorums(self) -> list[QuorumProof]:
        """The > 2/3 quorums we hold at this height (prevotes and precommits, nil included), as proofs for
        peers at our height: sent periodically by the gossip layer, they make sure every honest node ends up
        with the quorums any honest node saw."""
        if self.step == Step.COMMITTED:
            return []
        return [QuorumProof.from_votes(vs.votes_for(value))
                for (_, _), vs in sorted(self.votes.sets.items()) for value in vs.quorums()]

    def block_by_hash(self, block_hash: bytes) -> Block | None:
        """A block of the current height we hold (to serve a peer's fetch, or to decide)."""
        block = self._blocks.get(block_hash)
        if block is None:
            for slot in self._unbacked.values():
                block = slot.get(block_hash)
                if block is not None:
                    break
        return block

    def on_vote(self, v: Vote, now: float) -> list[Action]:
        """A vote from the network. Raises ValidationError(reason) if it must be refused."""
        self.now = max(self.now, now)
        if self._defer(v, now):
            return []
        if v.round > self.round + MAX_ROUND_AHEAD:
            raise ValidationError(Reason.WRONG_ROUND, f"round {v.round} too far ahead of {self.round}")
        val = self.validators.by_address.get(v.validator)
        if val is None:
            raise ValidationError(Reason.NOT_VALIDATOR, "vote from a non-validator")
        try:
            v.verify_signature(val.pubkey, self.app.chain_id)
        except InvalidSignature:
            raise ValidationError(Reason.BAD_SIGNATURE, "vote signature does not verify") from None
        held = self.votes.sets.get((v.round, v.type))
        if held is not None and _holds(held, v):          # what votes.add would refuse, found without adding
            raise ValidationError(Reason.DUPLICATE, "vote already received")
        self._accept(v)
        out: list[Action] = []
        result = self.votes.add(v)
        if result is False:
            raise ValidationError(Reason.DUPLICATE, "vote already received")
        if isinstance(result, Evidence):
            out.append(EvidenceFound(result))      # and go on: the vote may count toward its value (votes.py)
        self._promote(v.block_hash)
        self._process(out)
        return out

    def on_timeout(self, height: int, round_: int, kind: TimeoutKind, now: float) -> list[Action]:
        self.now = max(self.now, now)
        out: list[Action] = []
        if height != self.height or self.step == Step.COMMITTED:
            return out
        if kind == TimeoutKind.BLOCK_INTERVAL:
            if round_ == self.round and self.step == Step.PROPOSE:
                self._propose(out)
        elif kind == TimeoutKind.PROPOSE:          # [L57–L60]
            if round_ == self.round and self.step == Step.PROPOSE:
                self._vote(VoteType.PREVOTE, NIL_HASH, out)
                self.step = Step.PREVOTE
        elif kind == TimeoutKind.PREVOTE:          # [L61–L64]
            if round_ == self.round and self.step == Step.PREVOTE:
                self._vote(VoteType.PRECOMMIT, NIL_HASH, out)
                self.step = Step.PRECOMMIT
        elif kind == TimeoutKind.PRECOMMIT and round_ == self.round:     # [L65–L67]
            self._start_round(self.round + 1, out)
        self._process(out)
        return out

    def precheck(self, kind: type[Proposal | Vote | QuorumProof], height: int, round_: int,
                 signer: bytes | None) -> Reason | None:
        """Why a message would surely be refused, judged from its fixed-size fields alone; None if it may not.

        For the P2P layer, before it decodes a message's body (a proposal's may be megabytes): a height other
        than this one or the next (a quorum proof: this one only), a round too far ahead (``WRONG_ROUND``),
        a proposal from anyone but its round's proposer or a vote from outside its height's set
        (``NOT_VALIDATOR``). Each answer is what ``on_proposal``/``on_vote``/``on_quorum`` would raise for
        the whole message (``WRONG_HEIGHT`` also stands for a message of the height just decided, which they
        drop), so a message this refuses could never have been accepted.
        """
        current = height == self.height and self.step != Step.COMMITTED
        if not current and (height != self.height + 1 or kind is QuorumProof):
            return Reason.WRONG_HEIGHT
        if round_ > (self.round if current else 0) + MAX_ROUND_AHEAD:
            return Reason.WRONG_ROUND
        try:
            if kind is Proposal and signer != self._proposer(height, round_):
                return Reason.NOT_VALIDATOR
            if kind is Vote and (signer is None or signer not in self._validators_of(height)):
                return Reason.NOT_VALIDATOR
        except ValidationError as exc:     # no validator set known for that height
            return exc.reason
        return None

    # -- the algorithm ---------------------------------------------------------------------------
    def _accept(self, msg: Proposal | Vote | QuorumProof) -> None:
        """``msg`` passed every check: hand it to ``on_accept`` (the WAL) before any state changes."""
        if self.on_accept is not None:
            self.on_accept(msg)

    def _defer(self, msg: Proposal | Vote, now: float) -> bool:
        """Buffer next-height messages; refuse other heights. True if the message was taken (buffered).

        Buffered messages must come from a validator of the next height with a good signature (one peer
        cannot fill the buffer with junk or forge another validator's share of it), are deduplicated, and
        are capped per sender: ``MAX_BUFFERED_PER_KIND`` per (round, type) — an honest validator sends
        one, the second may be an equivocation worth turning into evidence once the height starts — and
        ``MAX_BUFFERED_ROUNDS`` rounds (a newer round evicts the sender's oldest). Refusals raise
        ValidationError (NOT_VALIDATOR, BAD_SIGNATURE, WRONG_ROUND, WRONG_HEIGHT; DUPLICATE for a copy and
        for anything over a cap, which blames no relay). Messages of the height just
        decided (step COMMITTED, before the next height starts) are dropped silently.
        """
        if msg.height == self.height and self.step != Step.COMMITTED:
            return False
        if msg.height == self.height and self.step == Step.COMMITTED:
            return True        # a late vote of the height just decided: normal, and of no use any more
        if msg.height != self.height + 1:
            raise ValidationError(Reason.WRONG_HEIGHT, f"message for height {msg.height}, we are at {self.height}")
        if msg.round > MAX_ROUND_AHEAD:
            raise ValidationError(Reason.WRONG_ROUND, f"round {msg.round} too far ahead for the next height")
        sender = msg.proposer if isinstance(msg, Proposal) else msg.validator
        kind = 0 if isinstance(msg, Proposal) else int(msg.type)
        # The body is checked before the dedupe, whose key holds the header hash only: a swapped body never
        # takes the genuine proposal's slot, and its relay is charged for it (not let off as a duplicate).
        ident = (b"P" + msg.signature + msg.block.hash) if isinstance(msg, Proposal) else b"V" + msg.encoded
        if isinstance(msg, Proposal):              # as on_proposal will at h+1: nothing it refuses is relayed
            self._check_proposal(msg)
        if ident in self._next_seen:
            raise ValidationError(Reason.DUPLICATE, "next-height message already buffered")
        val = self._validators_of(msg.height).by_address.get(sender)
        if val is None:
            raise ValidationError(Reason.NOT_VALIDATOR, "next-height message from a non-validator of that height")
        key = (sender, msg.round, kind)
        rounds = self._next_rounds.get(sender, set())
        # Over a bound: refused as DUPLICATE, which blames no one -- the relay delivering it is usually honest
        # (a node one height behind sees the next height's rounds go by), and only the newest rounds matter.
        if self._next_per_key.get(key, 0) >= MAX_BUFFERED_PER_KIND or (
                rounds and msg.round not in rounds and len(rounds) >= MAX_BUFFERED_ROUNDS and msg.round < min(rounds)):
            raise ValidationError(Reason.DUPLICATE, "enough next-height messages of this validator are buffered")
        try:
            msg.verify_signature(val.pubkey, self.app.chain_id)
        except InvalidSignature:
            raise ValidationError(Reason.BAD_SIGNATURE, "next-height message signature does not verify") from None
        evict = msg.round not in rounds and len(rounds) >= MAX_BUFFERED_ROUNDS
        if not evict and len(self._next_height_msgs) >= MAX_BUFFERED_NEXT_HEIGHT:
            raise ValidationError(Reason.DUPLICATE, "the next-height buffer is full")
        if evict:
            self._evict_next_round(sender, min(rounds))       # keep the sender's newest rounds (frees room)
        self._next_seen.add(ident)
        self._next_per_key[key] = self._next_per_key.get(key, 0) + 1
        self._next_rounds.setdefault(sender, set()).add(msg.round)
        self._next_height_msgs.append((msg, now))
        return True

    def _check_proposal(self, p: Proposal) -> None:
        """The checks of a proposal that do not depend on round state: made alike at its height (on_proposal)
        and one height ahead (``_defer``, before it is buffered and relayed).

        So what a node at h+1 refuses for a fault of the proposal itself, a relay at h refused first and never
        relayed: the height's faults an honest relay can pass on are only the race-prone ones (a round too
        far ahead of the receiver's, a duplicate), which blame no one or cost a capped point (SPEC §5). The
        signature is checked by the callers after their cheap dedupe and caps, against the same set.
        """
        if not -1 <= p.pol_round < p.round:
            raise ValidationError(Reason.WRONG_ROUND, "pol_round must be -1 or below the round")
        if p.proposer != self._proposer(p.height, p.round):
            raise ValidationError(Reason.NOT_VALIDATOR, "not the proposer of that round")
        if p.block.height != p.height:
            raise ValidationError(Reason.BAD_BLOCK, "proposed block is for another height")
        # The signature covers the header only: a body that is not the header's (or breaks the caps) is a
        # relay's doing, refused before anything is stored, cached or relayed (SPEC §4 proposal integrity).
        self.app.check_body(p.block)

    def _proposer(self, height: int, round_: int) -> bytes:
        """The proposer of (height, round), for this height and the next (cached: the rotation costs a pass
        over the set per round; rounds are bounded by MAX_ROUND_AHEAD)."""
        key = (height, round_)
        proposer = self._proposers.get(key)
        if proposer is None:
            if len(self._proposers) >= MAX_CACHED_PROPOSERS:      # a long stall's rounds: start again
                self._proposers.clear()
            proposer = self._proposers[key] = self.app.proposer(height, round_)
        return proposer

    def signers(self) -> frozenset[bytes]:
        """Addresses that may sign a proposal or vote of this height or the next (cached per height)."""
        if self._signers is None or self._signers[0] != self.height:
            addresses = set(self.validators.by_address)
            with contextlib.suppress(ValidationError):      # not known: this height's signers only
                addresses.update(self._validators_of(self.height + 1).by_address)
            self._signers = (self.height, frozenset(addresses))
        return self._signers[1]

    def _validators_of(self, height: int) -> ValidatorSet:
        """The validator set of this height or the next (known a height ahead: set changes apply at h+2)."""
        if height == self.height:
            return self.validators
        if self._next_validators is None or self._next_validators[0] != height:
            self._next_validators = (height, self.app.validator_set(height))
        return self._next_validators[1]

    def _evict_next_round(self, sender: bytes, round_: int) -> None:
        """Drop ``sender``'s buffered next-height messages of ``round_`` (a newer round replaces it)."""
        def of(msg: Proposal | Vote) -> bool:
            who = msg.proposer if isinstance(msg, Proposal) else msg.validator
            return who == sender and msg.round == round_
        self._next_height_msgs = [(msg, t) for msg, t in self._next_height_msgs if not of(msg)]
        for key in [k for k in self._next_per_key if k[0] == sender and k[1] == round_]:
            del self._next_per_key[key]
        self._next_rounds[sender].discard(round_)

    def _verify_proposal(self, p: Proposal) -> None:
        try:
            p.verify_signature(self.validators.by_address[p.proposer].pubkey, self.app.chain_id)
        except InvalidSignature:
            raise ValidationError(Reason.BAD_SIGNATURE, "proposal signature does not verify") from None

    def _voted_for(self, block_hash: bytes) -> bool:
        return any(block_hash in vs.by_hash for vs in self.votes.sets.values())

    def _keep_other(self, round_: int, block: Block) -> None:
        """Keep an equivocating proposer's other block: for good if a vote names it, else in a small slot."""
        if self._voted_for(block.hash):
            self._blocks[block.hash] = block
            return
        slot = self._unbacked.setdefault(round_, {})
        if len(slot) >= MAX_UNBACKED_PER_ROUND:
            del slot[next(iter(slot))]             # the oldest: fetched by hash should it be decided after all
        slot[block.hash] = block

    def _promote(self, block_hash: bytes) -> None:
        """A vote now names ``block_hash``: a block waiting in an unbacked slot is kept for good."""
        if block_hash in self._blocks:
            return
        for slot in self._unbacked.values():
            block = slot.pop(block_hash, None)
            if block is not None:
                self._blocks[block_hash] = block
                return

    @property
    def buffered_next_height(self) -> tuple[Proposal | Vote, ...]:
        """The next height's messages received early (judged again, and accepted ones logged, when it starts)."""
        return tuple(msg for msg, _ in self._next_height_msgs)

    def _valid(self, block: Block) -> bool:
        ok = self._valid_cache.get(block.hash)
        if ok is None:
            ok = self._valid_cache[block.hash] = self.app.validate(block)
        return ok

    def _start_round(self, round_: int, out: list[Action]) -> None:
        """StartRound [L11–L21]."""
        self.round = round_                        # [L12]
        self.step = Step.PROPOSE                   # [L13]
        wait = 0.0
        if round_ == 0:
            # Until time(h-1) + block_interval, but never longer than block_interval from our own clock: the
            # parent's timestamp is a value its proposer chose (timeliness bounds it only by `precision`).
            interval = self.timeouts.block_interval
            wait = min(interval, max(0.0, self.prev_block_time + interval - self.now))
        if self.signer is not None and self.app.proposer(self.height, round_) == self.signer.address:  # [L14]
            if round_ == 0:
                # Round 0 always waits for the block interval, even a zero one (delay 0): the proposal,
                # and with it a single validator's decision, then comes from a reactor callback and not
                # from inside start_height, so the reactor turns between heights (block_interval = 0).
                out.append(ScheduleTimeout(self.height, round_, TimeoutKind.BLOCK_INTERVAL, wait))
            else:
                self._propose(out)
        # [L21] for everyone, the proposer included (as CometBFT does): a proposer that cannot sign
        # (its guard refuses after a restart) must still move on; after a proposal the step is past
        # PROPOSE and the timeout is ignored.
        delay = wait + self.timeouts.for_step(TimeoutKind.PROPOSE, round_)
        out.append(ScheduleTimeout(self.height, round_, TimeoutKind.PROPOSE, delay))

    def _propose(self, out: list[Action]) -> None:
        """[L15–L19]: re-propose validValue with its round, else a fresh block (getValue)."""
        if self.round in self.proposals:           # already proposed (e.g. replayed from the WAL)
            return
        if self.valid_value is not None:
            block, pol_round = self.valid_value, self.valid_round
        else:
            ts = max(int(self.now * 1000), int(self.prev_block_time * 1000) + 1)   # strictly after the parent
            block, pol_round = self.app.propose(self.height, self.round, ts), -1
            self._timely[self.round] = True
        assert self.signer is not None
        proposal = self.signer.sign_proposal(Proposal(self.height, self.round, pol_round, self.signer.address, block))
        if proposal is None:
            return
        self.proposals[self.round] = proposal
        self._blocks[block.hash] = block
        out.append(BroadcastProposal(proposal))

    def _vote(self, vtype: VoteType, block_hash: bytes, out: list[Action]) -> None:
        if not self.is_validator:
            return
        assert self.signer is not None
        vote = self.signer.sign_vote(Vote(vtype, self.height, self.round, block_hash, self.signer.address))
        if vote is None:
            self._refused(vtype, out)
            return
        self.votes.add(vote)
        out.append(BroadcastVote(vote))

    def _refused(self, vtype: VoteType, out: list[Action]) -> None:
        """The guard refused our vote of this round: schedule the step's timeout ourselves.

        Why this is needed: the guard refuses when it already signed a later (or conflicting) message of
        this (height, round) — after a crash whose last signature did not reach the WAL, or a lost WAL.
        The paper's timeouts for the prevote and precommit steps are only scheduled on 2f+1 messages of
        the step ([L34–L35], [L47–L48]); our own vote may be needed for those quorums (always, for a single
        validator), so without it the round would never end: step PREVOTE with no prevote timeout is the
        stall seen after kill -9.

        Why it terminates: the prevote timeout leads to a nil precommit [L61–L64] (refused or not, the
        precommit timeout is then scheduled here or by [L47]), and the precommit timeout starts round
        r + 1 [L65–L67]. The guard's record is at most (h, r, precommit), so everything of round r + 1 is
        signable again, and timeouts keep escalating per round meanwhile. A refused proposal needs
        nothing: every node, the proposer included, schedules the propose timeout [L21].

        Why it is safe: timeouts only ever produce nil votes and round changes; Tendermint is safe under
        any timing, and the refused message itself is never sent. (That the lock survives is the WAL's
        job: the inputs that led to it are logged before they are processed, see the service.)
        """
        r = self.round
        if vtype == VoteType.PREVOTE and r not in self._prevote_timeout_done:
            self._prevote_timeout_done.add(r)
            out.append(ScheduleTimeout(self.height, r, TimeoutKind.PREVOTE,
                                       self.timeouts.for_step(TimeoutKind.PREVOTE, r)))
        elif vtype == VoteType.PRECOMMIT and r not in self._precommit_timeout_done:
            self._precommit_timeout_done.add(r)
            out.append(ScheduleTimeout(self.height, r, TimeoutKind.PRECOMMIT,
                                       self.timeouts.for_step(TimeoutKind.PRECOMMIT, r)))

    def _process(self, out: list[Action]) -> None:
        """Apply every enabled upon-rule until none fires."""
        while self.step != Step.COMMITTED and self._step_once(out):
            pass

    def _step_once(self, out: list[Action]) -> bool:
        r = self.round
        prop = self.proposals.get(r)
        prevotes = self.votes.get(r, VoteType.PREVOTE)
        precommits = self.votes.get(r, VoteType.PRECOMMIT)

        # [L49–L54] a decision in any round: proposal + > 2/3 precommits for it. A block we never received
        # is fetched by hash from its voters (the precommits are its commit certificate).
        for (rr, vtype), vs in list(self.votes.sets.items()):
            if vtype != VoteType.PRECOMMIT:
                continue
            value = vs.quorum_value()
            if value is None:
                continue
            block = self.block_by_hash(value)
            if block is None:
                if value not in self._fetching:
                    self._fetching.add(value)
                    out.append(FetchBlock(self.height, rr, value, tuple(sorted(vs.by_hash[value]))))
                continue
            if self._valid(block):
                self.decision = block
                self.step = Step.COMMITTED
                cert = CommitCertificate.from_votes(vs.votes_for(value))
                out.append(CommitBlock(block, cert))
                return False

        # [L55–L56] > 1/3 of power already in a higher round: skip to it.
        for rr in self.votes.rounds_seen():
            if rr > r and self.votes.one_third_seen(rr):
                self._start_round(rr, out)
                return True

        if self.step == Step.PROPOSE and prop is not None:
            v = prop.block
            if prop.pol_round == -1:               # [L22–L27], and timely on arrival (proposer-based timestamps)
                ok = (self._timely.get(r, False) and self._valid(v)
                      and (self.locked_round == -1 or self._is_locked_on(v)))
                self._vote(VoteType.PREVOTE, v.hash if ok else NIL_HASH, out)
                self.step = Step.PREVOTE
                return True
            vr = prop.pol_round                    # [L28–L33]
            if 0 <= vr < r and self.votes.get(vr, VoteType.PREVOTE).quorum_for(v.hash):
                ok = self._valid(v) and (self.locked_round <= vr or self._is_locked_on(v))
                self._vote(VoteType.PREVOTE, v.hash if ok else NIL_HASH, out)
                self.step = Step.PREVOTE
                return True

        if self.step == Step.PREVOTE and prevotes.quorum_any() and r not in self._prevote_timeout_done:
            self._prevote_timeout_done.add(r)      # [L34–L35]
            out.append(ScheduleTimeout(self.height, r, TimeoutKind.PREVOTE,
                                       self.timeouts.for_step(TimeoutKind.PREVOTE, r)))
            return True

        # [L36–L43] a proposal of this round (the first, or an equivocating proposer's other block that
        # votes name) with > 2/3 prevotes for it.
        polka = prevotes.quorum_value() if self.step >= Step.PREVOTE and r not in self._l36_done else None
        polka_block = self.block_by_hash(polka) if polka is not None else None
        if polka_block is not None and self._valid(polka_block):
            self._l36_done.add(r)
            if self.step == Step.PREVOTE:
                self.locked_value, self.locked_round = polka_block, r     # [L38–L39]
                self._vote(VoteType.PRECOMMIT, polka_block.hash, out)     # [L40]
                self.step = Step.PRECOMMIT                                # [L41]
            self.valid_value, self.valid_round = polka_block, r           # [L42–L43]
            return True

        if self.step == Step.PREVOTE and prevotes.quorum_nil():          # [L44–L46]
            self._vote(VoteType.PRECOMMIT, NIL_HASH, out)
            self.step = Step.PRECOMMIT
            return True

        if precommits.quorum_any() and r not in self._precommit_timeout_done:   # [L47–L48]
            self._precommit_timeout_done.add(r)
            out.append(ScheduleTimeout(self.height, r, TimeoutKind.PRECOMMIT,
                                       self.timeouts.for_step(TimeoutKind.PRECOMMIT, r)))
            return True
        return False

    def _is_locked_on(self, v: Block) -> bool:
        return self.locked_value is not None and self.locked_value.hash == v.hash


def _holds(vs: VoteSet, vote: Vote) -> bool:
    """Does ``vs`` already hold ``vote`` (counted or waiting)? Exactly when ``VoteSet.add`` returns False."""
    return (vote.validator in vs.by_hash.get(vote.block_hash, {})
            or any(w.block_hash == vote.block_hash for w, _ in vs.pending.get(vote.validator, ())))
