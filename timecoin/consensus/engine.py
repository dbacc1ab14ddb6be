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

The reactor turns between heights: the round-0 proposer always goes through a BLOCK_INTERVAL timeout
(delay 0 when the interval is 0 or already over), so with ``block_interval = 0`` a single validator's
decision never comes out of the call that started the height, and ``start_height`` never recurses.

Next-height messages (a peer one step ahead) are buffered, bounded: only from validators of h+1 (that
set is known a height ahead: set changes apply at h+2), signature checked, deduplicated, at most
``MAX_BUFFERED_PER_KIND`` per (sender, round, type) and ``MAX_BUFFERED_ROUNDS`` rounds per sender.

Quorums are stake-weighted and strict (> 2/3 of total power, integer arithmetic); the paper's
``2f + 1`` is read as "> 2/3 of power" and ``f + 1`` as "> 1/3 of power".
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from timecoin.consensus.votes import HeightVotes
from timecoin.errors import InvalidSignature, Reason, ValidationError
from timecoin.ledger.block import NIL_HASH, Block, CommitCertificate, Evidence, Proposal, Vote, VoteType
from timecoin.ledger.validators import ValidatorSet

MAX_ROUND_AHEAD = 100          # votes/proposals further ahead than this are refused (memory bound)
MAX_BUFFERED_NEXT_HEIGHT = 10_000    # backstop; the per-sender caps below bind first for any real set
MAX_BUFFERED_PER_KIND = 2      # per (sender, round, type) of the next height: the message and one conflicting
MAX_BUFFERED_ROUNDS = 4        # distinct next-height rounds buffered per sender


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


