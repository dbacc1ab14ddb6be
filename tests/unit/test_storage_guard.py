"""A damaged double-sign guard file is refused, never read as an older record or as "nothing signed" (issue 16).

The guard file keeps the latest record in one of two slots; a write torn by a crash falls back to the other
slot (``tests/unit/test_guardfile.py``). A file cut short or overwritten is another matter: reading what is left
would hand the guard an older record (or none), and it would then sign again at the (height, round, step) it
signed last -- a conflicting message, if the block or vote differs. So the file must be refused.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from timecoin import crypto
from timecoin.consensus.guardfile import SLOT_BYTES, GuardFile, GuardFileError
from timecoin.consensus.privval import PrivValidator
from timecoin.ledger.block import Vote, VoteType

KEY = crypto.PrivateKey(b"\x16" * 32)
CHAIN = "storage-guard-test"


def _prevote(height: int, block_hash: bytes) -> Vote:
    return Vote(VoteType.PREVOTE, height, 0, block_hash, KEY.address, bytes(64))


def _signed_at_5_in_slot_1(path: str) -> None:
    g = GuardFile(path)
    pv = PrivValidator(KEY, CHAIN, g)
    assert pv.sign_vote(_prevote(4, b"\x04" * 32)) is not None          # slot 0
    assert pv.sign_vote(_prevote(5, b"\x05" * 32)) is not None          # slot 1: the latest
    g.close()


def test_a_guard_file_cut_short_is_refused_not_read_as_the_older_slot(tmp_path: Path) -> None:
    path = str(tmp_path / "privval_state")
    _signed_at_5_in_slot_1(path)
    os.truncate(path, SLOT_BYTES)                     # the latest record is gone, the older one is whole
    with pytest.raises(GuardFileError, match="cannot tell what it last signed"):
        GuardFile(path)


def test_a_garbled_guard_file_is_refused_not_read_as_nothing_signed(tmp_path: Path) -> None:
    path = str(tmp_path / "privval_state")
    _signed_at_5_in_slot_1(path)
    with open(path, "r+b") as f:
        f.write(os.urandom(2 * SLOT_BYTES))
    with pytest.raises(GuardFileError, match="corrupt"):
        GuardFile(path)


def test_a_new_file_of_zeros_is_a_guard_that_signed_nothing(tmp_path: Path) -> None:
    path = tmp_path / "privval_state"
    path.write_bytes(bytes(2 * SLOT_BYTES))
    g = GuardFile(str(path))
    assert g.get("privval", b"last_signed") is None
    g.close()
