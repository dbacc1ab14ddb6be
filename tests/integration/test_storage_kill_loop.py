"""kill -9 at random moments of a real validator's block commits, restart, again (issue 16, Storage).

One ``twistd -n timecoin`` devnet validator with ``block_interval 0`` (it commits back to back, so a kill lands
inside a height: between its WAL appends, its guard's ``fdatasync`` and its LMDB commit) is killed after a seeded
random delay, :data:`RESTARTS` times. After each kill, before the restart, the datadir is opened as the node
opens it and checked: every stored block and certificate verifies, the heights are contiguous and the blocks
already checked are unchanged, and replaying the chain from genesis gives the stored accounts and LtHash (the
tip's state root). Every few kills the WAL's last record is cut in the middle (a torn write): the next start
drops it with one warning line and goes on. Across all runs, every message the validator signed (its WAL
records, its guard's record, its precommits in the certificates) is collected: never two valid signatures over
different messages at one (height, round, step).
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.storagenode import ChainChecker, double_signs, prepare, signatures, start, wait_for_line
from timecoin.consensus.wal import _HEADER, _check_records
from timecoin.store import Store

pytestmark = pytest.mark.slow
SEED = 1616
RESTARTS = 14
CUT_EVERY = 4                 # every 4th kill also tears the WAL's last record
MAX_DELAY = 0.35              # seconds of committing before the kill (after the run's first commit)


def _cut_last_wal_record(path: Path) -> int:
    """Truncate the file in the middle of its last record (a write torn by the crash); the bytes cut."""
    with open(path, "rb") as f:
        good, _, _ = _check_records(f, os.fstat(f.fileno()).st_size)
        f.seek(0)
        off = last = 0
        while off < good:
            length, _ = _HEADER.unpack(f.read(_HEADER.size))
            f.seek(length, os.SEEK_CUR)
            last, off = off, off + _HEADER.size + length
    assert good > 0, "an empty WAL after a run that committed"
    cut_at = last + _HEADER.size + (good - last - _HEADER.size) // 2
    os.truncate(path, cut_at)
    return good - cut_at


def test_kill9_during_commits_never_corrupts_the_store_or_the_wal_and_never_double_signs(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    datadir = tmp_path / "node"
    key, genesis = prepare(datadir)
    checker = ChainChecker(genesis)
    signed: dict = {}
    log = tmp_path / "node.log"
    log.touch()
    tips, replays, torn_warnings, cuts = [], 0, 0, 0
    for run in range(RESTARTS):
        offset = log.stat().st_size
        proc = start(datadir, log, "--block-interval", "0")
        try:
            assert wait_for_line(log, "Committed block", 30.0, proc, start_at=offset), \
                f"run {run} did not commit: {log.read_text()[offset:][-3000:]}"
            time.sleep(rng.uniform(0.0, MAX_DELAY))
        finally:
            proc.kill()
            proc.wait(timeout=20)
        out = log.read_text(errors="replace")[offset:]
        assert "Traceback" not in out and "Unhandled" not in out, out[-4000:]
        replays += "Replaying" in out or "Rebuilt our" in out
        torn_warnings += "dropped a torn tail" in out
        with Store(str(datadir / "chain")) as store:          # opens as the restarted node opens it
            tips.append(checker.check(store))
            signatures(datadir, key, genesis.chain_id, store, into=signed)
        if run % CUT_EVERY == CUT_EVERY - 1 and run < RESTARTS - 1:
            assert _cut_last_wal_record(datadir / "consensus.wal") > 0
            cuts += 1
    assert double_signs(signed, key, genesis.chain_id) == []
    assert tips == sorted(tips) and tips[-1] > tips[0] >= 1, tips          # every run finalized more
    assert torn_warnings == cuts > 0, (torn_warnings, cuts)                 # each torn WAL: one warning, then on
    assert replays >= 1                           # killed mid-height: a restart resumed it from the WAL
    assert len(signed) >= 3 * tips[-1] // 2       # the collection saw the signing (not an empty check)
