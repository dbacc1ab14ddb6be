"""Stake-weighted proposer rotation (SPEC §4), checked against CometBFT's proposer-priority behaviour."""
from __future__ import annotations

from collections import Counter

import pytest

from timecoin.consensus import proposer as prio
from timecoin.ledger.validators import Validator, ValidatorSet

PUB = b"\x02" + b"\x11" * 32


def _addr(name: str) -> bytes:
    return name.encode().ljust(20, b"\x00")


def _set(**powers: int) -> ValidatorSet:
    return ValidatorSet(Validator(_addr(n), PUB, p) for n, p in powers.items())


def _name(address: bytes) -> str:
    return address.rstrip(b"\x00").decode()


def _by_height(vs: ValidatorSet, heights: int) -> list[str]:
    """Round-0 proposers of consecutive heights (priorities carried height to height)."""
    p, out = prio.initial(vs), []
    for _ in range(heights):
        out.append(_name(prio.proposer_for(vs, p, 0)))
        p = prio.next_height(vs, p, vs)
    return out


def test_equal_powers_round_robin_in_address_order() -> None:
    vs = _set(d=1, b=1, a=1, c=1)
    assert _by_height(vs, 12) == list("abcd") * 3


def test_three_to_one_proposes_three_of_every_four() -> None:
    vs = _set(heavy=3, light=1)
    seq = _by_height(vs, 40)
    for i in range(0, 40, 4):
        assert Counter(seq[i:i + 4]) == Counter({"heavy": 3, "light": 1})


def test_cometbft_proposer_selection_vector() -> None:
    """CometBFT ``types/validator_set_test.go`` TestProposerSelection1: foo 1000, bar 300, baz 330, 99 steps."""
    text = ("foo baz foo bar foo foo baz foo bar foo foo baz foo foo bar foo baz foo foo bar foo foo baz foo bar foo "
            "foo baz foo bar foo foo baz foo foo bar foo baz foo foo bar foo baz foo foo bar foo baz foo foo bar foo "
            "baz foo foo foo baz bar foo foo foo baz foo bar foo foo baz foo bar foo foo baz foo bar foo foo baz foo "
            "bar foo foo baz foo foo bar foo baz foo foo bar foo baz foo foo bar foo baz foo foo")
    expected = text.split()
    vs = _set(foo=1000, bar=300, baz=330)
    assert _by_height(vs, 99) == expected
    # the same sequence by rounds within one height
    start = prio.initial(vs)
    assert [_name(prio.proposer_for(vs, start, r)) for r in range(99)] == expected


def test_proposer_frequency_is_proportional_to_power() -> None:
    vs = _set(a=5, b=3, c=2)
    assert Counter(_by_height(vs, 100)) == Counter({"a": 50, "b": 30, "c": 20})


def test_rotation_per_round() -> None:
    """A silent proposer is replaced by the next in line: round r of height h is round r-1 of height h+1,
    and the rounds of one height visit every equal-power validator."""
    vs = _set(a=1, b=1, c=1, d=1)
    p = prio.initial(vs)
    for _ in range(5):
        rounds = [prio.proposer_for(vs, p, r) for r in range(4)]
        assert sorted(rounds) == sorted(v.address for v in vs.validators)
        nxt = prio.next_height(vs, p, vs)
        for r in range(6):
            assert prio.proposer_for(vs, p, r + 1) == prio.proposer_for(vs, nxt, r)
        p = nxt


def test_increment_does_not_modify_its_input_and_checks_times() -> None:
    vs = _set(a=2, b=1)
    p = prio.initial(vs)
    before = dict(p)
    new, who = prio.increment(vs, p, 2)
    assert p == before and new != before
    assert who in vs
    with pytest.raises(ValueError):
        prio.increment(vs, p, 0)


def test_priorities_stay_centred_and_bounded() -> None:
    """CometBFT keeps the spread of priorities within 2 x total power and their sum near zero."""
    vs = _set(whale=1_000_000, a=1, b=7, c=300)
    p = prio.initial(vs)
    for _ in range(500):
        p = prio.next_height(vs, p, vs)
        assert max(p.values()) - min(p.values()) <= 2 * vs.total_power + vs.total_power
        assert abs(sum(p.values())) <= 2 * vs.total_power


def test_set_changes_drop_leavers_and_penalise_joiners() -> None:
    old = _set(a=1, b=1, c=1)
    new = _set(a=1, b=1, d=1)
    p = prio.initial(old)
    p = prio.next_height(old, p, old)
    carried = prio.next_height(old, p, new)
    assert set(carried) == {_addr("a"), _addr("b"), _addr("d")}
    assert carried[_addr("d")] == -(new.total_power + (new.total_power >> 3))
    # the joiner is not proposer right away: the others (who waited) go first
    assert prio.proposer_for(new, carried, 0) != _addr("d")
    seq = [_name(prio.proposer_for(new, carried, r)) for r in range(3)]
    assert seq.index("d") == 2


