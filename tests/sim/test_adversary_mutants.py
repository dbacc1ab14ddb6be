"""The adversarial scheduler alone kills engine mutants (issue 10): each mutant is one changed line of the
real engine, applied with ``monkeypatch``; on its seeds the mutant violates an invariant and the real
engine does not. The seeds were found by running the scheduler (``python -m timecoin.sim.adversary``
over the mutant); none is a hand-built scenario.

A mutant is made by rewriting the source of the real method (``inspect.getsource``) with exactly one
replacement and compiling the copy in the engine's module namespace: the copy tracks the engine, and if
the line it mutates is gone :func:`mutate` fails instead of silently testing the unmutated engine.
"""
from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from timecoin.consensus import engine as eng
from timecoin.consensus import votes
from timecoin.ledger.block import Vote, VoteType
from timecoin.sim.adversary import SimConfig, run_seed


def mutate(cls: type, name: str, old: str, new: str) -> Callable[..., Any]:
    """A copy of ``cls.name`` with the one occurrence of ``old`` replaced by ``new``."""
    src = textwrap.dedent(inspect.getsource(getattr(cls, name)))
    assert src.count(old) == 1, f"{cls.__name__}.{name}: expected exactly one {old!r}"
    namespace: dict[str, Any] = dict(vars(inspect.getmodule(cls)))
    exec(compile(src.replace(old, new), f"<mutant of {name}>", "exec"), namespace)
    return namespace[name]  # type: ignore[no-any-return]


def lock_ignored_fresh(mp: pytest.MonkeyPatch) -> None:
    """(1) [L22–L27] prevote a fresh proposal whatever the lock."""
    mp.setattr(eng.Engine, "_step_once", mutate(
        eng.Engine, "_step_once",
        "(self.locked_round == -1 or self._is_locked_on(v))", "True"))


def old_pol_accepted(mp: pytest.MonkeyPatch) -> None:
    """(2) [L28–L33] a proof of lock one round older than the lock unlocks (L28 needs lockedRound <= vr)."""
    mp.setattr(eng.Engine, "_step_once", mutate(
        eng.Engine, "_step_once", "self.locked_round <= vr or", "self.locked_round <= vr + 1 or"))


def quorum_two_thirds(mp: pytest.MonkeyPatch) -> None:
    """(3) >= 2/3 instead of > 2/3 for every vote quorum (with 3 equal validators, 2 of 3 is a quorum)."""
    mp.setattr(votes, "has_quorum", lambda power, total: 3 * power >= 2 * total)


def precommit_on_prevote_timeout(mp: pytest.MonkeyPatch) -> None:
    """(4) [L61–L64] on the prevote timeout, precommit the proposal instead of nil."""
    mp.setattr(eng.Engine, "on_timeout", mutate(
        eng.Engine, "on_timeout", "self._vote(VoteType.PRECOMMIT, NIL_HASH, out)",
        "self._vote(VoteType.PRECOMMIT, self.proposals[round_].block.hash if round_ in self.proposals "
        "else NIL_HASH, out)"))


def lock_ignored_pol(mp: pytest.MonkeyPatch) -> None:
    """(5) [L28–L33] any proof of lock unlocks, whatever its round."""
    mp.setattr(eng.Engine, "_step_once", mutate(
        eng.Engine, "_step_once", "(self.locked_round <= vr or self._is_locked_on(v))", "True"))


def count_not_stake(mp: pytest.MonkeyPatch) -> None:
    """(6) quorums by number of validators, not by their power."""
    def get(self: votes.HeightVotes, round_: int, vtype: VoteType) -> votes.VoteSet:
        vs = self.sets.get((round_, vtype))
        if vs is None:
            vs = self.sets[(round_, vtype)] = votes.VoteSet(len(self.validators))
        return vs

    def add(self: votes.HeightVotes, vote: Vote) -> Any:
        result = self.get(vote.round, vote.type).add(vote, 1 if vote.validator in self.validators else 0)
        if result is True:
            self.mark_seen(vote.round, vote.validator)
        return result

    def one_third_seen(self: votes.HeightVotes, round_: int) -> bool:
        return votes.has_one_third(len(self.seen.get(round_, ())), len(self.validators))

    mp.setattr(votes.HeightVotes, "get", get)
    mp.setattr(votes.HeightVotes, "add", add)
    mp.setattr(votes.HeightVotes, "one_third_seen", one_third_seen)


FOUR = SimConfig(4, 1, 3)
THREE = SimConfig(3, 1, 3)                            # 1/3 exactly: real quorum is all 3, so still safe
STAKED = SimConfig(4, 2, 3, powers=(3, 3, 1, 1))      # 2 of 4 validators Byzantine, 2/8 of the power

# mutant, config, seeds (found by the scheduler), the violation kind the mutant must show on each
MUTANTS = [
    (lock_ignored_fresh, FOUR, (3, 4, 12)),
    (old_pol_accepted, FOUR, (32, 117, 186)),
    (quorum_two_thirds, THREE, (3, 4, 5)),
    (precommit_on_prevote_timeout, FOUR, (3, 10, 13)),
    (lock_ignored_pol, FOUR, (193, 197, 235)),
    (count_not_stake, STAKED, (3, 4, 8)),
]


@pytest.mark.parametrize(("mutant", "config", "seeds"), MUTANTS, ids=[m[0].__name__ for m in MUTANTS])
def test_scheduler_kills_mutant(mutant: Callable[[pytest.MonkeyPatch], None], config: SimConfig,
                                seeds: tuple[int, ...]) -> None:
    real = {seed: run_seed(seed, config) for seed in seeds}
    assert all(r.ok for r in real.values()), {s: r.violations for s, r in real.items() if not r.ok}
    with pytest.MonkeyPatch.context() as mp:
        mutant(mp)
        mutated = {seed: run_seed(seed, config) for seed in seeds}
    # every seed forks the mutant: two honest nodes commit different blocks at one height
    kinds = {seed: sorted({v.kind for v in r.violations}) for seed, r in mutated.items()}
    assert all("agreement" in k for k in kinds.values()), kinds


def test_mutate_refuses_a_line_that_is_not_there() -> None:
    with pytest.raises(AssertionError):
        mutate(eng.Engine, "_step_once", "no such line", "x")
