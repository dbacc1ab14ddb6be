"""Engine mutants for the adversarial scheduler's kill test: each one changed line of the real engine.

A mutant is made by rewriting the source of the real method (``inspect.getsource``) with exactly one
replacement and compiling the copy in the engine's module namespace, so the copy tracks the engine; if
the line it mutates is gone, :func:`mutate` raises instead of silently testing the unmutated engine.
"""
from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable
from typing import Any

from timecoin.consensus import engine as eng
from timecoin.consensus import votes
from timecoin.ledger.block import VoteType


def mutate(cls: type, name: str, old: str, new: str) -> Callable[..., Any]:
    """A copy of ``cls.name`` with the one occurrence of ``old`` replaced by ``new``."""
    src = textwrap.dedent(inspect.getsource(getattr(cls, name)))
    if src.count(old) != 1:
        raise AssertionError(f"{cls.__name__}.{name}: expected exactly one {old!r}")
    module = inspect.getmodule(cls)
    namespace: dict[str, Any] = dict(vars(module))
    exec(compile(src.replace(old, new), f"<mutant {name}>", "exec"), namespace)  # noqa: S102
    return namespace[name]


def lock_ignored_fresh(mp: Any) -> None:
    """(1) [L22–L27] prevote a fresh proposal whatever the lock."""
    mp.setattr(eng.Engine, "_step_once", mutate(
        eng.Engine, "_step_once",
        "ok = self._valid(v) and (self.locked_round == -1 or self._is_locked_on(v))", "ok = self._valid(v)"))


def old_pol_accepted(mp: Any) -> None:
    """(2) [L28–L33] a proof of lock one round older than the lock unlocks (needs lockedRound <= vr)."""
    mp.setattr(eng.Engine, "_step_once", mutate(
        eng.Engine, "_step_once", "self.locked_round <= vr or", "self.locked_round <= vr + 1 or"))


def quorum_two_thirds(mp: Any) -> None:
    """(3) >= 2/3 instead of > 2/3 for every vote quorum."""
    mp.setattr(votes, "has_quorum", lambda power, total: 3 * power >= 2 * total)


def precommit_on_prevote_timeout(mp: Any) -> None:
    """(4) [L61–L64] on the prevote timeout, precommit the proposal instead of nil."""
    mp.setattr(eng.Engine, "on_timeout", mutate(
        eng.Engine, "on_timeout", "self._vote(VoteType.PRECOMMIT, NIL_HASH, out)",
        "self._vote(VoteType.PRECOMMIT, self.proposals[round_].block.hash if round_ in self.proposals "
        "else NIL_HASH, out)"))


def lock_ignored_pol(mp: Any) -> None:
    """(5) [L28–L33] any proof of lock unlocks, whatever round it is from."""
    mp.setattr(eng.Engine, "_step_once", mutate(
        eng.Engine, "_step_once", "(self.locked_round <= vr or self._is_locked_on(v))", "True"))


def count_not_stake(mp: Any) -> None:
    """(6) quorums by number of validators, not by their power."""
    def get(self: votes.HeightVotes, round_: int, vtype: VoteType) -> votes.VoteSet:
        key = (round_, vtype)
        vs = self.sets.get(key)
        if vs is None:
            vs = self.sets[key] = votes.VoteSet(len(self.validators))
        return vs

    def add(self: votes.HeightVotes, vote: Any) -> Any:
        result = self.get(vote.round, vote.type).add(vote, 1 if vote.validator in self.validators else 0)
        if result is True:
            self.mark_seen(vote.round, vote.validator)
        return result

    def one_third_seen(self: votes.HeightVotes, round_: int) -> bool:
        return votes.has_one_third(len(self.seen.get(round_, ())), len(self.validators))

    mp.setattr(votes.HeightVotes, "get", get)
    mp.setattr(votes.HeightVotes, "add", add)
    mp.setattr(votes.HeightVotes, "one_third_seen", one_third_seen)

