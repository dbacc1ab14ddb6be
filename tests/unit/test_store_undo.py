"""The undo record written by concatenation is byte for byte the codec's (rollback decodes it with the codec)."""
from __future__ import annotations

import random

import pytest

from timecoin.errors import StoreError
from timecoin.ledger.lthash import LTHASH_SIZE
from timecoin.store import UNDO, encode_undo


def _codec(height: int, prev: bytes, accounts: list[tuple[bytes, bytes | None]]) -> bytes:
    return UNDO.encode({"height": height, "prev_lthash": prev,
                        "accounts": [{"address": a, "present": s is not None, "account": s} for a, s in accounts]})


@pytest.mark.parametrize("seed", range(20))
def test_concatenated_undo_equals_the_codec(seed: int) -> None:
    rng = random.Random(seed)
    accounts: list[tuple[bytes, bytes | None]] = []
    for _ in range(rng.randrange(0, 40)):
        stored = None if rng.random() < 0.3 else rng.randbytes(rng.randrange(0, 120))
        accounts.append((rng.randbytes(20), stored))
    height, prev = rng.randrange(1, 1 << 63), rng.randbytes(LTHASH_SIZE)
    ours = encode_undo(height, prev, accounts)
    assert ours == _codec(height, prev, accounts)
    back = UNDO.decode(ours)
    assert back.height == height and [(a.address, a.account if a.present else None) for a in back.accounts] == accounts


def test_bad_field_sizes_are_refused_not_written() -> None:
    with pytest.raises(StoreError, match="LtHash"):
        encode_undo(1, b"short", [])
    with pytest.raises(StoreError, match="20 bytes"):
        encode_undo(1, bytes(LTHASH_SIZE), [(b"\x01" * 19, None)])
