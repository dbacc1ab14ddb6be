"""The double-sign guard's file: durable, torn-write safe, adopting an older store record, loud on failure."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from timecoin import crypto
from timecoin.consensus.guardfile import SLOT_BYTES, GuardFile, GuardFileError
from timecoin.consensus.privval import PrivValidator
from timecoin.ledger.block import Vote, VoteType

KEY = crypto.PrivateKey(b"\x07" * 32)
CHAIN = "guardfile-test"


def _record(height: int, round_: int = 0, step: int = 2, tail: bytes = b"payload") -> bytes:
    return height.to_bytes(8, "big") + round_.to_bytes(4, "big") + bytes((step,)) + bytes(64) + tail


class Legacy:
    def __init__(self, value: bytes | None) -> None:
        self.value = value

    def get(self, db_name: str, key: bytes) -> bytes | None:
        assert (db_name, key) == ("privval", b"last_signed")
        return self.value


def test_the_latest_record_survives_reopening_and_the_file_never_grows(tmp_path: Path) -> None:
    path = str(tmp_path / "g")
    g = GuardFile(path)
    assert g.get("privval", b"last_signed") is None
    for h in range(1, 6):
        g.put("privval", b"last_signed", _record(h))
    g.close()
    assert os.path.getsize(path) == 2 * SLOT_BYTES
    assert GuardFile(path).get("privval", b"last_signed") == _record(5)


def test_a_write_torn_by_a_crash_falls_back_to_the_previous_record(tmp_path: Path) -> None:
    path = str(tmp_path / "g")
    g = GuardFile(path)
    g.put("privval", b"last_signed", _record(7))
    g.put("privval", b"last_signed", _record(8))     # slot 1 (the first write went to slot 0)
    g.close()
    with open(path, "r+b") as f:                     # the crash: slot 1 half-written
        f.seek(SLOT_BYTES + 20)
        f.write(b"\xff" * 10)
    assert GuardFile(path).get("privval", b"last_signed") == _record(7)


def test_the_newer_of_the_store_record_and_the_file_wins(tmp_path: Path) -> None:
    path = str(tmp_path / "g")
    g = GuardFile(path, legacy=Legacy(_record(3, step=3)))          # an upgraded node: only the store's record
    assert g.get("privval", b"last_signed") == _record(3, step=3)
    g.put("privval", b"last_signed", _record(4))
    g.close()
    again = GuardFile(path, legacy=Legacy(_record(3, step=3)))       # the store's stale record is not adopted
    assert again.get("privval", b"last_signed") == _record(4)


def test_a_guard_on_the_file_refuses_to_sign_below_what_it_signed_before_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "g")
    pv = PrivValidator(KEY, CHAIN, GuardFile(path))
    assert pv.sign_vote(Vote(VoteType.PRECOMMIT, 9, 1, b"\x01" * 32, KEY.address)) is not None
    restarted = PrivValidator(KEY, CHAIN, GuardFile(path))
    assert restarted.sign_vote(Vote(VoteType.PREVOTE, 9, 1, b"\x01" * 32, KEY.address)) is None
    assert restarted.sign_vote(Vote(VoteType.PRECOMMIT, 9, 1, b"\x02" * 32, KEY.address)) is None   # equivocation
    same = restarted.sign_vote(Vote(VoteType.PRECOMMIT, 9, 1, b"\x01" * 32, KEY.address))
    assert same is not None                                                  # the recorded signature again


def test_a_failed_write_is_reported_and_refuses_the_signature(tmp_path: Path) -> None:
    errors: list[str] = []
    g = GuardFile(str(tmp_path / "g"), on_write_error=errors.append)
    os.close(g._fd)                                   # the disk is gone under it
    g._fd = os.open(os.devnull, os.O_RDONLY)
    with pytest.raises(GuardFileError):
        PrivValidator(KEY, CHAIN, g).sign_vote(Vote(VoteType.PREVOTE, 1, 0, b"\x01" * 32, KEY.address))
    assert errors and "guard file" in errors[0]
    assert g.get("privval", b"last_signed") is None   # nothing recorded, nothing handed out


def test_an_unreadable_location_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GuardFileError, match="cannot open the double-sign guard file"):
        GuardFile(str(tmp_path / "missing-dir" / "g"))
