"""A store write refused on a peer-driven path stops consensus quietly: one fatal line, nothing more (issue 16).

The process tests (``test_storage_disk_full.py``) meet the full disk on the timer path of a lone validator. A
block can also be committed because a peer sent it (``apply_certified_block``, and votes that complete a
quorum): there the refused write must not escape as an exception into the P2P code, and once the node is
stopping consensus must take no further input. In-process, on ``task.Clock``, over real LMDB; the refusal is
the store's own (``Store._write_failed``, as a full disk or a map at its cap ends).
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from tests.integration.test_consensus_service import make_node, run_until
from timecoin.config import build_config
from timecoin.errors import StoreError


def test_a_refused_store_write_of_a_block_from_a_peer_is_fatal_not_an_exception(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    clock.advance(2_000_000_000)
    ours = build_config({"datadir": str(tmp_path / "a"), "block_interval": "1"})
    node = make_node(ours, clock)
    node.startService()
    run_until(clock, node, 3)
    node.stopService()
    shutil.copytree(tmp_path / "a", tmp_path / "b")              # a second node, at height 3
    node = make_node(ours, clock)
    node.startService()
    run_until(clock, node, 4)
    block, cert = node.store.get_block(4), node.store.get_certificate(4)
    node.stopService()

    behind = make_node(build_config({"datadir": str(tmp_path / "b"), "block_interval": "1"}), Clock())
    behind.startService()
    try:
        assert behind.store.tip_height() == 3 and behind.fatal_reason is None
        store = behind.store

        def refused(fn: object) -> None:
            raise store._write_failed(f"cannot write the store at {store.path}: No space left on device")
        monkeypatch.setattr(store, "_write", refused)
        behind.consensus.apply_certified_block(block, cert)      # as the P2P fetch calls it: must not raise
        assert behind.fatal_reason is not None and "No space left on device" in behind.fatal_reason
        assert store.tip_height() == 3
        with pytest.raises(StoreError):
            store.put("peers", b"k", b"v")                       # the refusal itself is still loud to a direct caller
        monkeypatch.undo()                                       # even if the disk had room again meanwhile,
        wal_size = behind.consensus.wal.size
        behind.consensus.apply_certified_block(block, cert)      # a stopping node processes and logs nothing more
        assert store.tip_height() == 3 and behind.consensus.wal.size == wal_size
    finally:
        monkeypatch.undo()
        behind.stopService()


def test_a_refused_wal_write_after_a_sync_batch_is_fatal_not_an_exception(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Sync commits a batch, then consensus writes the WAL's marker: a full disk there stops the node quietly."""
    clock = Clock()
    clock.advance(2_000_000_000)
    node = make_node(build_config({"datadir": str(tmp_path / "a"), "block_interval": "1"}), clock)
    node.startService()
    try:
        run_until(clock, node, 3)
        wal = node.consensus.wal

        def refused(height: int) -> None:
            raise wal._failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        monkeypatch.setattr(wal, "end_height", refused)
        node.consensus.blocks_synced([node.store.get_block(3)])       # as the sync coordinator calls it
        assert node.fatal_reason is not None and "No space left on device" in node.fatal_reason
    finally:
        monkeypatch.undo()
        node.stopService()
