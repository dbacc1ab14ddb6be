"""LtHash, the homomorphic state accumulator (SPEC §3): its incremental updates must equal a full
recomputation, whatever the order, or two nodes would disagree on the state root."""
from __future__ import annotations

import hashlib
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timecoin.ledger import lthash as lt

elements = st.lists(st.binary(min_size=1, max_size=64), min_size=0, max_size=12)


def _lanes(value: int) -> list[int]:
    return list(struct.unpack("<1024H", value.to_bytes(lt.LTHASH_SIZE, "little")))


def _from_lanes(lanes: list[int]) -> int:
    return int.from_bytes(struct.pack("<1024H", *lanes), "little")


def _reference(items: list[bytes]) -> bytes:
    """The definition, lane by lane: sum mod 2**16 of SHAKE-256 expansions."""
    acc = [0] * lt.LANES
    for item in items:
        for i, lane in enumerate(struct.unpack("<1024H", hashlib.shake_256(item).digest(lt.LTHASH_SIZE))):
            acc[i] = (acc[i] + lane) & 0xFFFF
    return struct.pack("<1024H", *acc)


def _of(items: list[bytes]) -> lt.LtHash:
    h = lt.LtHash()
    for item in items:
        h.add(item)
    return h


def test_empty_accumulator() -> None:
    h = lt.LtHash()
    assert h.to_bytes() == lt.EMPTY == bytes(2048)
    assert h.digest() == hashlib.sha256(bytes(2048)).digest()


def test_wrong_size_refused() -> None:
    with pytest.raises(ValueError):
        lt.LtHash(bytes(2047))


@settings(max_examples=25, deadline=None)
@given(elements)
def test_matches_lane_by_lane_definition(items: list[bytes]) -> None:
    assert _of(items).to_bytes() == _reference(items)


@settings(max_examples=40, deadline=None)
@given(elements, st.randoms(use_true_random=False))
def test_order_independent(items: list[bytes], rnd: random.Random) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert _of(items).to_bytes() == _of(shuffled).to_bytes()


@settings(max_examples=40, deadline=None)
@given(elements, st.binary(min_size=1, max_size=64))
def test_add_then_remove_restores(items: list[bytes], extra: bytes) -> None:
    h = _of(items)
    before = h.to_bytes()
    h.add(extra)
    assert h.to_bytes() != before
    h.remove(extra)
    assert h.to_bytes() == before


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=32), min_size=1, max_size=10, unique=True),
       st.data())
def test_incremental_updates_equal_recomputation(items: list[bytes], data: st.DataObject) -> None:
    """Replace some elements (remove old leaf, add new leaf) as a block does; compare with a rebuild."""
    h = _of(items)
    final = list(items)
    for i in data.draw(st.lists(st.integers(0, len(items) - 1), max_size=5)):
        new = final[i] + b"'"
        h.remove(final[i])
        h.add(new)
        final[i] = new
    assert h.to_bytes() == _of(final).to_bytes() == _reference(final)
    assert h.digest() == hashlib.sha256(_reference(final)).digest()


def test_remove_from_empty_wraps_and_comes_back() -> None:
    h = lt.LtHash()
    h.remove(b"a")
    assert h.to_bytes() != lt.EMPTY
    h.add(b"a")
    assert h.to_bytes() == lt.EMPTY


def test_multiset_semantics() -> None:
    """Adding an element twice differs from adding it once (a multiset, not a set)."""
    assert _of([b"x", b"x"]).to_bytes() != _of([b"x"]).to_bytes()
    assert _of([b"x", b"y"]).to_bytes() != _of([b"x", b"z"]).to_bytes()


def test_swar_carries_stay_in_their_lane() -> None:
    """0xFFFF + 1 wraps to 0 in every lane without carrying into the next; 0 - 1 borrows nothing."""
    ones = _from_lanes([1] * lt.LANES)
    full = _from_lanes([0xFFFF] * lt.LANES)
    assert lt.lane_add(full, ones) == 0
    assert lt.lane_sub(0, ones) == full
    rnd = random.Random(7)
    for _ in range(20):
        a = [rnd.randrange(65536) for _ in range(lt.LANES)]
        b = [rnd.choice((0, 1, 0x7FFF, 0x8000, 0xFFFF, rnd.randrange(65536))) for _ in range(lt.LANES)]
        va, vb = _from_lanes(a), _from_lanes(b)
        assert _lanes(lt.lane_add(va, vb)) == [(x + y) & 0xFFFF for x, y in zip(a, b, strict=True)]
        assert _lanes(lt.lane_sub(va, vb)) == [(x - y) & 0xFFFF for x, y in zip(a, b, strict=True)]


def test_bytes_round_trip() -> None:
    h = _of([b"a", b"b"])
    assert lt.LtHash(h.to_bytes()).to_bytes() == h.to_bytes()
