"""A WAL write the disk refuses (ENOSPC) releases no signature and stops the node (issue 16, Storage).

The WAL is written over zeros preallocated ahead of its end, so a full disk is met when the log must grow its
preallocation. Here the WAL lives on a small tmpfs of the test's own (root only; skipped otherwise) that is
then filled: the record that needs more room fails with ENOSPC. :class:`WalSigner` logs (and syncs) before the
guard signs, so the guard never signs a proposal whose intent could not be logged, and a vote whose record
could not be appended is never handed to the engine (the guard's record rebuilds it at the next start). The
failure is told to ``on_write_error`` (``node.fatal``: one line, the node stops) and raised as WalError.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import storagenode
from timecoin import crypto
from timecoin.consensus.guardfile import GuardFile
from timecoin.consensus.privval import PrivValidator
from timecoin.consensus.service import WalSigner
from timecoin.consensus.wal import WalError, WalKind, WriteAheadLog
from timecoin.ledger.block import Block, Header, Proposal, Vote, VoteType

KEY = crypto.PrivateKey(b"\x61" * 32)
CHAIN = "storage-wal-full-test"
PREALLOC = 4096


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with storagenode.tmpfs(tmp_path / "fs", "1m") as where:
        yield where




def _full_wal(tmpfs: Path, told: list[str]) -> WriteAheadLog:
    """A WAL whose preallocation is used up to its last few bytes, on a full filesystem."""
    wal = WriteAheadLog(str(tmpfs / "consensus.wal"), prealloc_bytes=PREALLOC, on_write_error=told.append)
    while wal.size + 2 * 64 < PREALLOC:
        wal.append(WalKind.TIMEOUT, bytes(55))             # 64-byte records
    storagenode.fill(tmpfs / "filler")
    return wal


def test_a_proposal_whose_intent_the_full_disk_refuses_is_never_signed(tmpfs: Path, tmp_path: Path) -> None:
    told: list[str] = []
    wal = _full_wal(tmpfs, told)
    guard = GuardFile(str(tmp_path / "privval_state"))
    signer = WalSigner(PrivValidator(KEY, CHAIN, guard), wal)
    block = Block(Header(7, 0, bytes(32), 1000, KEY.address, bytes(32), bytes(32), bytes(32), bytes(32)))
    with pytest.raises(WalError, match="No space left on device"):
        signer.sign_proposal(Proposal(7, 0, -1, KEY.address, block))
    assert guard.get("privval", b"last_signed") is None         # the guard was never asked
    assert len(told) == 1 and "consensus WAL" in told[0] and "No space left on device" in told[0]


def test_a_vote_whose_record_the_full_disk_refuses_is_not_handed_out(tmpfs: Path, tmp_path: Path) -> None:
    told: list[str] = []
    wal = _full_wal(tmpfs, told)
    while wal.size + 64 <= PREALLOC:
        wal.append(WalKind.TIMEOUT, bytes(55))                  # not even room for the vote's record
    signer = WalSigner(PrivValidator(KEY, CHAIN, GuardFile(str(tmp_path / "privval_state"))), wal)
    with pytest.raises(WalError):
        signer.sign_vote(Vote(VoteType.PREVOTE, 7, 0, b"\x07" * 32, KEY.address))
    assert len(told) == 1
    # What the guard recorded is rebuilt from its record at the next start (test_consensus_crash_recovery), and a
    # conflicting vote at 7/0 stays refused:
    assert signer.guard.sign_vote(Vote(VoteType.PREVOTE, 7, 0, b"\x08" * 32, KEY.address)) is None


def test_a_compaction_the_full_disk_refuses_keeps_the_old_log_and_is_reported(tmpfs: Path) -> None:
    """Found running a node on a full disk: the compaction's OSError was a traceback and the node stalled silently."""
    told: list[str] = []
    path = tmpfs / "consensus.wal"
    wal = WriteAheadLog(str(path), rotate_bytes=256, prealloc_bytes=PREALLOC, on_write_error=told.append)
    for _ in range(8):
        wal.append(WalKind.TIMEOUT, bytes(55))
    wal.sync()
    before = path.read_bytes()
    storagenode.fill(tmpfs / "filler")
    with pytest.raises(WalError):
        wal.end_height(3)                                       # past rotate_bytes: rewritten into a new file
    assert len(told) == 1 and "No space left on device" in told[0]
    assert path.read_bytes() == before and not (tmpfs / "consensus.wal.tmp").exists()
    wal.close()
