"""The mempool's integer fee-rate key orders exactly as the fee per byte (a Fraction) does."""
from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from timecoin.crypto import PrivateKey
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.mempool import MAX_TX_SIZE, RATE_SCALE, _Entry

KEY = PrivateKey(b"\x05" * 32)


def test_the_largest_and_smallest_txs_fit_the_scale() -> None:
    big = Transaction.create(KEY, TxKind.TRANSFER, "c" * 255, 0, 1, 1, b"\x01" * 20)
    small = Transaction.create(KEY, TxKind.TRANSFER, "", 0, 1, 1, b"\x01" * 20)
    assert big.size == MAX_TX_SIZE
    assert RATE_SCALE % big.size == 0 and RATE_SCALE % small.size == 0


@given(st.integers(0, 2**64 - 1), st.integers(143, MAX_TX_SIZE), st.integers(0, 2**64 - 1),
       st.integers(143, MAX_TX_SIZE))
def test_integer_keys_order_as_fractions(fee_a: int, size_a: int, fee_b: int, size_b: int) -> None:
    key_a, key_b = fee_a * (RATE_SCALE // size_a), fee_b * (RATE_SCALE // size_b)
    a, b = Fraction(fee_a, size_a), Fraction(fee_b, size_b)
    assert (key_a < key_b) == (a < b) and (key_a == key_b) == (a == b)


def test_an_entry_key_is_its_fee_rate_scaled() -> None:
    tx = Transaction.create(KEY, TxKind.TRANSFER, "chain", 0, 999, 1, b"\x01" * 20)
    assert Fraction(_Entry(tx, 0).rate, RATE_SCALE) == Fraction(tx.fee, tx.size)
