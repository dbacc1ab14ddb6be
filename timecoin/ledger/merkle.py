"""Merkle roots (RFC 6962 shape): leaves hashed with a 0x00 prefix, inner nodes with 0x01, the tree
split at the largest power of two below n. No odd-leaf duplication, so no CVE-2012-2459 style
collisions between different lists."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()


def _leaf(item: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + item).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(items: Sequence[bytes]) -> bytes:
    """Root over the given leaf values (tx ids, evidence hashes); EMPTY_ROOT for none."""
    if not items:
        return EMPTY_ROOT
    level = [_leaf(x) for x in items]
    return _root(level)


def _root(hashes: list[bytes]) -> bytes:
    n = len(hashes)
    if n == 1:
        return hashes[0]
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two < n
    return _node(_root(hashes[:k]), _root(hashes[k:]))
