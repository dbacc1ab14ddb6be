"""The consensus write-ahead log (SPEC §4 "Crash recovery"): length + CRC framed records, end-of-height
markers, replay of the unfinished height, and a torn or corrupt tail cut off (and truncated) on open."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

from timecoin.consensus.wal import MAX_RECORD, WalKind, WalRecord, WriteAheadLog

HEADER = 8   # length (4) + crc32 (4)


def _frame(kind: WalKind, data: bytes) -> bytes:
    body = bytes((kind,)) + data
    return struct.pack(">II", len(body), zlib.crc32(body)) + body


def _write(path: Path, records: list[WalRecord]) -> WriteAheadLog:
    wal = WriteAheadLog(str(path))
    for rec in records:
        if rec.kind == WalKind.END_HEIGHT:
            wal.end_height(int.from_bytes(rec.data, "big"))
        else:
            wal.append(rec.kind, rec.data, sync=rec.kind == WalKind.VOTE)
    wal.close()
    return wal


def _used(path: Path) -> bytes:
    """The log's records: the file's bytes up to the first zero length, everything after them zeros (the
    preallocation; a torn tail left after them would be read as a record one day)."""
    data = path.read_bytes()
    off = 0
    while off + HEADER <= len(data):
        length = int.from_bytes(data[off:off + 4], "big")
        if length == 0:
            break
        off += HEADER + length
    assert not any(data[off:]), "non-zero bytes after the log's end"
    return data[:off]


def _size(path: Path) -> int:
    return len(_used(path))


def _marker(height: int) -> WalRecord:
    return WalRecord(WalKind.END_HEIGHT, height.to_bytes(8, "big"))


RECORDS = [
    WalRecord(WalKind.PROPOSAL, b"p" * 300),
    WalRecord(WalKind.VOTE, bytes(range(256)) * 4),
    WalRecord(WalKind.TIMEOUT, bytes(13)),
    WalRecord(WalKind.VOTE, b""),                         # empty data is a valid record (kind byte only)
    WalRecord(WalKind.VOTE, b"the last record" * 8),
]


def _pending(path: Path) -> list[WalRecord]:
    """What a restarted node would replay."""
    wal = WriteAheadLog(str(path))
    try:
        return wal.pending()
    finally:
        wal.close()


def test_missing_and_empty_files_open_empty(tmp_path: Path) -> None:
    wal = WriteAheadLog(str(tmp_path / "new.wal"))
    assert wal.pending() == [] and wal.last_end_height() is None
    wal.close()
    assert _used(tmp_path / "new.wal") == b""
    wal = WriteAheadLog(str(tmp_path / "new.wal"))
    assert wal.pending() == []
    wal.close()


def test_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.wal"
    _write(path, RECORDS)
    assert _used(path) == b"".join(_frame(r.kind, r.data) for r in RECORDS)   # the documented framing
    wal = WriteAheadLog(str(path))
    assert wal.pending() == RECORDS
    assert wal.last_end_height() is None
    # pending() is what was there at open; later appends go to the file, not to this view
    wal.append(WalKind.VOTE, b"later")
    assert wal.pending() == RECORDS
    wal.close()
    wal = WriteAheadLog(str(path))
    assert wal.pending() == [*RECORDS, WalRecord(WalKind.VOTE, b"later")]
    wal.close()


def test_torn_last_record_is_dropped_at_every_cut(tmp_path: Path) -> None:
    """A crash mid-write leaves a prefix of the last record: whatever the cut, it is dropped, the earlier
    records survive, the file is truncated to them and later appends are read back cleanly."""
    src = tmp_path / "full.wal"
    records = [*RECORDS[:3], _marker(7), *RECORDS[3:]]
    _write(src, records)
    full = _used(src)
    last = _frame(records[-1].kind, records[-1].data)
    start = len(full) - len(last)
    assert full[start:] == last
    path = tmp_path / "torn.wal"
    for cut in range(start, len(full)):
        path.write_bytes(full[:cut])
        wal = WriteAheadLog(str(path))
        assert wal.pending() == records[4:-1], f"cut at {cut}"
        assert wal.last_end_height() == 7
        assert _size(path) == start, f"torn tail not truncated at cut {cut}"
        wal.append(WalKind.TIMEOUT, b"\x01" * 13)
        wal.close()
        assert _pending(path) == [*records[4:-1], WalRecord(WalKind.TIMEOUT, b"\x01" * 13)]


def test_torn_end_height_marker_leaves_the_height_pending(tmp_path: Path) -> None:
    """A crash while writing the marker: the height's records are still pending (replayed, not lost)."""
    path = tmp_path / "m.wal"
    _write(path, [*RECORDS[:2], _marker(3)])
    data = _used(path)
    for cut in range(len(data) - len(_frame(WalKind.END_HEIGHT, bytes(8))), len(data)):
        path.write_bytes(data[:cut])
        wal = WriteAheadLog(str(path))
        assert wal.pending() == RECORDS[:2] and wal.last_end_height() is None
        wal.close()