def test_encode_decode_round_trip() -> None:
    p = {_addr("b"): -5, _addr("a"): 2**63 - 1, _addr("c"): -(2**63), _addr("d"): 0}
    data = prio.encode(p)
    assert len(data) == 28 * 4
    assert prio.decode(data) == p
    # canonical: sorted by address, whatever the dict order
    assert data == prio.encode(dict(reversed(list(p.items()))))
    assert data[:20] == _addr("a") and data[20:28] == (2**63 - 1).to_bytes(8, "big", signed=True)
    assert prio.decode(b"") == {}
    with pytest.raises(ValueError):
        prio.decode(data[:-1])


def test_stored_priorities_reproduce_the_sequence() -> None:
    """A node that restarts from encoded priorities continues the exact same rotation."""
    vs = _set(foo=1000, bar=300, baz=330)
    p = prio.initial(vs)
    for _ in range(17):
        p = prio.next_height(vs, p, vs)
    restored = prio.decode(prio.encode(p))
    assert [prio.proposer_for(vs, restored, r) for r in range(10)] == [prio.proposer_for(vs, p, r) for r in range(10)]


# -- bit-exact integer arithmetic (stakes above 2^53) ----------------------------------------------------------
def test_average_is_big_int_euclidean_division_not_truncation() -> None:
    """CometBFT ``computeAvgProposerPriority``: ``big.Int.Div`` is Euclidean, -3 / 2 = -2 (Go's int64 / gives -1)."""
    vs = _set(a=1, b=1)
    # Rescale: diff 3 <= 2 x 2, nothing. Shift by avg -2: a -1, b 2. Increment: a 0, b 3 -> b, minus 2 -> 1.
    assert prio.increment(vs, {_addr("a"): -3, _addr("b"): 0}) == ({_addr("a"): 0, _addr("b"): 1}, _addr("b"))


def test_rescale_is_integer_and_truncates_toward_zero_with_large_stakes() -> None:
    """CometBFT ``RescalePriorities``: ratio = (diff + diffMax - 1) / diffMax, then p / ratio with Go's int64
    division (toward zero). Floats would round priorities above 2^53; floor division would differ for negatives."""
    power = 2**58 + 1
    vs = _set(a=power, b=power)
    a0, b0 = 2**61 + 1000, -(2**61 + 1001)
    diff, diff_max = a0 - b0, 2 * vs.total_power
    ratio = (diff + diff_max - 1) // diff_max
    assert ratio == 5
    a1, b1 = (2**61 + 1000) // 5, -((2**61 + 1001) // 5)             # toward zero on both sides
    assert int(a0 / ratio) != a1 and b0 // ratio != b1               # what floats / floor division would give
    avg = (a1 + b1) // 2
    a2, b2 = a1 - avg + power, b1 - avg + power
    assert a2 > b2
    expected = ({_addr("a"): a2 - vs.total_power, _addr("b"): b2}, _addr("a"))
    assert prio.increment(vs, {_addr("a"): a0, _addr("b"): b0}) == expected


def test_large_stakes_keep_proportions_and_stay_in_int64() -> None:
    big = 2**57 + 12345                                               # well above 2^53
    vs = _set(a=3 * big, b=big, c=7)
    p = prio.initial(vs)
    seq: list[str] = []
    for _ in range(400):
        seq.append(_name(prio.proposer_for(vs, p, 0)))
        p = prio.next_height(vs, p, vs)
        assert all(prio.INT64_MIN <= x <= prio.INT64_MAX for x in p.values())
        assert max(p.values()) - min(p.values()) <= 3 * vs.total_power
        assert prio.decode(prio.encode(p)) == p                     # fits the signed 64-bit encoding
    counts = Counter(seq)
    assert counts["a"] == 300 and counts["b"] == 100 and "c" not in counts


def test_total_voting_power_is_capped_like_cometbft() -> None:
    cap = prio.MAX_TOTAL_VOTING_POWER
    assert cap == (2**63 - 1) // 8
    ok = _set(a=cap - 5, b=5)
    assert prio.increment(ok, prio.initial(ok))[1] == _addr("a")
    over = _set(a=cap - 5, b=6)
    with pytest.raises(ValueError, match="exceeds the maximum"):
        prio.increment(over, prio.initial(over))
    with pytest.raises(ValueError, match="exceeds the maximum"):
        prio.adjust_for_set(prio.initial(ok), over)
