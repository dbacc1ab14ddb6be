"""Signatures of synced blocks checked on worker threads, ahead of the in-order apply (issue 15, SPEC §6).

libsecp256k1 is reached through coincurve's cffi binding, and cffi releases the GIL around the C call:
two threads verify at ~1.8x one (``benchmarks/sync.py`` reports it as ``sync.verify_threads_speedup``).
So while the reactor thread applies one range, :class:`Preverifier` checks the signatures of the ranges
that arrived after it -- every tx signature and every precommit of every certificate -- on a small
thread pool, and records those that verify in the ledger's verified-signature cache (``ledger/tx.py``
``VERIFIED``, under the very keys ``Transaction.verify_signature`` and ``Vote.verify_signature`` use).
The apply then finds them verified.

Nothing here decides validity: a signature that fails is simply not recorded, and the apply checks it
again on the reactor thread, refuses the block and charges its server exactly as before. A precommit's
public key is taken from the validator set our store holds for the block's height (or the newest one it
holds): were the set different at that height, the key would not be the one the apply looks up, and the
apply would verify that precommit itself. The cache is only written on the reactor thread.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from timecoin import crypto
from timecoin.ledger.block import Block, CommitCertificate, Vote
from timecoin.ledger.tx import VERIFIED, Transaction
from timecoin.store import Store

Items = Sequence[tuple[Block, CommitCertificate]]
THREADS = 2                        # the machine's cores: the reactor thread mostly waits on them meanwhile
MIN_SLICE = 64                     # signatures per worker job at least (a job costs a thread hand-off)
Job = tuple[list[Transaction | Vote], dict[bytes, bytes]]     # (txs and votes, validator address -> pubkey)


def check(objects: list[Transaction | Vote], pubkeys: dict[bytes, bytes], chain_id: str) -> list[bytes]:
    """Verify ``objects`` (Transactions and Votes); the cache keys of those whose signature verifies.

    Runs on a worker thread: reads only its arguments (and the cache, to skip known ones), writes nothing
    shared. ``Vote`` keys are its id, the public key and the chain id, as ``Vote.verify_signature`` keys them.
    """
    chain = chain_id.encode()
    out: list[bytes] = []
    for obj in objects:
        if isinstance(obj, Transaction):
            key = obj.id
            if key not in VERIFIED and crypto.verify(obj.sender, crypto.TAG_TX, obj.chain_id,
                                                     obj.signing_payload(), obj.signature):
                out.append(key)
            continue
        pubkey = pubkeys.get(obj.validator)
        if pubkey is None:
            continue
        key = obj.id + pubkey + chain
        if key not in VERIFIED and crypto.verify(pubkey, crypto.TAG_VOTE, chain_id, obj.signing_payload(),
                                                 obj.signature):
            out.append(key)
    return out


class Preverifier:
    """Checks the signatures of synced ranges on ``THREADS`` worker threads; :meth:`warm` fills the cache."""

    def __init__(self, reactor: Any, store: Store, chain_id: str, threads_: int = THREADS) -> None:
        self.reactor = reactor
        self.store = store
        self.chain_id = chain_id
        self.threads = max(1, threads_)
        self._pool: ThreadPool | None = None
        self.verified = 0                          # signatures recorded (tests, metrics)
        self._pending: set[defer.Deferred[int]] = set()

    def stop(self) -> None:
        """Stop the workers; warm-ups still pending fire with 0 (their blocks are verified by the apply)."""
        for done in list(self._pending):
            done.callback(0)
        self._pending.clear()
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    def _started(self) -> ThreadPool:
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=self.threads, name="sync-verify")
            self._pool.start()
        return self._pool

    def _pubkeys(self, height: int) -> dict[bytes, bytes]:
        store = self.store
        vs = store.validator_set(min(height, store.tip_height() + 2)) if not store.closed else None
        return {address: v.pubkey for address, v in vs.by_address.items()} if vs is not None else {}

    def jobs(self, items: Items) -> list[Job]:
        """The signatures of ``items`` cut into about ``threads`` jobs (reactor thread: reads the store)."""
        if not items:
            return []
        pubkeys = self._pubkeys(items[0][0].height)
        objects: list[Transaction | Vote] = []
        for block, cert in items:
            objects.extend(block.txs)
            objects.extend(cert.votes())
        size = max(MIN_SLICE, -(-len(objects) // self.threads))
        return [(objects[i:i + size], pubkeys) for i in range(0, len(objects), size)]

    def warm(self, items: Items) -> defer.Deferred[int]:
        """Verify the signatures of ``items`` on the pool; fires with how many were recorded (never fails)."""
        pool = self._started()
        runs = [threads.deferToThreadPool(self.reactor, pool, check, objects, pubkeys, self.chain_id)
                for objects, pubkeys in self.jobs(items)]

        done: defer.Deferred[int] = defer.Deferred()
        self._pending.add(done)

        def record(results: list[tuple[bool, Any]]) -> None:
            n = 0
            for ok, keys in results:
                if ok:
                    for key in keys:
                        VERIFIED.add(key)
                    n += len(keys)
            self.verified += n
            if done in self._pending:                # not already fired by stop()
                self._pending.discard(done)
                done.callback(n)
        defer.DeferredList(runs, consumeErrors=True).addCallback(record)
        return done
