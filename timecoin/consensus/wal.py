"""The consensus write-ahead log (SPEC §4 "Crash recovery").

Every consensus input of the current height (proposals and votes, ours and peers', and timeouts) is
appended before it is processed. A record is ``length (4 BE) || crc32 (4 BE) || kind (1) || data``;
an ``END_HEIGHT`` record marks a height as committed. On restart the records after the last marker
are replayed into the engine, so a validator resumes the height (and round, and lock) it was in. A
torn or corrupt last record (a crash mid-write) fails its length or CRC check and is cut off; the
file is truncated there so later appends start clean. After a marker the file is compacted (rewritten
with just the marker) once it grows past ``rotate_bytes``, so it never holds more than a height or so.
Our own messages are fsync'd (``sync=True``); peers' are flushed only, since they can be re-fetched.

``PROPOSAL_INTENT`` is an unsigned proposal of ours (with its block), fsync'd *before* the guard is asked
to sign it: the guard's record holds only the block's hash, so after a crash between the guard's commit
and the signed ``PROPOSAL`` record the signed proposal is rebuilt from the intent and the guard's
signature. Intents are never fed to the engine. (An older node reading a log with an intent record would
stop its scan there: downgrade after a crash mid-height loses the rest of that height's log.)
"""
from __future__ import annotations

import enum
import os
import struct
import zlib
from dataclasses import dataclass

from twisted.logger import Logger

_HEADER = struct.Struct(">II")
MAX_RECORD = 64 * 1024 * 1024


class WalKind(enum.IntEnum):
    PROPOSAL = 1
    VOTE = 2
    TIMEOUT = 3
    END_HEIGHT = 4
    PROPOSAL_INTENT = 5        # our unsigned proposal, logged before the guard signs it
    QUORUM = 6                 # a peer's QuorumProof (its votes may be what locked us)


@dataclass(frozen=True)
class WalRecord:
    kind: WalKind
    data: bytes


class WriteAheadLog:
    log = Logger()

    def __init__(self, path: str, rotate_bytes: int = 1 << 20) -> None:
        self.path = path
        self.rotate_bytes = rotate_bytes
        records, good_len = self._scan()
        self._records_at_open = records
        self._f = open(path, "ab")  # noqa: SIM115 - held open for the node's life
        if self._f.tell() != good_len:
            self.log.warn("WAL {path}: dropped a torn tail of {n} bytes", path=path, n=self._f.tell() - good_len)
            self._f.truncate(good_len)
            self._f.seek(good_len)

    def _scan(self) -> tuple[list[WalRecord], int]:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return [], 0
        records: list[WalRecord] = []
        off = 0
        while off + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, off)
            body = data[off + _HEADER.size: off + _HEADER.size + length]
            if length < 1 or length > MAX_RECORD or len(body) != length or zlib.crc32(body) != crc:
                break
            try:
                kind = WalKind(body[0])
            except ValueError:
                break
            records.append(WalRecord(kind, body[1:]))
            off += _HEADER.size + length
        return records, off

    def pending(self) -> list[WalRecord]:
        """Records written after the last END_HEIGHT marker when the log was opened."""
        recs = self._records_at_open
        for i in range(len(recs) - 1, -1, -1):
            if recs[i].kind == WalKind.END_HEIGHT:
                return recs[i + 1:]
        return list(recs)

    def last_end_height(self) -> int | None:
        for rec in reversed(self._records_at_open):
            if rec.kind == WalKind.END_HEIGHT:
                return int.from_bytes(rec.data, "big")
        return None

    def append(self, kind: WalKind, data: bytes, sync: bool = False) -> None:
        body = bytes((kind,)) + data
        self._f.write(_HEADER.pack(len(body), zlib.crc32(body)) + body)
        self._f.flush()
        if sync:
            os.fsync(self._f.fileno())

    def sync(self) -> None:
        """Make everything appended so far durable (before the guard signs on what it led to)."""
        self._f.flush()
        os.fsync(self._f.fileno())

    def end_height(self, height: int) -> None:
        """Mark ``height`` committed; compact the file when it has grown."""
        marker = height.to_bytes(8, "big")
        if self._f.tell() > self.rotate_bytes:
            tmp = self.path + ".tmp"
            with open(tmp, "wb") as f:
                body = bytes((WalKind.END_HEIGHT,)) + marker
                f.write(_HEADER.pack(len(body), zlib.crc32(body)) + body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self._f.close()
            self._f = open(self.path, "ab")  # noqa: SIM115
        else:
            self.append(WalKind.END_HEIGHT, marker, sync=True)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
