"""What the ledger's fast paths rely on (issue 15): apply_tx is atomic, the overlay reads its base once,
and a decoded block's txs carry their own canonical bytes."""
from __future__ import annotations

import pytest

from timecoin.crypto import PrivateKey
from timecoin.errors import DecodeError, ValidationError
from timecoin.ledger.account import Account
from timecoin.ledger.block import Block, Header, tx_root
from timecoin.ledger.params import ChainParams
from timecoin.ledger.state import U64_MAX, MemoryState, Overlay, apply_tx
from timecoin.ledger.tx import ZERO_ADDRESS, Transaction, TxKind

CHAIN = "timecoin-fast"
A, B = PrivateKey(b"\x01" * 32), PrivateKey(b"\x02" * 32)


class CountingState(MemoryState):
    def __init__(self, accounts: dict[bytes, Account]) -> None:
        super().__init__(accounts)
        self.reads = 0

    def get_account(self, address: bytes) -> Account | None:
        self.reads += 1
        return super().get_account(address)


def _params() -> ChainParams:
    return ChainParams(chain_id=CHAIN)


@pytest.mark.parametrize("make", [
    lambda: Transaction.create(A, TxKind.TRANSFER, CHAIN, 0, 1000, 10**30 % U64_MAX, B.address),    # funds
    lambda: Transaction.create(A, TxKind.TRANSFER, CHAIN, 5, 1000, 1, B.address),                    # nonce
    lambda: Transaction.create(A, TxKind.TRANSFER, CHAIN, 0, 1000, 10, B.address),                   # overflow
    lambda: Transaction.create(A, TxKind.UNSTAKE, CHAIN, 0, 1000, 10),                                # stake
])
def test_a_refused_tx_leaves_the_overlay_unchanged(make) -> None:  # noqa: ANN001
    # B holds the largest balance, so crediting it overflows after A's debit was computed: still no write.
    state = MemoryState({A.address: Account(balance=10**12), B.address: Account(balance=U64_MAX)})
    overlay = Overlay(state)
    overlay.set_account(A.address, Account(balance=10**12))
    before = dict(overlay.changes)
    with pytest.raises(ValidationError):
        apply_tx(overlay, _params(), make(), 1)
    assert overlay.changes == before


def test_the_overlay_reads_each_base_account_once() -> None:
    state = CountingState({A.address: Account(balance=10**12)})
    overlay = Overlay(state)
    for _ in range(3):
        assert overlay.get_account(A.address).balance == 10**12
        assert overlay.base_account(B.address) is None
    assert state.reads == 2


def test_decoded_block_txs_hold_their_slice_of_the_block() -> None:
    txs = [Transaction.create(A, TxKind.TRANSFER, CHAIN, 0, 1000, 5, B.address),
           Transaction.create(B, TxKind.STAKE, "chaîne-ü", 3, 2000, 7, ZERO_ADDRESS),
           Transaction.create(A, TxKind.TRANSFER, CHAIN, 1, 1000, 5, B.address)]
    header = Header(1, 0, bytes(32), 1, A.address, tx_root(txs), bytes(32), bytes(32), bytes(32))
    decoded = Block.decode(Block(header, tuple(txs)).encoded)
    for tx, original in zip(decoded.txs, txs, strict=True):
        assert tx.__dict__["encoded"] == original.encoded
        assert tx.id == original.id


def test_validator_set_decode_is_cached_by_bytes_and_still_checks_them() -> None:
    from timecoin.ledger.validators import DECODED_CACHE, Validator, ValidatorSet
    vs = ValidatorSet([Validator(A.address, A.public_key, 10), Validator(B.address, B.public_key, 20)])
    raw = vs.encode()
    first = ValidatorSet.decode(raw)
    assert first == vs and ValidatorSet.decode(raw) is first
    with pytest.raises(DecodeError):                # trailing bytes: refused, whatever was cached
        ValidatorSet.decode(raw + b"\x00")
    for power in range(1, DECODED_CACHE + 2):      # the cache stays bounded
        ValidatorSet.decode(ValidatorSet([Validator(A.address, A.public_key, power)]).encode())
    assert ValidatorSet.decode(raw) == vs
