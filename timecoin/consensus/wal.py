"""The consensus write-ahead log (SPEC §4 "Crash recovery").

Every consensus input of the current height that the engine accepts (proposals, votes and quorum proofs,
ours and peers', and timeouts) is appended before it is processed; a peer's message the engine refuses
is never appended (``Engine.on_accept``). A record is ``length (4 BE) || crc32 (4 BE) || kind (1) || data``;
an ``END_HEIGHT`` record marks a height as committed. On restart the records after the last marker
are replayed into the engine, so a validator resumes the height (and round, and lock) it was in. A
torn or corrupt last record (a crash mid-write) fails its length or CRC check and is cut off; the
bytes after it are zeroed so later appends start clean. The file is preallocated with zeros ahead of the
log's end (``PREALLOC_BYTES``; a zero length ends the log), so appending never changes its size and a
sync is an ``fdatasync`` without a filesystem journal commit. After a marker the file is compacted (rewritten
with just the marker) once it grows past ``rotate_bytes``, so it never holds more than a height or so.
It is read in a stream at open (two passes, in pieces): memory follows the records after the last marker
(what replay needs), never the size of the file, and a torn record's claimed length is never allocated.
Appends are flushed; :meth:`WriteAheadLog.sync` makes everything appended so far durable, and the
consensus service calls it before each signature (so the inputs behind a signature, and our previous
signed message, are durable before the guard records the next one). End-of-height markers are flushed
only: the next sync carries them.

``PROPOSAL_INTENT`` is an unsigned proposal of ours (with its block), synced *before* the guard is asked
to sign it: the guard's record holds only the block's hash, so after a crash between the guard's commit
and the signed ``PROPOSAL`` record the signed proposal is rebuilt from the intent and the guard's
signature. Intents are never fed to the engine. (An older node reading a log with an intent record would
stop its scan there: downgrade after a crash mid-height loses the rest of that height's log.)
"""
from __future__ import annotations

import contextlib
import enum
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from twisted.logger import Logger

from timecoin.errors import TimecoinError

_HEADER = struct.Struct(">II")
MAX_RECORD = 64 * 1024 * 1024
_CHUNK = 64 * 1024              # bytes read at a time while checking a record's CRC at open
PREALLOC_BYTES = 1 << 20        # zeros kept ahead of the log's end (see WriteAheadLog._reserve)
_MAX_MARKER = 1 + 16            # an END_HEIGHT record's body: kind + height (8 bytes; a little slack)


