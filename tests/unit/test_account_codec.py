"""Account's struct fast paths agree with its construct codec (ledger/account.py): same bytes, same refusals."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timecoin.errors import DecodeError
from timecoin.ledger.account import ACCOUNT, Account

U64 = st.integers(0, 2**64 - 1)
ACCOUNTS = st.builds(Account, U64, U64, U64, st.lists(st.tuples(U64, U64), max_size=4).map(tuple),
                     st.sampled_from([b"", b"\x02" * 33]), st.booleans())


def reference(data: bytes) -> Account | None:
    try:
        c = ACCOUNT.decode(data)
    except DecodeError:
        return None
    pubkey = c.pubkey.encode("latin-1")
    if len(pubkey) not in (0, 33):
        return None
    return Account(c.balance, c.nonce, c.stake, tuple((u.amount, u.release_height) for u in c.unbonding),
                   pubkey, c.jailed)


@settings(max_examples=200, deadline=None)
@given(ACCOUNTS)
def test_encoding_is_constructs(account: Account) -> None:
    data = account.encoded
    assert data == ACCOUNT.compiled.build({
        "balance": account.balance, "nonce": account.nonce, "stake": account.stake,
        "unbonding": [{"amount": a, "release_height": h} for a, h in account.unbonding],
        "pubkey": account.pubkey.decode("latin-1"), "jailed": account.jailed})
    assert Account.decode(data) == account
    assert Account.decode(data).encoded == data


@settings(max_examples=300, deadline=None)
@given(ACCOUNTS, st.data())
def test_mutated_bytes_decode_as_the_guarded_codec_says(account: Account, data: st.DataObject) -> None:
    raw = bytearray(account.encoded)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "cut", "add"]))
        if op == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "cut" and raw:
            del raw[data.draw(st.integers(0, len(raw) - 1)):]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=3))
    expected = reference(bytes(raw))
    if expected is None:
        with pytest.raises(DecodeError):
            Account.decode(bytes(raw))
    else:
        assert Account.decode(bytes(raw)) == expected


def test_a_non_canonical_flag_byte_is_refused() -> None:
    raw = bytearray(Account(5, 1).encoded)
    raw[-1] = 2
    with pytest.raises(DecodeError):
        Account.decode(bytes(raw))


def test_an_out_of_range_field_still_fails_to_encode() -> None:
    with pytest.raises(ValueError):
        _ = Account(balance=2**64).encoded


@settings(max_examples=200, deadline=None)
@given(st.one_of(ACCOUNTS, st.just(Account()), st.builds(Account, st.integers(0, 1), st.integers(0, 1))))
def test_is_empty_means_equal_to_the_empty_account(account: Account) -> None:
    from timecoin.ledger.account import EMPTY_ACCOUNT
    assert account.is_empty == (account == EMPTY_ACCOUNT)
