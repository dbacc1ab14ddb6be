"""Stake-weighted proposer rotation: CometBFT's proposer-priority algorithm (``types/validator_set.go``).

Each validator carries a priority. One increment adds every validator's power to its priority,
picks the highest priority (ties: lowest address) as proposer and subtracts the total power from it.
Priorities are re-centred around zero and their spread is capped at 2 × total power, as CometBFT does,
so a validator that joins cannot be starved or dominate. The priorities of height h+1 are those of
height h incremented once, adjusted for set changes (a joining validator starts at -1.125 × total,
CometBFT's penalty against join/leave cycling). Round r of a height uses the height's priorities
incremented r more times, so a silent proposer is replaced by the next one in stake order.

Bit-exact with CometBFT in integer arithmetic (no floats: powers above 2^53 would round):
* ``RescalePriorities``: ``ratio := (diff + diffMax - 1) / diffMax`` and ``p /= ratio`` with Go's int64
  division, which truncates toward zero (:func:`_go_div`);
* ``computeAvgProposerPriority``: the sum in ``big.Int`` and ``sum.Div(sum, n)``, which is *Euclidean*
  division (the remainder is never negative); for n > 0 that is floor division, Python's ``//``;
* ``safeAddClip`` / ``safeSubClip``: priorities are clipped to int64;
* ``MaxTotalVotingPower = MaxInt64 / 8``: a larger total is refused (ValueError), as CometBFT panics.
"""
from __future__ import annotations

from timecoin.ledger.validators import MAX_TOTAL_VOTING_POWER, ValidatorSet

Priorities = dict[bytes, int]

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
PRIORITY_WINDOW_SIZE_FACTOR = 2               # CometBFT types.PriorityWindowSizeFactor


def _go_div(a: int, b: int) -> int:
    """Go's int64 ``a / b``: the quotient truncated toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _clip(x: int) -> int:
    return INT64_MAX if x > INT64_MAX else INT64_MIN if x < INT64_MIN else x


def check_total_power(vset: ValidatorSet) -> int:
    """The set's total power; ValueError above CometBFT's MaxTotalVotingPower (int64 max / 8)."""
    total = vset.total_power
    if total > MAX_TOTAL_VOTING_POWER:
        raise ValueError(f"total voting power {total} exceeds the maximum {MAX_TOTAL_VOTING_POWER} "
                         "(int64 max / 8, as CometBFT)")
    return total


def _rescale(prio: Priorities, total: int) -> None:
    """CometBFT ``RescalePriorities(PriorityWindowSizeFactor * total)``."""
    if not prio:
        return
    diff_max = PRIORITY_WINDOW_SIZE_FACTOR * total
    if diff_max <= 0:
        return
    diff = max(prio.values()) - min(prio.values())
    if diff > diff_max:
        ratio = (diff + diff_max - 1) // diff_max       # both positive: Go's / and // agree (ceil(diff/diffMax))
        for a in prio:
            prio[a] = _go_div(prio[a], ratio)


def _center(prio: Priorities) -> None:
    """CometBFT ``shiftByAvgProposerPriority``; the average as ``big.Int.Div`` (Euclidean = floor for n > 0)."""
    if not prio:
        return
    avg = sum(prio.values()) // len(prio)
    for a in prio:
        prio[a] = _clip(prio[a] - avg)


def increment(vset: ValidatorSet, prio: Priorities, times: int = 1) -> tuple[Priorities, bytes]:
    """Return (new priorities, proposer of the last increment); ``prio`` is not modified."""
    if times < 1:
        raise ValueError("times must be >= 1")
    p = dict(prio)
    total = check_total_power(vset)
    _rescale(p, total)
    _center(p)
    proposer = b""
    for _ in range(times):
        for v in vset.validators:
            p[v.address] = _clip(p[v.address] + v.power)
        proposer = max(vset.validators, key=lambda v: (p[v.address], _neg(v.address))).address
        p[proposer] = _clip(p[proposer] - total)
    return p, proposer


def _neg(address: bytes) -> bytes:
    """Sort key making the lowest address win ties under max()."""
    return bytes(255 - b for b in address)


def initial(vset: ValidatorSet) -> Priorities:
    """Priorities of a brand-new set (genesis): all zero."""
    return {v.address: 0 for v in vset.validators}


def adjust_for_set(prev: Priorities, new_set: ValidatorSet) -> Priorities:
    """Carry priorities into a changed set: leavers dropped, joiners at -1.125 × total power."""
    check_total_power(new_set)
    joined_prio = -(new_set.total_power + (new_set.total_power >> 3))
    return {v.address: prev.get(v.address, joined_prio) for v in new_set.validators}


def proposer_for(vset: ValidatorSet, height_prio: Priorities, round_: int) -> bytes:
    """The proposer of a round, given the priorities the height started with."""
    return increment(vset, height_prio, round_ + 1)[1]


def next_height(vset: ValidatorSet, height_prio: Priorities, next_set: ValidatorSet) -> Priorities:
    """Priorities of the next height: this height's incremented once, carried into the next set."""
    p, _ = increment(vset, height_prio, 1)
    return adjust_for_set(p, next_set)


def encode(prio: Priorities) -> bytes:
    """Canonical bytes: sorted (address, signed 64-bit priority) pairs."""
    return b"".join(a + v.to_bytes(8, "big", signed=True) for a, v in sorted(prio.items()))


def decode(data: bytes) -> Priorities:
    if len(data) % 28:
        raise ValueError("priorities are 28-byte records")
    return {data[i:i + 20]: int.from_bytes(data[i + 20:i + 28], "big", signed=True)
            for i in range(0, len(data), 28)}
