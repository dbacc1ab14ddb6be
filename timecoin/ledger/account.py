"""Accounts: ``address → (balance, nonce, stake, unbonding[])`` plus the signer's public key.

The public key is recorded the first time an account signs a transaction (or at genesis for
stakers) so that a validator's votes can be verified from state alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from construct import Flag, Int8ub, Int16ub, Int64ub, PascalString, PrefixedArray, Struct

from timecoin.errors import DecodeError
from timecoin.wire.messages import Codec

AccountLayout = Struct(
    "balance" / Int64ub,
    "nonce" / Int64ub,
    "stake" / Int64ub,
    "unbonding" / PrefixedArray(Int16ub, Struct("amount" / Int64ub, "release_height" / Int64ub)),
    "pubkey" / PascalString(Int8ub, "latin-1"),  # b"" until the account signs; else 33 bytes
    "jailed" / Flag,
)
ACCOUNT = Codec("Account", AccountLayout)


@dataclass(frozen=True)
class Account:
    balance: int = 0
    nonce: int = 0
    stake: int = 0
    unbonding: tuple[tuple[int, int], ...] = ()   # (amount, release height), release-ordered
    pubkey: bytes = b""
    jailed: bool = False

    @cached_property
    def encoded(self) -> bytes:
        return ACCOUNT.encode({
            "balance": self.balance, "nonce": self.nonce, "stake": self.stake,
            "unbonding": [{"amount": a, "release_height": h} for a, h in self.unbonding],
            "pubkey": self.pubkey.decode("latin-1"), "jailed": self.jailed})

    @classmethod
    def decode(cls, data: bytes) -> Account:
        c = ACCOUNT.decode(data)
        pubkey = c.pubkey.encode("latin-1")
        if len(pubkey) not in (0, 33):
            raise DecodeError("account public key must be empty or 33 bytes")
        return cls(c.balance, c.nonce, c.stake, tuple((u.amount, u.release_height) for u in c.unbonding),
                   pubkey, c.jailed)

    @property
    def is_empty(self) -> bool:
        return self == EMPTY_ACCOUNT

    def matured(self, height: int) -> Account:
        """This account with unbonding entries released at or before ``height`` moved to balance."""
        if not self.unbonding or self.unbonding[0][1] > height:
            return self
        released = sum(a for a, h in self.unbonding if h <= height)
        rest = tuple((a, h) for a, h in self.unbonding if h > height)
        return Account(self.balance + released, self.nonce, self.stake, rest, self.pubkey, self.jailed)


EMPTY_ACCOUNT = Account()