class WalError(TimecoinError):
    """The WAL cannot be opened or written (disk full, I/O error, read-only datadir): the node must stop.

    A validator that cannot log what it is about to sign on must not sign: :class:`WalSigner` syncs the WAL
    before asking the guard, so a failed write or sync means no signature is made or released.
    """


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

    def __init__(self, path: str, rotate_bytes: int = 1 << 20, prealloc_bytes: int = PREALLOC_BYTES,
                 on_write_error: Callable[[str], None] | None = None) -> None:
        """``on_write_error``: told (one line) when a write fails, before :class:`WalError` is raised (node.fatal)."""
        self.path = path
        self.rotate_bytes = rotate_bytes
        self.prealloc_bytes = max(prealloc_bytes, 4096)
        self.on_write_error = on_write_error
        try:
            self._open()
        except OSError as exc:
            if getattr(self, "_f", None) is not None:
                self._f.close()
            raise WalError(f"cannot open the consensus WAL {path}: {exc.strerror or exc}") from None

    def _failed(self, exc: OSError) -> WalError:
        """A write or sync that failed: the owner is told once per failure, the caller gets WalError."""
        message = f"cannot write the consensus WAL {self.path}: {exc.strerror or exc}"
        if self.on_write_error is not None:
            self.on_write_error(message)
        return WalError(message)

    def _open(self) -> None:
        path = self.path
        self._pending_at_open, self._last_end_at_open, good_len = self._scan()
        self._f = open(path, "r+b" if os.path.exists(path) else "w+b")  # noqa: SIM115 - held for the node's life
        self._end = good_len                  # the log's end: records live in [0, _end), zeros after it
        self._alloc = os.fstat(self._f.fileno()).st_size
        torn = self._nonzero_tail(good_len)
        if torn:
            self.log.warn("WAL {path}: dropped a torn tail of {n} bytes (a record cut by a crash); the records "
                          "before it are replayed", path=path, n=torn)
        if torn or self._alloc < good_len + self.prealloc_bytes:
            self._f.truncate(good_len)        # a torn record's bytes must never be read as a record later
            self._alloc = good_len
            self._reserve(self.prealloc_bytes)
        self._f.seek(good_len)

    @property
    def size(self) -> int:
        """Bytes of records in the log (the file itself is longer: preallocated zeros follow them)."""
        return self._end

    def _nonzero_tail(self, good: int) -> int:
        """How many bytes after the good prefix are not the preallocated zeros (a torn or corrupt tail)."""
        self._f.seek(good)
        last, off = 0, good
        while True:
            chunk = self._f.read(_CHUNK)
            if not chunk:
                return last
            stripped = chunk.rstrip(b"\0")
            if stripped:
                last = off + len(stripped) - good
            off += len(chunk)

    def _reserve(self, need: int) -> None:
        """Make sure ``need`` bytes after the end are allocated and zeroed.

        Records are written over zeros that are already on disk, so the file's size and block map do not
        change as the log grows: a sync is then an ``fdatasync`` of data blocks alone, with no journal
        commit (issue 15: the WAL's fsync of a growing file cost 2.5x the guard file's fdatasync). The
        zeros end the log for the reader (a record of length 0 is invalid).
        """
        if self._end + need <= self._alloc:
            return
        grow = max(self.prealloc_bytes, need)
        self._f.flush()
        _write_zeros(self._f.fileno(), self._alloc, grow)
        os.fsync(self._f.fileno())            # the new size and blocks, once per prealloc_bytes of log
        self._alloc += grow

    def _scan(self) -> tuple[list[WalRecord], int | None, int]:
        """(records after the last marker, that marker's height, length of the good prefix), in two passes.

        The first checks every record in chunks (length, kind, CRC) and finds the last marker, holding no
        record; the second reads only the records after that marker. So memory follows the pending height's
        records, never the file. The log ends at the first record that is torn or corrupt, or whose claimed
        length runs past the end of the file (checked before anything of it is read).
        """
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return [], None, 0
        with f:
            good, last_end, after_marker = _check_records(f, os.fstat(f.fileno()).st_size)
            f.seek(after_marker)
            pending: list[WalRecord] = []
            off = after_marker
            while off < good:
                length, _ = _HEADER.unpack(f.read(_HEADER.size))
                body = f.read(length)
                pending.append(WalRecord(WalKind(body[0]), body[1:]))
                off += _HEADER.size + length
        return pending, last_end, good

    def pending(self) -> list[WalRecord]:
        """Records written after the last END_HEIGHT marker when the log was opened."""
        return list(self._pending_at_open)

    def last_end_height(self) -> int | None:
        return self._last_end_at_open

    def append(self, kind: WalKind, data: bytes, sync: bool = False) -> None:
        """Append one record (flushed; fdatasync'd too with ``sync``). WalError if the disk refuses it."""
        try:
            self._append(kind, data, sync)
        except OSError as exc:
            raise self._failed(exc) from None

    def _append(self, kind: WalKind, data: bytes, sync: bool) -> None:
        body = bytes((kind,)) + data
        record = _HEADER.pack(len(body), zlib.crc32(body)) + body
        self._reserve(len(record))
        self._f.write(record)
        self._f.flush()
        self._end += len(record)
        if sync:
            os.fdatasync(self._f.fileno())

    def sync(self) -> None:
        """Make everything appended so far durable (before the guard signs on what it led to)."""
        try:
            self._f.flush()
            os.fdatasync(self._f.fileno())
        except OSError as exc:
            raise self._failed(exc) from None

    def end_height(self, height: int) -> None:
        """Mark ``height`` committed; compact the file when it has grown."""
        marker = height.to_bytes(8, "big")
        if self._end > self.rotate_bytes:
            try:
                self._compact(marker)
            except OSError as exc:
                # The old log is untouched (the new one replaces it only once complete): drop the partial copy.
                with contextlib.suppress(OSError):
                    os.unlink(self.path + ".tmp")
                raise self._failed(exc) from None
        else:
            # Flushed, not synced: a marker lost to a power cut only leaves the committed height's records
            # before the next height's (replay takes the records of the store's tip + 1 only), and the next
            # signature's sync makes it durable with them.
            self.append(WalKind.END_HEIGHT, marker)

    def _compact(self, marker: bytes) -> None:
        """Rewrite the log as just the END_HEIGHT marker (a temp file, then an atomic rename)."""
        body = bytes((WalKind.END_HEIGHT,)) + marker
        record = _HEADER.pack(len(body), zlib.crc32(body)) + body
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(record)
            f.flush()
            _write_zeros(f.fileno(), len(record), self.prealloc_bytes)
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._f.close()
        self._f = open(self.path, "r+b")  # noqa: SIM115
        self._f.seek(len(record))
        self._end, self._alloc = len(record), len(record) + self.prealloc_bytes

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def _write_zeros(fd: int, offset: int, count: int) -> None:
    """``count`` zero bytes at ``offset``, written (not a hole: its blocks must exist before a record lands)."""
    zeros = bytes(min(count, _CHUNK))
    while count > 0:
        n = os.pwrite(fd, zeros[:count], offset)
        offset += n
        count -= n


def _check_records(f: BinaryIO, size: int) -> tuple[int, int | None, int]:
    """The first pass of :meth:`WriteAheadLog._scan`: (good length, last marker's height, offset after it).

    Bodies are read in ``_CHUNK`` pieces for their CRC and dropped; only a marker's few bytes are kept.
    """
    off, last_end, after_marker = 0, None, 0
    while off + _HEADER.size <= size:
        f.seek(off)
        length, crc = _HEADER.unpack(f.read(_HEADER.size))
        if length < 1 or length > MAX_RECORD or off + _HEADER.size + length > size:
            break
        head = f.read(1)
        try:
            kind = WalKind(head[0])
        except (IndexError, ValueError):
            break
        if kind == WalKind.END_HEIGHT and length > _MAX_MARKER:
            break                                   # never written so: corrupt
        running, data, left = zlib.crc32(head), b"", length - 1
        while left:
            chunk = f.read(min(left, _CHUNK))
            if not chunk:
                break
            running = zlib.crc32(chunk, running)
            if kind == WalKind.END_HEIGHT:
                data += chunk
            left -= len(chunk)
        if left or running != crc:
            break
        off += _HEADER.size + length
        if kind == WalKind.END_HEIGHT:
            last_end, after_marker = int.from_bytes(data, "big"), off
    return off, last_end, after_marker