@pytest.mark.parametrize("where", ["body", "crc", "length", "kind"])
def test_corrupt_record_in_the_middle_cuts_the_log_there(tmp_path: Path, where: str) -> None:
    """As the module documents, the scan stops at the first record failing its length/CRC (or kind) check:
    records before it survive; it and everything after are dropped and truncated away (a WAL is only
    ever damaged at its tail by a crash, so damage in the middle is treated as the tail)."""
    path = tmp_path / "x.wal"
    _write(path, RECORDS)
    data = bytearray(_used(path))
    offsets = []
    off = 0
    for r in RECORDS:
        offsets.append(off)
        off += len(_frame(r.kind, r.data))
    bad = 2                                                   # the third record
    o = offsets[bad]
    if where == "body":
        data[o + HEADER + 3] ^= 0xFF
    elif where == "crc":
        data[o + 4] ^= 0x01
    elif where == "length":
        data[o:o + 4] = (MAX_RECORD + 1).to_bytes(4, "big")
    else:                                                     # an unknown kind with a matching CRC
        body = bytes((99,)) + RECORDS[bad].data
        data[o:o + HEADER + len(body)] = struct.pack(">II", len(body), zlib.crc32(body)) + body
    path.write_bytes(bytes(data))
    wal = WriteAheadLog(str(path))
    assert wal.pending() == RECORDS[:bad]
    assert _size(path) == o
    wal.append(WalKind.VOTE, b"after repair")
    wal.close()
    assert _pending(path) == [*RECORDS[:bad], WalRecord(WalKind.VOTE, b"after repair")]


def test_pending_returns_only_records_after_the_last_marker(tmp_path: Path) -> None:
    path = tmp_path / "p.wal"
    h1 = [WalRecord(WalKind.VOTE, b"h1-a"), WalRecord(WalKind.VOTE, b"h1-b")]
    h2 = [WalRecord(WalKind.PROPOSAL, b"h2-p"), WalRecord(WalKind.TIMEOUT, bytes(13))]
    h3 = [WalRecord(WalKind.VOTE, b"h3-a")]
    _write(path, [*h1, _marker(1), *h2, _marker(2), *h3])
    wal = WriteAheadLog(str(path))
    assert wal.pending() == h3
    assert wal.last_end_height() == 2
    wal.close()
    _write(path, [_marker(3)])                               # appended: nothing pending after the last marker
    wal = WriteAheadLog(str(path))
    assert wal.pending() == [] and wal.last_end_height() == 3
    wal.close()


def test_end_height_appends_a_marker_below_the_rotation_size(tmp_path: Path) -> None:
    path = tmp_path / "a.wal"
    wal = WriteAheadLog(str(path), rotate_bytes=1 << 20)
    for r in RECORDS:
        wal.append(r.kind, r.data)
    size = _size(path)
    wal.end_height(9)
    wal.close()
    assert _size(path) == size + HEADER + 1 + 8
    wal = WriteAheadLog(str(path))
    assert wal.pending() == [] and wal.last_end_height() == 9
    wal.close()


def test_end_height_compacts_the_file_past_the_rotation_size(tmp_path: Path) -> None:
    path = tmp_path / "r.wal"
    wal = WriteAheadLog(str(path), rotate_bytes=200)
    for r in RECORDS:                                        # > 200 bytes of height 41
        wal.append(r.kind, r.data)
    assert _size(path) > 200
    wal.end_height(41)
    assert _used(path) == _frame(WalKind.END_HEIGHT, (41).to_bytes(8, "big"))
    assert not os.path.exists(str(path) + ".tmp")
    # the log keeps working on the new file: records of height 42 land after the marker
    wal.append(WalKind.VOTE, b"h42")
    wal.close()
    wal = WriteAheadLog(str(path), rotate_bytes=200)
    assert wal.last_end_height() == 41
    assert wal.pending() == [WalRecord(WalKind.VOTE, b"h42")]
    # many heights: the file stays bounded by about one height's records
    for h in range(42, 60):
        for r in RECORDS:
            wal.append(r.kind, r.data)
        wal.end_height(h)
        assert _size(path) <= 200 + sum(len(_frame(r.kind, r.data)) for r in RECORDS) + 17
    wal.close()
    wal = WriteAheadLog(str(path))
    assert wal.last_end_height() == 59 and wal.pending() == []
    wal.close()


