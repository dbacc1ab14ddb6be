"""LtHash: a homomorphic hash of the account set, so the state root costs O(accounts touched).

SPEC §3 requires a state root whose per-block cost grows with the accounts a block touches, never
with all accounts. We use the lattice-based multiset hash LtHash (Bellare–Micciancio; deployed by
Meta for its update propagation and by Solana for its accounts hash): each account leaf
``address || Account.encoded`` is expanded with SHAKE-256 to 2048 bytes, read as 1024 little-endian
16-bit lanes, and the state accumulator is the lane-wise sum mod 2**16 of all leaves. Changing an
account subtracts its old leaf and adds the new one. The state root is SHA-256 of the accumulator.

Lanes live in one Python integer and are added with SWAR arithmetic (carries masked at lane
boundaries), so an update is a handful of big-int operations rather than 1024 Python additions.
"""
from __future__ import annotations

import hashlib

LANES = 1024
LANE_BITS = 16
LTHASH_SIZE = LANES * LANE_BITS // 8          # 2048 bytes
_ALL = (1 << (LANES * LANE_BITS)) - 1
_HIGH = int.from_bytes(b"\x00\x80" * LANES, "little")   # bit 15 of every lane
_LOW = _ALL ^ _HIGH

EMPTY = bytes(LTHASH_SIZE)


def leaf(data: bytes) -> int:
    """The lane vector of one element."""
    return int.from_bytes(hashlib.shake_256(data).digest(LTHASH_SIZE), "little")


def lane_add(a: int, b: int) -> int:
    return ((a & _LOW) + (b & _LOW)) ^ ((a ^ b) & _HIGH)


def lane_sub(a: int, b: int) -> int:
    return ((a | _HIGH) - (b & _LOW)) ^ ((a ^ b ^ _HIGH) & _HIGH)


class LtHash:
    """A mutable accumulator; ``digest()`` is the state root."""

    __slots__ = ("value",)

    def __init__(self, data: bytes = EMPTY) -> None:
        if len(data) != LTHASH_SIZE:
            raise ValueError(f"an LtHash is {LTHASH_SIZE} bytes")
        self.value = int.from_bytes(data, "little")

    def add(self, element: bytes) -> None:
        self.value = lane_add(self.value, leaf(element))

    def remove(self, element: bytes) -> None:
        self.value = lane_sub(self.value, leaf(element))

    def to_bytes(self) -> bytes:
        return self.value.to_bytes(LTHASH_SIZE, "little")

    def digest(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()
