"""Codec and signature rates, each next to a baseline measured in the same run.

* Wire codec: encode/decode per second of a transaction, a vote, a 1,000-tx block and a tx envelope,
  next to construct's raw compiled parse of the same bytes (our guarded decode = compiled parse +
  rebuild + compare, so about a third of raw parse speed is expected); encode is construct's build.
* Transaction verification: ``Transaction.verify_signature`` (fresh txs, no cache hits) per second next
  to raw libsecp256k1 (coincurve) verifies per second of the same signatures and digests.

Run: ``python benchmarks/bench_codec.py`` (or ``tox -e bench``). Prints one line per figure.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import coincurve  # noqa: E402

from timecoin import crypto  # noqa: E402
from timecoin.ledger.block import Block, Header, Vote, VoteType, evidence_root, tx_root  # noqa: E402
from timecoin.ledger.tx import VERIFIED, Transaction, TxKind  # noqa: E402
from timecoin.wire import messages  # noqa: E402

CHAIN = "timecoin-bench"
MIN_SECONDS = float(os.environ.get("BENCH_SECONDS", "1.0"))


def rate(fn: Callable[[], object], batch: int = 100) -> float:
    """Calls per second of ``fn``, over at least MIN_SECONDS (bounded: at most 10^7 calls)."""
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= MIN_SECONDS or n >= 10_000_000:
            return n / elapsed


def report(name: str, value: float, baseline_name: str, baseline: float) -> None:
    print(f"{name:<40} {value:>12,.0f}/s   {baseline_name:<32} {baseline:>12,.0f}/s   ratio {value / baseline:.2f}")


def sample_values() -> list[tuple[str, messages.Codec, bytes]]:
    """One encoded value per hot message: a tx, a vote, a tx envelope and a 1,000-tx block."""
    key = crypto.PrivateKey(hashlib.sha256(b"bench").digest())
    txs = [Transaction.create(key, TxKind.TRANSFER, CHAIN, i, 1000, 5 * 10**8, b"\x11" * 20) for i in range(1000)]
    vote = Vote(VoteType.PREVOTE, 10, 0, b"\x22" * 32, key.address).signed(key, CHAIN)
    header = Header(10, 0, b"\x33" * 32, 1_700_000_000_000, key.address, tx_root(txs), b"\x44" * 32,
                    b"\x55" * 32, evidence_root(()))
    block = Block(header, tuple(txs))
    envelope = messages.encode_message(messages.MsgType.TX, txs[0].to_wire())
    return [("Tx", messages.TX, txs[0].encoded), ("Vote", messages.VOTE, vote.encoded),
            ("Envelope(tx)", messages.ENVELOPE, envelope), ("Block(1000 txs)", messages.BLOCK, block.encoded)]


def bench_codec() -> None:
    for name, codec, data in sample_values():
        value = codec.decode(data)
        batch = 1 if len(data) > 10_000 else 100
        report(f"decode {name} ({len(data)} B)", rate(lambda c=codec, d=data: c.decode(d), batch),
               "raw construct compiled parse", rate(lambda p=codec.compiled.parse, d=data: p(d), batch))
        report(f"encode {name}", rate(lambda c=codec, v=value: c.encode(v), batch),
               "raw construct compiled build", rate(lambda b=codec.compiled.build, v=value: b(v), batch))


def bench_verify(n: int = 3000) -> None:
    keys = [crypto.PrivateKey(hashlib.sha256(b"k%d" % i).digest()) for i in range(16)]
    txs = [Transaction.create(keys[i % 16], TxKind.TRANSFER, CHAIN, i, 1000, 1, b"\x33" * 20) for i in range(n)]
    digests = [crypto.signing_digest(crypto.TAG_TX, CHAIN, tx.signing_payload()) for tx in txs]
    pubs = [coincurve.PublicKey(tx.sender) for tx in txs]
    sigs = [tx.signature for tx in txs]
    raw = [(pub, digest, sig) for pub, digest, sig in zip(pubs, digests, sigs, strict=True)]

    def raw_verify() -> float:
        from coincurve._libsecp256k1 import ffi, lib
        ctx = coincurve.context.GLOBAL_CONTEXT.ctx
        t0 = time.perf_counter()
        for pub, digest, sig in raw:
            parsed = ffi.new("secp256k1_ecdsa_signature *")
            lib.secp256k1_ecdsa_signature_parse_compact(ctx, parsed, sig)
            assert lib.secp256k1_ecdsa_verify(ctx, parsed, digest, pub.public_key)
        return len(raw) / (time.perf_counter() - t0)

    def ours() -> float:
        fresh = [Transaction.decode(tx.encoded) for tx in txs]
        VERIFIED.__init__()  # type: ignore[misc] - empty the verified-id cache: every verify is real
        t0 = time.perf_counter()
        for tx in fresh:
            tx.verify_signature()
        return len(fresh) / (time.perf_counter() - t0)

    report(f"tx verify_signature ({n} fresh txs)", ours(), "raw libsecp256k1 verify", raw_verify())


if __name__ == "__main__":
    print(f"# timecoin codec/signature benchmark, python {sys.version.split()[0]}")
    bench_codec()
    bench_verify()
