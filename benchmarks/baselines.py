"""Raw baselines that every figure of the suite is divided by, measured once per run on this machine.

Each is the physical floor of the work a figure does, without any of our code on top:

* ``secp_verifies_per_s``: libsecp256k1 ECDSA verifies per second on one core, through coincurve's cffi
  binding (parse the compact signature, verify a 32-byte digest against a parsed public key). Signature
  checking is the floor of ingestion, admission, block apply and sync.
* ``lmdb_commits_per_s``: fsynced LMDB write transactions per second (one small put each, ``sync=True``,
  ``metasync=True``, the store's own settings) in a fresh environment under ``folder``. A finalized height
  costs at least one such commit, so it bounds heights/s on this disk.

Results are memoized per process and argument, so the parts of one run share one measurement (the
ratio of two figures of one run then means something even on a noisy machine).
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import time

import coincurve
import lmdb
from coincurve._libsecp256k1 import ffi, lib

from benchmarks.suite import Figure

SIGNATURES = 256          # distinct (key, digest, signature) triples cycled through
# The baseline is the best of several short windows, as the parts that divide by it report their best batch:
# noise only ever slows a window down, so both sides of a ratio are then measured the same way.
WINDOWS = 5


@functools.cache
def secp_verifies_per_s(seconds: float = 1.0) -> float:
    """Raw libsecp256k1 verifies per second (one core, this thread): the best of WINDOWS windows over ``seconds``."""
    ctx = coincurve.context.GLOBAL_CONTEXT.ctx
    triples = []
    for i in range(SIGNATURES):
        key = coincurve.PrivateKey(hashlib.sha256(b"baseline key %d" % i).digest())
        digest = hashlib.sha256(b"baseline message %d" % i).digest()
        sig = key.sign_recoverable(digest, hasher=None)[:64]
        triples.append((key.public_key.public_key, digest, sig))
    best = 0.0
    for _ in range(WINDOWS):
        n, t0 = 0, time.perf_counter()
        deadline = t0 + seconds / WINDOWS
        while True:
            for pub, digest, sig in triples:
                parsed = ffi.new("secp256k1_ecdsa_signature *")
                lib.secp256k1_ecdsa_signature_parse_compact(ctx, parsed, sig)
                if not lib.secp256k1_ecdsa_verify(ctx, parsed, digest, pub):
                    raise AssertionError("baseline signature does not verify")
            n += len(triples)
            now = time.perf_counter()
            if now >= deadline or n >= 10_000_000:
                break
        best = max(best, n / (now - t0))
    return best


@functools.cache
def lmdb_commits_per_s(seconds: float = 1.0, folder: str | None = None) -> float:
    """Fsynced LMDB write transactions per second (one 64-byte put each) in a fresh env on ``folder``'s disk."""
    tmp = tempfile.mkdtemp(prefix="tc-bench-lmdb-", dir=folder)
    try:
        env = lmdb.open(tmp, map_size=64 << 20, sync=True, metasync=True)
        try:
            value = os.urandom(64)
            n, t0 = 0, time.perf_counter()
            deadline = t0 + seconds
            while True:
                with env.begin(write=True) as txn:
                    txn.put(n.to_bytes(8, "big"), value)
                n += 1
                now = time.perf_counter()
                if now >= deadline or n >= 1_000_000:
                    return n / (now - t0)
        finally:
            env.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def run(quick: bool) -> list[Figure]:
    """The ``baselines`` part: the raw figures themselves, so a reader sees what every ratio divides by."""
    seconds = 0.3 if quick else 1.0
    return [Figure("baseline.secp256k1_verify", round(secp_verifies_per_s(seconds), 1), "verifies/s"),
            Figure("baseline.lmdb_fsynced_commit", round(lmdb_commits_per_s(seconds), 1), "commits/s")]
