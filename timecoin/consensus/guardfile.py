"""The double-sign guard's record on disk: one small preallocated file, one ``fdatasync`` per signature.

CometBFT keeps its FilePV state in its own file for the same reason: the guard is written before *every*
signature (a validator signs 2-3 messages a height), so its write is on the consensus critical path. An
LMDB commit costs two syncs (data, then meta page); this file costs one, and a cheap one: the file is
preallocated and never changes size, so ``fdatasync`` writes the data block without a journal commit.

Layout: two slots of :data:`SLOT_BYTES` at offsets 0 and :data:`SLOT_BYTES`, each
``sequence (8) | length (4) | crc32 (4) | record``. A write goes to the slot *not* holding the latest
record, then syncs; the latest valid slot (highest sequence, CRC good) is the guard's state. A crash in
the middle of a write (a torn slot) leaves the other slot -- the previous record -- intact, and the
signature being recorded was never returned (the sync had not finished), so falling back is safe.

Records made before this file existed live in the store's ``privval`` database (``legacy``): the newest of
the two by (height, round, step) is the guard's state, so upgrading a validator never forgets what it
signed.
"""
from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from typing import Protocol

GUARD_FILE = "privval_state"
SLOT_BYTES = 4096
_HEAD = struct.Struct(">QII")             # sequence, record length, crc32(record)
_DB, _KEY = "privval", b"last_signed"


class _LegacyKV(Protocol):
    def get(self, db_name: str, key: bytes) -> bytes | None: ...


class GuardFileError(Exception):
    """The guard file cannot be read or written (the node must not sign without it)."""


def _order(record: bytes) -> tuple[int, int, int]:
    """(height, round, step) of a guard record (privval's layout: height 8, round 4, step 1, ...)."""
    return int.from_bytes(record[0:8], "big"), int.from_bytes(record[8:12], "big"), record[12]


class GuardFile:
    """A KeyValue for the guard's one record (``privval``/``last_signed``), kept in memory and on disk."""

    def __init__(self, path: str, legacy: _LegacyKV | None = None,
                 on_write_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.on_write_error = on_write_error    # the node stops: it must not go on unable to record signatures
        self._seq = 0
        self._slot = 1                    # the slot holding the latest record (the next write goes to the other)
        self._record: bytes | None = None
        try:
            if not os.path.exists(path):
                self._create()
            self._fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise GuardFileError(f"cannot open the double-sign guard file {path}: {exc.strerror}") from None
        self._load()
        old = legacy.get(_DB, _KEY) if legacy is not None else None
        if old is not None and (self._record is None or _order(old) > _order(self._record)):
            self.put(_DB, _KEY, old)      # adopt the store's record (written before this file existed)

    def _create(self) -> None:
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(2 * SLOT_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(dfd)                 # the new name is durable too
        finally:
            os.close(dfd)

    def _load(self) -> None:
        """The latest valid slot. Refused (GuardFileError), never read as "nothing signed": a file of
        another size (truncated: its newer slot may be the one cut off) or with no valid slot but
        bytes that are not the initial zeros (garbled). Falling back to an older record, or to none,
        would let the guard sign again what it signed before -- a double sign."""
        size = os.fstat(self._fd).st_size
        if size != 2 * SLOT_BYTES:
            self.close()
            raise GuardFileError(f"the double-sign guard file {self.path} is {size} bytes, not {2 * SLOT_BYTES}: "
                                 "truncated or not a guard file; this validator cannot tell what it last signed")
        best: tuple[int, int, bytes] | None = None
        garbled = False
        for slot in (0, 1):
            raw = os.pread(self._fd, SLOT_BYTES, slot * SLOT_BYTES)
            seq, length, crc = _HEAD.unpack_from(raw)
            record = raw[_HEAD.size:_HEAD.size + length]
            if seq == 0 or len(record) != length or zlib.crc32(record) != crc:
                garbled = garbled or raw.count(0) != len(raw)     # torn by a crash mid-write, or damaged
                continue
            if best is None or seq > best[0]:
                best = (seq, slot, record)
        if best is None and garbled:
            self.close()
            raise GuardFileError(f"the double-sign guard file {self.path} is corrupt (no valid record): this "
                                 "validator cannot tell what it last signed")
        if best is not None:
            self._seq, self._slot, self._record = best

    def get(self, db_name: str, key: bytes) -> bytes | None:
        if (db_name, key) != (_DB, _KEY):
            raise KeyError(f"the guard file holds only {_DB}/{_KEY!r}")
        return self._record

    def put(self, db_name: str, key: bytes, value: bytes) -> None:
        """Durable before it returns: the guard hands out the signature only after this."""
        if (db_name, key) != (_DB, _KEY):
            raise KeyError(f"the guard file holds only {_DB}/{_KEY!r}")
        if _HEAD.size + len(value) > SLOT_BYTES:
            raise GuardFileError(f"guard record of {len(value)} bytes does not fit a {SLOT_BYTES}-byte slot")
        seq, slot = self._seq + 1, 1 - self._slot
        data = _HEAD.pack(seq, len(value), zlib.crc32(value)) + value
        try:
            os.pwrite(self._fd, data, slot * SLOT_BYTES)
            os.fdatasync(self._fd)
        except OSError as exc:
            message = f"cannot write the double-sign guard file {self.path}: {exc.strerror}"
            if self.on_write_error is not None:
                self.on_write_error(message)
            raise GuardFileError(message) from None
        self._seq, self._slot, self._record = seq, slot, value

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
