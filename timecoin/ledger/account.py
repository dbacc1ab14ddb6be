"""Accounts: ``address → (balance, nonce, stake, unbonding[])`` plus the signer's public key.

The public key is recorded the first time an account signs a transaction (or at genesis for
stakers) so that a validator's votes can be verified from state alone.
"""
from __future__ import annotations

import struct
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
_HEAD = struct.Struct(">QQQH")          # balance, nonce, stake, unbonding count
_ENTRY = struct.Struct(">QQ")           # amount, release height


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
        fast = _fast_encode(self)
        if fast is not None:
            return fast
        return ACCOUNT.encode({
            "balance": self.balance, "nonce": self.nonce, "stake": self.stake,
            "unbonding": [{"amount": a, "release_height": h} for a, h in self.unbonding],
            "pubkey": self.pubkey.decode("latin-1"), "jailed": self.jailed})

    @classmethod
    def decode(cls, data: bytes) -> Account:
        data = bytes(data)
        fast = _fast_decode(data)
        if fast is not None:
            fast.__dict__["encoded"] = data        # canonical: it is what ``encoded`` would build (no re-encode)
            return fast
        c = ACCOUNT.decode(data)
        pubkey = c.pubkey.encode("latin-1")
        if len(pubkey) not in (0, 33):
            raise DecodeError("account public key must be empty or 33 bytes")
        return cls(c.balance, c.nonce, c.stake, tuple((u.amount, u.release_height) for u in c.unbonding),
                   pubkey, c.jailed)

    @property
    def is_empty(self) -> bool:
        # Field by field (what ``self == EMPTY_ACCOUNT`` means), without building two tuples per call.
        return (not self.balance and not self.nonce and not self.stake and not self.unbonding and not self.pubkey
                and not self.jailed)

    def matured(self, height: int) -> Account:
        """This account with unbonding entries released at or before ``height`` moved to balance."""
        if not self.unbonding or self.unbonding[0][1] > height:
            return self
        released = sum(a for a, h in self.unbonding if h <= height)
        rest = tuple((a, h) for a, h in self.unbonding if h > height)
        return Account(self.balance + released, self.nonce, self.stake, rest, self.pubkey, self.jailed)


EMPTY_ACCOUNT = Account()


def _fast_decode(data: bytes) -> Account | None:
    """``struct`` decode of exactly the canonical encoding (an Account is read for every tx); None for
    anything else, which the guarded codec then judges (and refuses with its own error)."""
    end = len(data)
    if end < _HEAD.size + 2:
        return None
    balance, nonce, stake, count = _HEAD.unpack_from(data)
    at = _HEAD.size + count * _ENTRY.size
    if end < at + 2:
        return None
    size = data[at]
    if end != at + 1 + size + 1 or data[end - 1] > 1 or size not in (0, 33):
        return None                 # a flag byte other than 0/1 is not canonical; a key is 0 or 33 bytes
    unbonding = tuple(_ENTRY.iter_unpack(data[_HEAD.size:at]))
    return Account(balance, nonce, stake, unbonding, data[at + 1:at + 1 + size], data[end - 1] == 1)


def _fast_encode(account: Account) -> bytes | None:
    """The canonical encoding by ``struct`` when every field is plain; None to let the codec judge the rest."""
    pubkey, jailed = account.pubkey, account.jailed
    if type(pubkey) is not bytes or len(pubkey) > 255 or type(jailed) is not bool:
        return None
    try:
        parts = [_HEAD.pack(account.balance, account.nonce, account.stake, len(account.unbonding))]
        parts.extend(_ENTRY.pack(a, h) for a, h in account.unbonding)
    except (struct.error, TypeError, ValueError):
        return None
    parts.append(bytes((len(pubkey),)) + pubkey + (b"\x01" if jailed else b"\x00"))
    return b"".join(parts)
