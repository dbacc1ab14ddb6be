"""Drive one real consensus engine by hand, at height 1, with proposals and votes signed by the others.

The engine under test is a real validator of a :class:`tests.simnet.SimNet` (real keys, chain app,
double-sign guard); nothing is delivered to it except what a test hands it, and time only moves when a
test says so. Timeouts are fired by hand (:meth:`EngineDriver.timeout`): the engine acts on a timeout of
its current round and step whether or not it scheduled one, as Algorithm 1's ``OnTimeout*`` functions do.
"""
from __future__ import annotations

from collections.abc import Iterable

from tests.simnet import SimNet, SimNode
from timecoin.consensus import engine as eng
from timecoin.ledger.block import NIL_HASH, Block, Proposal, Vote, VoteType

PRE, PC = VoteType.PREVOTE, VoteType.PRECOMMIT
NIL = NIL_HASH


class EngineDriver:
    """One engine under test (``me``) among ``n`` validators of the given powers.

    ``me`` is, unless given, the first validator that proposes none of rounds ``0 .. free_rounds - 1`` of
    height 1, so every proposal of those rounds comes from someone else.
    """

    def __init__(self, n: int = 4, powers: list[int] | None = None, *, free_rounds: int = 3,
                 me: int | None = None) -> None:
        self.net = SimNet(n, powers=powers)
        app = self.net.nodes[0].app
        self.proposers = [app.proposer(1, r) for r in range(2 * n + 8)]
        if me is None:
            me = next(x.index for x in self.net.nodes if x.address not in self.proposers[:free_rounds])
        self.me = self.net.nodes[me]
        self.engine = self.me.engine
        self.others = [x for x in self.net.nodes if x is not self.me]
        self.t = 0.0
        self.actions = self.engine.start_height(1, 0.0, 0.0)

    # -- building messages -----------------------------------------------------------------------
    def block(self, round_: int, ts_ms: int | None = None) -> Block:
        """A fresh block of height 1 built by the proposer of ``round_`` (distinct per round and time)."""
        node = self.net.node_of(self.proposers[round_])
        # By default stamped at the driver's clock (+ round, so blocks differ): timely when delivered soon after.
        return node.app.propose(1, round_, ts_ms if ts_ms is not None else int(self.t * 1000) + 1 + round_)

    def proposal(self, round_: int, pol_round: int = -1, block: Block | None = None) -> Proposal:
        node = self.net.node_of(self.proposers[round_])
        block = block or self.block(round_)
        return Proposal(1, round_, pol_round, node.address, block).signed(node.key, self.net.chain_id)

    def vote(self, node: SimNode, vtype: VoteType, round_: int, block_hash: bytes) -> Vote:
        return Vote(vtype, 1, round_, block_hash, node.address).signed(node.key, self.net.chain_id)

    def mine(self, vtype: VoteType, round_: int, block_hash: bytes) -> Vote:
        """The vote the engine under test signs for (type, round, hash): what a test expects it to send."""
        return self.vote(self.me, vtype, round_, block_hash)

    # -- inputs ----------------------------------------------------------------------------------
    def _tick(self) -> float:
        self.t += 0.001
        return self.t

    def propose(self, p: Proposal) -> list[eng.Action]:
        return self.engine.on_proposal(p, self._tick())

    def votes(self, vtype: VoteType, round_: int, block_hash: bytes, voters: Iterable[SimNode]) -> list[eng.Action]:
        """Deliver one vote per voter; all the engine's actions, in order."""
        out: list[eng.Action] = []
        for x in voters:
            out += self.engine.on_vote(self.vote(x, vtype, round_, block_hash), self._tick())
        return out

    def timeout(self, kind: eng.TimeoutKind, round_: int | None = None) -> list[eng.Action]:
        return self.engine.on_timeout(1, self.engine.round if round_ is None else round_, kind, self._tick())

    def next_round(self) -> list[eng.Action]:
        """End the current round by its timeouts [L57–L67]: nil prevote (if still proposing), nil precommit
        (if still prevoting), then the next round."""
        r = self.engine.round
        out = self.timeout(eng.TimeoutKind.PROPOSE) + self.timeout(eng.TimeoutKind.PREVOTE)
        out += self.timeout(eng.TimeoutKind.PRECOMMIT)
        assert self.engine.round == r + 1
        return out

    def go_to_round(self, round_: int) -> None:
        while self.engine.round < round_:
            self.next_round()

    # -- outputs ---------------------------------------------------------------------------------
    @staticmethod
    def my_votes(actions: list[eng.Action]) -> list[Vote]:
        return [a.vote for a in actions if isinstance(a, eng.BroadcastVote)]

    @staticmethod
    def commits(actions: list[eng.Action]) -> list[eng.CommitBlock]:
        return [a for a in actions if isinstance(a, eng.CommitBlock)]

    @staticmethod
    def proposals(actions: list[eng.Action]) -> list[Proposal]:
        return [a.proposal for a in actions if isinstance(a, eng.BroadcastProposal)]

    @property
    def locked(self) -> tuple[bytes | None, int]:
        """(hash of lockedValue or None, lockedRound)."""
        e = self.engine
        return (e.locked_value.hash if e.locked_value is not None else None), e.locked_round

    @property
    def valid(self) -> tuple[bytes | None, int]:
        """(hash of validValue or None, validRound)."""
        e = self.engine
        return (e.valid_value.hash if e.valid_value is not None else None), e.valid_round
