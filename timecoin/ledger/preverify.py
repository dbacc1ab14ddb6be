"""A block's transaction signatures checked on two cores before its in-order execution (issue 15).

libsecp256k1 is reached through coincurve's cffi binding, and cffi releases the GIL around the C call, so
a second thread verifies while this one does (``sync.verify_threads_speedup`` measures ~1.9x). For a
block with many transactions not yet verified (a cold block: one received by fetch or sync, a proposal
whose txs never reached our mempool, the ``apply`` benchmark), half of them are verified on one worker
thread while the calling thread verifies the other half; the ids of those that verify go into the
ledger's verified-signature cache, where ``Transaction.verify_signature`` finds them during execution.

Nothing here decides validity: a signature that fails is not recorded, and execution checks it again and
refuses the block exactly as before. The worker reads only its own half of the transactions; the cache is
written on the calling thread once both halves are done.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from timecoin import crypto
from timecoin.ledger.tx import VERIFIED, Transaction

MIN_TXS = 64                       # below this a thread hand-off costs more than half the verifies save
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _worker() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="timecoin-verify")
        return _pool


def _good(txs: Sequence[Transaction]) -> list[bytes]:
    """Ids of ``txs`` whose signature verifies (reads only the transactions it is given)."""
    return [tx.id for tx in txs
            if crypto.verify(tx.sender, crypto.TAG_TX, tx.chain_id, tx.signing_payload(), tx.signature)]


def preverify(txs: Sequence[Transaction]) -> int:
    """Verify the not-yet-verified signatures of ``txs`` on two threads; returns how many were checked."""
    # tx.id (and with it the cached encoding signing_payload slices) is computed here, on this thread:
    # the worker then only reads the objects it is given.
    todo = [tx for tx in txs if tx.id not in VERIFIED]
    if len(todo) < MIN_TXS:
        return 0
    half = len(todo) // 2
    theirs = _worker().submit(_good, todo[half:])
    good = _good(todo[:half]) + theirs.result()
    for key in good:
        VERIFIED.add(key)
    return len(todo)
