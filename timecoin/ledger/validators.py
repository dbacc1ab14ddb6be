"""Validator sets: who may vote at a height and with what power (stake, in units).

The set of height h is computed from the state after block h-2 (SPEC §2), so it is known from a
block's parent state. Quorum is strictly more than 2/3 of total power, in integer arithmetic.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from construct import Int16ub, Int64ub, PrefixedArray, Struct

from timecoin.wire.messages import Address, Codec, PubKey

# CometBFT's types.MaxTotalVotingPower (int64 max / 8): the proposer-priority arithmetic needs total power
# within it (consensus/proposer.py), so the ledger keeps total supply, hence any set's power, below it.
MAX_TOTAL_VOTING_POWER = ((1 << 63) - 1) // 8

ValidatorLayout = Struct("address" / Address, "pubkey" / PubKey, "power" / Int64ub)
VALIDATOR_SET = Codec("ValidatorSet", Struct("validators" / PrefixedArray(Int16ub, ValidatorLayout)))
DECODED_CACHE = 64          # recently decoded sets kept by their bytes (sets are immutable; few are live at once)


@dataclass(frozen=True)
class Validator:
    address: bytes
    pubkey: bytes
    power: int


def has_quorum(power: int, total: int) -> bool:
    """Strictly more than 2/3 of total voting power."""
    return 3 * power > 2 * total


def has_one_third(power: int, total: int) -> bool:
    """More than 1/3: at least one honest validator is among them."""
    return 3 * power > total


class ValidatorSet:
    """An immutable, address-ordered validator set."""

    __slots__ = ("validators", "by_address", "total_power", "__dict__")

    def __init__(self, validators: Iterable[Validator]) -> None:
        vals = sorted((v for v in validators if v.power > 0), key=lambda v: v.address)
        self.validators: tuple[Validator, ...] = tuple(vals)
        self.by_address: dict[bytes, Validator] = {v.address: v for v in vals}
        if len(self.by_address) != len(vals):
            raise ValueError("duplicate validator address")
        self.total_power: int = sum(v.power for v in vals)

    def __len__(self) -> int:
        return len(self.validators)

    def __contains__(self, address: bytes) -> bool:
        return address in self.by_address

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValidatorSet) and self.validators == other.validators

    def __hash__(self) -> int:
        return hash(self.validators)

    def power_of(self, address: bytes) -> int:
        v = self.by_address.get(address)
        return v.power if v else 0

    def encode(self) -> bytes:
        return VALIDATOR_SET.encode({"validators": [
            {"address": v.address, "pubkey": v.pubkey, "power": v.power} for v in self.validators]})

    @classmethod
    def decode(cls, data: bytes) -> ValidatorSet:
        """The set encoded in ``data``; the same bytes decode once (the store reads a height's set for every
        consensus frame window and every block, and a 100-validator set costs ~0.5 ms to decode)."""
        data = bytes(data)
        cached = _DECODED.get(data)
        if cached is not None:
            _DECODED.move_to_end(data)
            return cached
        c = VALIDATOR_SET.decode(data)
        vs = cls(Validator(v.address, v.pubkey, v.power) for v in c.validators)
        _DECODED[data] = vs
        if len(_DECODED) > DECODED_CACHE:
            _DECODED.popitem(last=False)
        return vs

    @cached_property
    def hash(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()

    def quorum(self, power: int) -> bool:
        return has_quorum(power, self.total_power)


_DECODED: OrderedDict[bytes, ValidatorSet] = OrderedDict()
