"""A cold block's signatures are checked on two threads first; validity is still decided by execution."""
from __future__ import annotations

import dataclasses
import hashlib
import threading

import pytest

from timecoin import crypto
from timecoin.ledger import preverify as pv
from timecoin.ledger.tx import VERIFIED, Transaction, TxKind

CHAIN = "preverify-test"
KEYS = [crypto.PrivateKey(hashlib.sha256(b"pv%d" % i).digest()) for i in range(8)]


def _txs(n: int) -> list[Transaction]:
    return [Transaction.create(KEYS[i % 8], TxKind.TRANSFER, CHAIN, i, 1000, 1, b"\x33" * 20) for i in range(n)]


@pytest.fixture(autouse=True)
def _cold() -> None:
    VERIFIED.clear()


def test_good_signatures_are_recorded_and_a_forged_one_is_not() -> None:
    txs = _txs(100)
    forged = dataclasses.replace(txs[57], amount=2)        # same signature over other bytes
    txs[57] = forged
    assert pv.preverify(txs) == 100
    assert forged.id not in VERIFIED
    assert all(tx.id in VERIFIED for i, tx in enumerate(txs) if i != 57)


def test_half_of_the_work_runs_on_the_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int]] = []
    real = pv._good

    def spy(txs: list[Transaction]) -> list[bytes]:
        seen.append((threading.current_thread().name, len(txs)))
        return real(txs)

    monkeypatch.setattr(pv, "_good", spy)
    pv.preverify(_txs(80))
    assert sorted(n for _, n in seen) == [40, 40]
    assert any(name.startswith("timecoin-verify") for name, _ in seen)
    assert any(name == threading.current_thread().name for name, _ in seen)


def test_few_or_already_verified_txs_are_left_to_execution() -> None:
    assert pv.preverify(_txs(pv.MIN_TXS - 1)) == 0 and len(VERIFIED) == 0
    txs = _txs(100)
    for tx in txs[:50]:
        tx.verify_signature()
    assert pv.preverify(txs) == 0                           # 50 left: below MIN_TXS
