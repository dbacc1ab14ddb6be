"""A datadir the node cannot use is one clear line and a non-zero exit of ``twistd -n timecoin`` (issue 16, Storage).

Each case damages a datadir made as a first start makes it, runs a real node process on it, and checks the exit
status, that exactly one ``twistd timecoin: error:`` line names the problem, and that there is no traceback.
The store-level refusals themselves are tested in ``tests/unit/test_store.py``
(``test_other_schema_version_is_refused``, ``test_reopen_checks_chain_id_and_genesis``) and the guard file's in
``tests/unit/test_storage_guard.py``; here the node's start-up turns them into that one line.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import storagenode
from tests.storagenode import one_error_line, prepare, run_to_exit
from timecoin.consensus.guardfile import GUARD_FILE, SLOT_BYTES
from timecoin.store import K_SCHEMA, META, SCHEMA_VERSION, Store

pytestmark = pytest.mark.slow


def test_a_datadir_of_a_newer_schema_version(tmp_path: Path) -> None:
    datadir = tmp_path / "node"
    prepare(datadir)
    with Store(str(datadir / "chain")) as store:
        store.put(META, K_SCHEMA, (SCHEMA_VERSION + 1).to_bytes(8, "big"))
    rc, out = run_to_exit(datadir)
    assert rc == 1
    assert f"has schema version {SCHEMA_VERSION + 1}" in one_error_line(out)


def test_a_datadir_of_another_chain(tmp_path: Path) -> None:
    datadir = tmp_path / "node"
    key, _ = prepare(datadir, chain_id="timecoin-other")
    other = tmp_path / "other"
    prepare(other, key=key)                                  # the same key's devnet genesis: another chain
    (datadir / "genesis.json").write_text((other / "genesis.json").read_text())
    rc, out = run_to_exit(datadir)
    assert rc == 1
    assert "belongs to another chain" in one_error_line(out)


def test_a_truncated_node_key(tmp_path: Path) -> None:
    datadir = tmp_path / "node"
    prepare(datadir)
    key_file = datadir / "node.key"
    cut = key_file.read_bytes()[:100]
    key_file.write_bytes(cut)
    rc, out = run_to_exit(datadir)
    assert rc == 1
    assert "cannot load node key" in one_error_line(out)
    assert key_file.read_bytes() == cut                      # left as it was (never replaced by a new key)


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_a_damaged_double_sign_guard_file(tmp_path: Path, damage: str) -> None:
    """A validator that cannot tell what it last signed must not sign: the node refuses to start."""
    datadir = tmp_path / "node"
    prepare(datadir)
    guard = datadir / GUARD_FILE
    guard.write_bytes(bytes(SLOT_BYTES) if damage == "truncated" else os.urandom(2 * SLOT_BYTES))
    rc, out = run_to_exit(datadir)
    assert rc == 1
    line = one_error_line(out)
    assert "double-sign guard file" in line and "cannot tell what it last signed" in line


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with storagenode.tmpfs(tmp_path / "fs", "16m") as where:
        yield where


def test_a_read_only_datadir(tmpfs: Path) -> None:
    """As root, chmod does not stop writes: the datadir's filesystem is remounted read-only instead."""
    datadir = tmpfs / "node"
    prepare(datadir)
    res = subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only: {res.stderr.decode(errors='replace').strip()}")
    rc, out = run_to_exit(datadir)
    assert rc == 1
    line = one_error_line(out)
    assert "Read-only file system" in line and str(datadir) in line
