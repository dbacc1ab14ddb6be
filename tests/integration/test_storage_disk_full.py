"""A full disk stops a real node with one clear line and leaves a datadir it resumes from (issue 16, Storage).

A ``twistd -n timecoin`` devnet validator runs on a small tmpfs of the test's own (root only; skipped with the
reason otherwise) with ``block_interval 0`` and the smallest LMDB map, so the map grows while it commits. A
filler file then takes every free byte. Whichever write meets the full disk first -- the LMDB commit, the WAL's
preallocation or compaction, the guard -- the node says so in ONE critical line naming the device full, with no
traceback, and stops. After the filler is removed the datadir verifies (every block and certificate, the state
replayed from genesis), and the node restarts on it and finalizes further.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import storagenode
from tests.storagenode import ChainChecker, double_signs, prepare, signatures, start, wait_for_line
from timecoin import crypto
from timecoin.ledger.genesis import Genesis
from timecoin.store import WAL, Store

pytestmark = pytest.mark.slow
STOP_LINE = "Stopping the node: "


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with storagenode.tmpfs(tmp_path / "fs", "8m") as where:
        yield where




def test_disk_full_is_one_clear_line_a_clean_stop_and_a_datadir_that_resumes(tmpfs: Path, tmp_path: Path) -> None:
    datadir = tmpfs / "node"
    key, genesis = prepare(datadir)
    log = tmp_path / "node.log"
    log.touch()
    proc = start(datadir, log, "--block-interval", "0")
    try:
        assert wait_for_line(log, "Committed block 20 ", 60.0, proc), log.read_text()[-3000:]
        storagenode.fill(tmpfs / "filler")
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is not None, "the node went on with a full disk: " + log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=20)
    out = log.read_text(errors="replace")
    assert "Traceback" not in out and "Unhandled" not in out, out[-5000:]
    stops = [line for line in out.splitlines() if STOP_LINE in line]
    assert len(stops) == 1, out[-5000:]
    assert "No space left on device" in stops[0], stops[0]

    (tmpfs / "filler").unlink()
    _resumes(datadir, log, key, genesis)


def _resumes(datadir: Path, log: Path, key: crypto.PrivateKey, genesis: Genesis, *extra: str) -> None:
    """The stopped node's datadir verifies, and a node restarted on it finalizes three more blocks."""
    checker = ChainChecker(genesis)
    with Store(str(datadir / "chain")) as store:
        tip = checker.check(store)
        signed = signatures(datadir, key, genesis.chain_id, store)
    offset = log.stat().st_size
    proc = start(datadir, log, "--block-interval", "0", *extra)
    try:
        assert wait_for_line(log, f"Committed block {tip + 3} ", 60.0, proc, start_at=offset), \
            log.read_text()[offset:][-3000:]
    finally:
        proc.kill()
        proc.wait(timeout=20)
    assert "Traceback" not in log.read_text(errors="replace")[offset:]
    with Store(str(datadir / "chain")) as store:
        assert checker.check(store) >= tip + 3
        signatures(datadir, key, genesis.chain_id, store, into=signed)
    assert double_signs(signed, key, genesis.chain_id) == []


def test_a_store_at_its_map_cap_is_one_clear_line_a_clean_stop_and_resumes_with_a_larger_cap(tmp_path: Path) -> None:
    """The map grows until ``lmdb_max_map_size`` (2 MiB); full at the cap, the node stops with one line."""
    datadir = tmp_path / "node"
    key, genesis = prepare(datadir)
    with Store(str(datadir / "chain"), map_size=4 << 20) as store:     # a store near its cap: 1.5 MiB of old records
        store.put(WAL, b"old records", bytes(1536 << 10))            # (the node never reads this database)
    log = tmp_path / "node.log"
    log.touch()
    cap = ("--lmdb-map-size", str(1 << 20), "--lmdb-max-map-size", str(2 << 20))
    proc = start(datadir, log, "--block-interval", "0", *cap)
    try:
        assert wait_for_line(log, STOP_LINE, 60.0, proc), log.read_text()[-3000:]
        assert proc.wait(timeout=30) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=20)
    out = log.read_text(errors="replace")
    assert "Traceback" not in out and "Unhandled" not in out, out[-5000:]
    stops = [line for line in out.splitlines() if STOP_LINE in line]
    assert len(stops) == 1 and f"the map is at its cap of {2 << 20} bytes" in stops[0], out[-5000:]
    assert f"to {2 << 20} bytes" in out and "grown from" in out          # it grew up to the cap first
    _resumes(datadir, log, key, genesis, "--lmdb-max-map-size", str(64 << 20))
