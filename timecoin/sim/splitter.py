"""The lock-splitting adversary: it speaks for every Byzantine validator and, before GST, owns delivery.

Lock rules matter only when honest nodes disagree about what they saw: some saw a polka (> 2/3
prevotes for a value) and locked, others did not. This adversary manufactures exactly that. For every
(height, round) before GST it draws a :class:`RoundPlan`:

* ``audience``: the honest nodes allowed to see a polka of the round. Byzantine validators prevote the
  value each audience node was proposed, and nil to everyone else; a prevote for a value that would
  complete a quorum at a node outside the audience is held back while that node is in the round
  (released once it moved on: it then only serves as a proof of lock for later rounds);
* ``committer``: the one honest node (or none) allowed to see > 2/3 precommits for a value. Byzantine
  validators precommit the value to it and nil to the rest; precommits that would complete a quorum
  elsewhere are held until GST;
* ``drop_proposal``: an honest proposer's proposal is lost (a round with nothing to vote on);
* ``byz_proposal``: when a Byzantine validator proposes, a fresh real block (another timestamp or tx
  set: a second value) or a re-proposal of an older value that had a polka, with that round as proof.

Then it pushes a different value in a later round. A correct engine keeps its locks and no fork
follows; an engine with a broken lock rule, quorum or timeout rule is split. "Completes a quorum" is
asked of the node's own vote bookkeeping (a probe copy of the round's vote set), so a mutated quorum
rule is attacked on its own terms. After GST the network is honest and the coalition supports every
proposal (prevote the proposed value, precommit a value a node holds a polka for): that is when a
node with a broken lock rule finishes a conflicting decision, and when liveness is measured.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from timecoin.consensus.engine import Step
from timecoin.consensus.votes import HeightVotes
from timecoin.ledger.block import NIL_HASH, Block, Proposal, Vote, VoteType
from timecoin.ledger.state import build_block
from timecoin.sim.world import Node, candidates_for

if TYPE_CHECKING:
    from timecoin.sim.scheduler import World


@dataclass(frozen=True)
class RoundPlan:
    audience: frozenset[int]
    committer: int | None
    drop_proposal: bool
    byz_proposal: str            # "fresh" | "repropose"


def completes_quorum(votes: HeightVotes, vote: Vote) -> bool:
    """Would ``vote`` give this node > 2/3 for its value (it does not yet)? Asked of a probe copy of the
    round's vote set, through the node's own ``HeightVotes`` (so a patched quorum rule answers)."""
    key = (vote.round, vote.type)
    real = votes.sets.pop(key, None)
    seen = votes.seen.get(vote.round)
    probe = votes.get(vote.round, vote.type)
    if real is not None:
        for f in dataclasses.fields(real):          # containers copied two levels deep, the rest shared
            value = getattr(real, f.name)
            if isinstance(value, dict):
                value = {k: v.copy() if isinstance(v, dict | list | set) else v for k, v in value.items()}
            elif isinstance(value, list | set):
                value = value.copy()
            setattr(probe, f.name, value)
    votes.seen[vote.round] = set(seen or ())
    try:
        before = probe.quorum_for(vote.block_hash)
        votes.add(vote)
        return probe.quorum_for(vote.block_hash) and not before
    finally:
        if real is None:
            votes.sets.pop(key, None)
        else:
            votes.sets[key] = real
        if seen is None:
            votes.seen.pop(vote.round, None)
        else:
            votes.seen[vote.round] = seen


class LockSplitter:
    """See the module docstring. Byzantine nodes run no engine: this object is their whole behaviour."""

    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.plans: dict[tuple[int, int], RoundPlan] = {}
        self.sent: set[tuple[int, int, int, int, int]] = set()         # (byz, dst, h, r, type)
        self.proposed: set[tuple[int, int]] = set()
        self.prevoters: dict[tuple[int, int, bytes], set[bytes]] = {}    # (h, r, hash) -> validators
        self.blocks: dict[bytes, Block] = {}
        self.byz = [n for n in world.nodes if n.byzantine]
        self.honest_ids = [n.index for n in world.honest]

    # -- plans -----------------------------------------------------------------------------------
    def plan(self, height: int, round_: int) -> RoundPlan:
        """The round's plan, drawn on first use. Three kinds: ``random`` (any audience and committer),
        ``lock`` (a polka for a few, no decision: locks diverge) and ``commit`` (the honest nodes still
        free to prevote the round's value see its polka, one of them decides: a decision that nodes
        locked elsewhere did not see, which a broken lock rule then contradicts)."""
        key = (height, round_)
        p = self.plans.get(key)
        if p is None:
            rng, honest = self.rng, self.honest_ids
            kind = rng.choice(("random", "random", "lock", "commit", "commit"))
            committer = None
            if kind == "lock":
                audience = frozenset(rng.sample(honest, rng.randint(1, max(1, len(honest) - 1))))
            elif kind == "commit":
                audience = frozenset(self._free(height))
                committer = rng.choice(sorted(audience)) if audience else None
            else:
                audience = frozenset(i for i in honest if rng.random() < 0.5)
                if rng.random() < 0.6:
                    committer = rng.choice(sorted(audience) if audience and rng.random() < 0.8 else honest)
            p = self.plans[key] = RoundPlan(audience, committer, kind != "commit" and rng.random() < 0.15,
                                            rng.choice(("fresh", "fresh", "repropose")))
        return p

    def _free(self, height: int) -> list[int]:
        """Honest nodes at ``height`` holding no lock (they prevote any valid fresh value)."""
        return [n.index for n in self.world.honest
                if n.engine.height == height and n.engine.step != Step.COMMITTED
                and getattr(n.engine, "locked_round", -1) == -1]

    def before_gst(self) -> bool:
        return not self.world.after_gst()

    # -- seams -----------------------------------------------------------------------------------
    def signed(self, node: Node, msg: object) -> None:
        self._record(msg)

    def byzantine_out(self, node: Node, msg: object) -> list[tuple[int, object]] | None:
        return []                                   # no Byzantine engine runs; kept for completeness

    def intercept(self, src: Node, dst: Node, msg: object, delay: float) -> None:
        return None

    def holds(self, dst: Node, msg: object) -> bool:
        if not self.before_gst():
            return False
        e = dst.engine
        if isinstance(msg, Proposal):
            return (not self.world.by_address[msg.proposer].byzantine and msg.height == e.height
                    and self.plan(msg.height, msg.round).drop_proposal and msg.proposer != dst.address)
        if not isinstance(msg, Vote) or msg.block_hash == NIL_HASH or msg.height != e.height:
            return False
        if e.step == Step.COMMITTED:
            return False
        plan = self.plan(msg.height, msg.round)
        if msg.type == VoteType.PREVOTE:
            if dst.index in plan.audience or msg.round < e.round:
                return False
        elif dst.index == plan.committer:
            return False
        return completes_quorum(e.votes, msg)

    def observe(self, node: Node) -> None:
        """React to an honest node's new state: propose for a Byzantine proposer, send it Byzantine votes."""
        e = node.engine
        if e.step == Step.COMMITTED or not hasattr(e, "validators"):
            return
        h, r = e.height, e.round
        proposer = self.world.by_address.get(node.app.proposer(h, r))
        if proposer is not None and proposer.byzantine and (h, r) not in self.proposed:
            self.proposed.add((h, r))
            self._propose(node, proposer, h, r)
        prop = e.proposals.get(r)
        if prop is not None or e.step >= Step.PREVOTE:
            self._votes_to(node, VoteType.PREVOTE, self._prevote_value(node, prop))
        committer = self.before_gst() and self.plan(h, r).committer == node.index
        if e.step >= Step.PRECOMMIT or (committer and e.step >= Step.PREVOTE):
            self._votes_to(node, VoteType.PRECOMMIT, self._precommit_value(node, prop))

    # -- what the coalition says ------------------------------------------------------------------
    def _prevote_value(self, node: Node, prop: Proposal | None) -> bytes:
        if prop is None:
            return NIL_HASH
        if self.before_gst() and node.index not in self.plan(prop.height, prop.round).audience:
            return NIL_HASH
        return prop.block.hash

    def _precommit_value(self, node: Node, prop: Proposal | None) -> bytes:
        if prop is None:
            return NIL_HASH
        if self.before_gst():
            return prop.block.hash if self.plan(prop.height, prop.round).committer == node.index else NIL_HASH
        prevotes = node.engine.votes.sets.get((prop.round, VoteType.PREVOTE))
        return prop.block.hash if prevotes is not None and prevotes.quorum_for(prop.block.hash) else NIL_HASH

    def _votes_to(self, dst: Node, vtype: VoteType, value: bytes) -> None:
        e = dst.engine
        for b in self.byz:
            if b.address not in e.validators:
                continue
            key = (b.index, dst.index, e.height, e.round, int(vtype))
            if key in self.sent:
                continue
            self.sent.add(key)
            vote = Vote(vtype, e.height, e.round, value, b.address).signed(b.key, self.world.chain_id)
            self._record(vote)
            b.signed.append(vote)
            self.world.send(b, dst, vote, lossless=True)

    def _propose(self, view: Node, byz: Node, h: int, r: int) -> None:
        """A proposal by Byzantine ``byz`` for (h, r), built on an honest node's state (read only)."""
        p: Proposal | None = None
        mode = self.plan(h, r).byz_proposal if self.before_gst() else "repropose"
        if mode == "repropose":
            p = self._repropose(view, byz, h, r)
        if p is None:
            store, params = view.store, self.world.genesis.params
            parent = store.get_block(h - 1) if h > 1 else None
            prev_ts = parent.header.timestamp if parent is not None else self.world.genesis.genesis_time
            ts = max(int(self.world.now * 1000) + self.rng.randint(-10, 10), prev_ts + 1)
            block, _ = build_block(store, params, h, r, store.tip_hash(), ts, byz.address,
                                   candidates_for(store, self.rng.randint(0, 1)), max_txs=params.max_block_txs)
            p = Proposal(h, r, -1, byz.address, block).signed(byz.key, self.world.chain_id)
        self._record(p)
        byz.signed.append(p)
        for dst in self.world.honest:
            self.world.send(byz, dst, p, lossless=True)

    def _repropose(self, view: Node, byz: Node, h: int, r: int) -> Proposal | None:
        """Re-propose a value that had a polka in an older round (the newest such round, or a random one)."""
        vs = view.app.validator_set(h)
        options = []
        for (hh, rr, value), voters in self.prevoters.items():
            if (hh == h and rr < r and value in self.blocks and value != NIL_HASH
                    and vs.quorum(sum(vs.power_of(a) for a in voters))):
                options.append((rr, value))
        if not options:
            return None
        options.sort()
        rr, value = options[-1] if self.rng.random() < 0.5 else self.rng.choice(options)
        return Proposal(h, r, rr, byz.address, self.blocks[value]).signed(byz.key, self.world.chain_id)

    def _record(self, msg: object) -> None:
        if isinstance(msg, Proposal):
            self.blocks.setdefault(msg.block.hash, msg.block)
        elif isinstance(msg, Vote) and msg.type == VoteType.PREVOTE:
            self.prevoters.setdefault((msg.height, msg.round, msg.block_hash), set()).add(msg.validator)