Action = BroadcastProposal | BroadcastVote | ScheduleTimeout | CommitBlock | EvidenceFound


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

    def __init__(self, app: ConsensusApp, signer: Signer | None, timeouts: Timeouts) -> None:
        self.app = app
        self.signer = signer
        self.timeouts = timeouts
        self.height = 0
        self.round = 0
        self.step = Step.COMMITTED
        self.now = 0.0
        self._next_height_msgs: list[Proposal | Vote] = []
        self._next_seen: set[bytes] = set()                          # dedupe of the buffer
        self._next_per_key: dict[tuple[bytes, int, int], int] = {}   # (sender, round, type) -> count
        self._next_rounds: dict[bytes, set[int]] = {}                # sender -> buffered rounds

    # -- lifecycle -------------------------------------------------------------------------------
    def start_height(self, height: int, now: float, prev_block_time: float) -> list[Action]:
        """Begin ``height`` [L52–L54 after a decision; L10 at start]: reset locks, start round 0."""
        self.now = now
        self.height = height
        self.validators = self.app.validator_set(height)
        self.prev_block_time = prev_block_time
        self.locked_value: Block | None = None     # [L6]
        self.locked_round = -1                     # [L7]
        self.valid_value: Block | None = None      # [L8]
        self.valid_round = -1                      # [L9]
        self.decision: Block | None = None         # [L5]
        self.proposals: dict[int, Proposal] = {}
        self._other_blocks: dict[int, Block] = {}    # per round, the block of a conflicting second proposal
        self.votes = HeightVotes(self.validators)
        self._valid_cache: dict[bytes, bool] = {}
        self._prevote_timeout_done: set[int] = set()
        self._precommit_timeout_done: set[int] = set()
        self._l36_done: set[int] = set()
        out: list[Action] = []
        self._start_round(0, out)
        self._process(out)                         # our own proposal, when we propose at once
        buffered, self._next_height_msgs = self._next_height_msgs, []
        self._next_seen, self._next_per_key, self._next_rounds = set(), {}, {}
        for msg in buffered:
            if msg.height != height:
                continue
            try:
                out += self.on_proposal(msg, now) if isinstance(msg, Proposal) else self.on_vote(msg, now)
            except ValidationError:
                continue
        return out

    @property
    def is_validator(self) -> bool:
        return self.signer is not None and self.signer.address in self.validators

    # -- inputs ----------------------------------------------------------------------------------
    def on_proposal(self, p: Proposal, now: float) -> list[Action]:
        """A proposal from the network. Raises ValidationError(reason) if it must be refused."""
        self.now = max(self.now, now)
        if self._defer(p):
            return []
        if p.round > self.round + MAX_ROUND_AHEAD:
            raise ValidationError(Reason.WRONG_ROUND, f"round {p.round} too far ahead of {self.round}")
        if not -1 <= p.pol_round < p.round:
            raise ValidationError(Reason.WRONG_ROUND, "pol_round must be -1 or below the round")
        expected = self.app.proposer(self.height, p.round)
        if p.proposer != expected:
            raise ValidationError(Reason.NOT_VALIDATOR, "not the proposer of that round")
        if p.block.height != self.height:
            raise ValidationError(Reason.BAD_BLOCK, "proposed block is for another height")
        # The signature covers the header only: a body that is not the header's (or breaks the caps) is a
        # relay's doing, refused before anything is stored, cached or relayed (SPEC §4 proposal integrity).
        self.app.check_body(p.block)
        prior = self.proposals.get(p.round)
        if prior is not None:
            if prior.signature == p.signature and prior.block.hash == p.block.hash:
                raise ValidationError(Reason.DUPLICATE, "proposal already received")
            # An equivocating proposer: only the first proposal is voted on, but the paper's decision rule
            # [L49] matches any proposal of the round, so keep one other block (bounded) in case the rest
            # of the network decides it.
            if p.round not in self._other_blocks and p.block.hash != prior.block.hash:
                try:
                    p.verify_signature(self.validators.by_address[p.proposer].pubkey, self.app.chain_id)
                except InvalidSignature:
                    raise ValidationError(Reason.BAD_SIGNATURE, "proposal signature does not verify") from None
                self._other_blocks[p.round] = p.block
                out: list[Action] = []
                self._process(out)
                if out:
                    return out
            raise ValidationError(Reason.DUPLICATE, "a different proposal for this round was received first")
        try:
            p.verify_signature(self.validators.by_address[p.proposer].pubkey, self.app.chain_id)
        except InvalidSignature:
            raise ValidationError(Reason.BAD_SIGNATURE, "proposal signature does not verify") from None
        self.proposals[p.round] = p
        self.votes.mark_seen(p.round, p.proposer)
        out: list[Action] = []
        self._process(out)
        return out

    def on_vote(self, v: Vote, now: float) -> list[Action]:
        """A vote from the network. Raises ValidationError(reason) if it must be refused."""
        self.now = max(self.now, now)
        if self._defer(v):
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
        out: list[Action] = []
        result = self.votes.add(v)
        if result is False:
            raise ValidationError(Reason.DUPLICATE, "vote already received")
        if isinstance(result, Evidence):
            out.append(EvidenceFound(result))      # and go on: the vote may count toward its value (votes.py)
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

    # -- the algorithm ---------------------------------------------------------------------------
    def _defer(self, msg: Proposal | Vote) -> bool:
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
        ident = (b"P" + msg.signature + msg.block.hash) if isinstance(msg, Proposal) else b"V" + msg.encoded
        if ident in self._next_seen:
            raise ValidationError(Reason.DUPLICATE, "next-height message already buffered")
        nxt = self.app.validator_set(self.height + 1)     # known a height ahead (set changes apply at h+2)
        val = nxt.by_address.get(sender)
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
        self._next_height_msgs.append(msg)
        return True

    def _evict_next_round(self, sender: bytes, round_: int) -> None:
        """Drop ``sender``'s buffered next-height messages of ``round_`` (a newer round replaces it)."""
        def of(msg: Proposal | Vote) -> bool:
            who = msg.proposer if isinstance(msg, Proposal) else msg.validator
            return who == sender and msg.round == round_
        self._next_height_msgs = [msg for msg in self._next_height_msgs if not of(msg)]
        for key in [k for k in self._next_per_key if k[0] == sender and k[1] == round_]:
            del self._next_per_key[key]
        self._next_rounds[sender].discard(round_)

    @property
    def buffered_next_height(self) -> tuple[Proposal | Vote, ...]:
        """The next height's messages received early (the service re-logs them after a height's WAL marker)."""
        return tuple(self._next_height_msgs)

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
            wait = max(0.0, self.prev_block_time + self.timeouts.block_interval - self.now)
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
            ts = max(int(self.now * 1000), int(self.prev_block_time * 1000))
            block, pol_round = self.app.propose(self.height, self.round, ts), -1
        assert self.signer is not None
        proposal = self.signer.sign_proposal(Proposal(self.height, self.round, pol_round, self.signer.address, block))
        if proposal is None:
            return
        self.proposals[self.round] = proposal
        self.votes.mark_seen(self.round, proposal.proposer)
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

        # [L49–L54] a decision in any round: proposal + > 2/3 precommits for it.
        for (rr, vtype), vs in list(self.votes.sets.items()):
            if vtype != VoteType.PRECOMMIT:
                continue
            value = vs.quorum_value()
            block = self._block_of_round(rr, value) if value is not None else None
            if block is not None and self._valid(block):
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
            if prop.pol_round == -1:               # [L22–L27]
                ok = self._valid(v) and (self.locked_round == -1 or self._is_locked_on(v))
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

        if (prop is not None and self.step >= Step.PREVOTE and r not in self._l36_done
                and prevotes.quorum_for(prop.block.hash) and self._valid(prop.block)):
            self._l36_done.add(r)                  # [L36–L43]
            if self.step == Step.PREVOTE:
                self.locked_value, self.locked_round = prop.block, r      # [L38–L39]
                self._vote(VoteType.PRECOMMIT, prop.block.hash, out)      # [L40]
                self.step = Step.PRECOMMIT                                # [L41]
            self.valid_value, self.valid_round = prop.block, r            # [L42–L43]
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

    def _block_of_round(self, round_: int, block_hash: bytes) -> Block | None:
        """The block ``block_hash`` if a proposal of ``round_`` (the first, or an equivocating proposer's
        other one) carried it."""
        p = self.proposals.get(round_)
        if p is not None and p.block.hash == block_hash:
            return p.block
        other = self._other_blocks.get(round_)
        return other if other is not None and other.hash == block_hash else None

    def _is_locked_on(self, v: Block) -> bool:
        return self.locked_value is not None and self.locked_value.hash == v.hash