def test_a_stale_compaction_temp_file_is_harmless(tmp_path: Path) -> None:
    """A crash between writing ``.tmp`` and the rename leaves the old log intact and a stray temp file."""
    path = tmp_path / "s.wal"
    _write(path, RECORDS)
    Path(str(path) + ".tmp").write_bytes(b"half a compaction")
    wal = WriteAheadLog(str(path), rotate_bytes=10)
    assert wal.pending() == RECORDS
    wal.end_height(1)                                        # compaction overwrites the stray file
    wal.close()
    wal = WriteAheadLog(str(path))
    assert wal.last_end_height() == 1
    wal.close()
    assert not os.path.exists(str(path) + ".tmp")


def test_reopening_reads_the_log_record_by_record_and_keeps_only_the_pending_height(tmp_path: Path) -> None:
    """A log whose file is large (here 8 MiB of records of heights already ended, as a WAL filled with junk
    before a marker would be) is read in a stream at open: memory follows the records after the last marker
    (what replay needs), never the file size (issue 11, finding 5: a whole-file read)."""
    import tracemalloc
    path = tmp_path / "big.wal"
    chunk = b"j" * (64 << 10)
    with open(path, "wb") as f:
        for _ in range(128):                                 # 8 MiB of a finished height
            f.write(_frame(WalKind.VOTE, chunk))
        f.write(_frame(WalKind.END_HEIGHT, (5).to_bytes(8, "big")))
        for rec in RECORDS[:3]:
            f.write(_frame(rec.kind, rec.data))
    tracemalloc.start()
    try:
        wal = WriteAheadLog(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    try:
        assert wal.pending() == RECORDS[:3] and wal.last_end_height() == 5
        assert peak < 1 << 20, f"opening an 8 MiB log held {peak} bytes at once"
    finally:
        wal.close()


def test_a_torn_length_is_not_allocated_before_it_is_found_torn(tmp_path: Path) -> None:
    """The last record's header claims MAX_RECORD bytes that the file does not hold (a crash mid-write):
    it is cut off without reading (or allocating) what it claims."""
    import tracemalloc
    path = tmp_path / "torn.wal"
    path.write_bytes(_frame(WalKind.VOTE, b"kept") + struct.pack(">II", MAX_RECORD, 0) + b"x" * 100)
    tracemalloc.start()
    try:
        wal = WriteAheadLog(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    try:
        assert wal.pending() == [WalRecord(WalKind.VOTE, b"kept")]
        assert _size(path) == HEADER + 1 + 4
        assert peak < 1 << 20, peak
    finally:
        wal.close()


def test_appends_write_over_preallocated_zeros_so_the_file_size_never_changes(tmp_path: Path) -> None:
    """A sync of a file whose size and blocks do not change is data only (fdatasync, no journal commit):
    issue 15 measured the WAL's sync of a growing file at 2.5x the cost of the guard file's."""
    path = tmp_path / "z.wal"
    wal = WriteAheadLog(str(path), prealloc_bytes=64 << 10)
    size = path.stat().st_size
    assert size >= 64 << 10
    for i in range(200):
        wal.append(WalKind.VOTE, b"v" * 100 + bytes([i % 256]), sync=i % 10 == 0)
    assert path.stat().st_size == size and wal.size == 200 * (HEADER + 102)
    for _ in range(700):                                     # past the preallocation: grown once, by a chunk
        wal.append(WalKind.VOTE, b"w" * 100)
    assert path.stat().st_size == size + (64 << 10)
    wal.close()
    assert len(_pending(path)) == 900


def test_a_torn_tail_inside_the_preallocation_is_zeroed_not_read_later(tmp_path: Path) -> None:
    """Garbage after the last good record of a preallocated file (a torn write) is zeroed at open: a
    shorter record written there later must not leave the garbage's end to be read as a record."""
    path = tmp_path / "g.wal"
    _write(path, RECORDS[:2])
    end = _size(path)
    stale = _frame(WalKind.VOTE, b"old but well framed")
    with open(path, "r+b") as f:                             # a torn record, then a whole one after it
        f.seek(end)
        f.write(struct.pack(">II", 999, 0) + b"\x01" * 20 + stale)
    wal = WriteAheadLog(str(path))
    assert wal.pending() == RECORDS[:2]
    wal.append(WalKind.TIMEOUT, b"\x02" * 13)
    wal.close()
    assert _pending(path) == [*RECORDS[:2], WalRecord(WalKind.TIMEOUT, b"\x02" * 13)]
    assert _size(path) == end + HEADER + 14                  # _used checks every byte after it is zero
