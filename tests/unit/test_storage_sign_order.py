"""Everything the WAL holds is durable before the guard records a signature (issue 16, Storage: fsync order).

A kill -9 loses nothing flushed (the page cache survives the process), so the kill loop cannot see this; a
power cut loses what was not fsync'd. If the guard's record (one ``fdatasync``) could reach the disk before
the WAL records it rests on -- the peer inputs that led to the vote, a proposal's unsigned intent with its
block, our previous signed message -- a power cut could leave a signature whose lock and block are gone, and
replay would then ask for different messages the guard must refuse. ``WalSigner`` syncs the WAL before every
signature; this test watches the order: at each guard write, the WAL's synced length is its whole length.
And the guard's own record is ``fdatasync``'d before the signature is handed out.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from timecoin import crypto
from timecoin.consensus.guardfile import GuardFile
from timecoin.consensus.privval import PrivValidator
from timecoin.consensus.service import WalSigner
from timecoin.consensus.wal import WalKind, WriteAheadLog
from timecoin.ledger.block import Block, Header, Proposal, Vote, VoteType

KEY = crypto.PrivateKey(b"\x62" * 32)
PEER = crypto.PrivateKey(b"\x63" * 32)
CHAIN = "storage-sign-order-test"


def test_the_wal_is_synced_up_to_its_end_before_each_guard_record(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    wal = WriteAheadLog(str(tmp_path / "consensus.wal"))
    synced = [0]
    real_sync = wal.sync

    def sync() -> None:
        real_sync()
        synced[0] = wal.size
    monkeypatch.setattr(wal, "sync", sync)
    at_guard_write: list[tuple[int, int]] = []          # (WAL length, WAL length durable) at each guard write

    class Guard(GuardFile):
        def put(self, db_name: str, key: bytes, value: bytes) -> None:
            at_guard_write.append((wal.size, synced[0]))
            super().put(db_name, key, value)

    signer = WalSigner(PrivValidator(KEY, CHAIN, Guard(str(tmp_path / "privval_state"))), wal)
    block = Block(Header(7, 0, bytes(32), 1000, KEY.address, bytes(32), bytes(32), bytes(32), bytes(32)))
    peer_vote = Vote(VoteType.PREVOTE, 7, 0, block.hash, PEER.address)
    wal.append(WalKind.VOTE, peer_vote.encoded)                        # a peer's input: flushed, not synced
    assert signer.sign_proposal(Proposal(7, 0, -1, KEY.address, block)) is not None
    assert signer.sign_vote(Vote(VoteType.PREVOTE, 7, 0, block.hash, KEY.address)) is not None
    wal.append(WalKind.TIMEOUT, (7).to_bytes(8, "big") + (0).to_bytes(4, "big") + b"\x02")
    assert signer.sign_vote(Vote(VoteType.PRECOMMIT, 7, 0, block.hash, KEY.address)) is not None
    assert len(at_guard_write) == 3
    for size, durable in at_guard_write:
        assert durable == size, at_guard_write
    wal.close()


def test_the_guard_record_is_fdatasynced_before_the_signature_is_returned(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    guard = GuardFile(str(tmp_path / "privval_state"))
    signer = PrivValidator(KEY, CHAIN, guard)
    synced: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        real(fd)
        synced.append(fd)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    assert signer.sign_vote(Vote(VoteType.PREVOTE, 3, 0, b"\x03" * 32, KEY.address)) is not None
    assert synced == [guard._fd]
    guard.close()
