"""The ``codec`` part: wire codec and signature rates, each next to a raw baseline of the same run.

* Wire codec: guarded decode (``Codec.decode``: canonical bytes only) and encode per second of a
  transaction, a vote, a tx envelope, a vote envelope and a 1,000-tx block, next to construct's raw
  compiled parse (decode) and build (encode) of the same bytes and values. No targets: these explain the
  ingestion, admission and apply figures (parts ``ingest``, ``admission``, ``apply``).
* ``Transaction.verify_signature`` of fresh transactions (the verified-signature cache emptied, so every
  call verifies) per second, next to raw libsecp256k1 verifies per second (``baselines.secp_verifies_per_s``).
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from benchmarks.baselines import secp_verifies_per_s
from benchmarks.suite import Figure, ratio_figure
from timecoin import crypto
from timecoin.ledger.block import Block, Header, Vote, VoteType, evidence_root, tx_root
from timecoin.ledger.tx import VERIFIED, Transaction, TxKind
from timecoin.wire import messages

CHAIN = "timecoin-bench"
MAX_CALLS = 10_000_000


def rate(fn: Callable[[], object], seconds: float, batch: int = 100) -> float:
    """Calls per second of ``fn`` over at least ``seconds`` (bounded: at most MAX_CALLS calls)."""
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds or n >= MAX_CALLS:
            return n / elapsed


def sample_values() -> list[tuple[str, messages.Codec, bytes]]:
    """One encoded value per hot message: a tx, a vote, tx and vote envelopes, and a 1,000-tx block."""
    key = crypto.PrivateKey(hashlib.sha256(b"bench").digest())
    txs = [Transaction.create(key, TxKind.TRANSFER, CHAIN, i, 1000, 5 * 10**8, b"\x11" * 20) for i in range(1000)]
    vote = Vote(VoteType.PREVOTE, 10, 0, b"\x22" * 32, key.address).signed(key, CHAIN)
    header = Header(10, 0, b"\x33" * 32, 1_700_000_000_000, key.address, tx_root(txs), b"\x44" * 32,
                    b"\x55" * 32, evidence_root(()))
    block = Block(header, tuple(txs))
    tx_env = messages.encode_message(messages.MsgType.TX, txs[0].to_wire())
    vote_env = messages.encode_message(messages.MsgType.VOTE, vote.to_wire())
    return [("tx", messages.TX, txs[0].encoded), ("vote", messages.VOTE, vote.encoded),
            ("envelope_tx", messages.ENVELOPE, tx_env), ("envelope_vote", messages.ENVELOPE, vote_env),
            ("block_1000tx", messages.BLOCK, block.encoded)]


def codec_figures(seconds: float) -> list[Figure]:
    figures = []
    for name, codec, data in sample_values():
        value = codec.decode(data)
        batch = 1 if len(data) > 10_000 else 100
        ours = rate(lambda c=codec, d=data: c.decode(d), seconds, batch)                  # type: ignore[misc]
        raw = rate(lambda p=codec.compiled.parse, d=data: p(d), seconds, batch)           # type: ignore[misc]
        figures.append(ratio_figure(f"codec.decode.{name}", round(ours, 1), f"decodes/s ({len(data)} B)",
                                    round(raw, 1), "raw construct compiled parses/s"))
        ours = rate(lambda c=codec, v=value: c.encode(v), seconds, batch)                 # type: ignore[misc]
        raw = rate(lambda b=codec.compiled.build, v=value: b(v), seconds, batch)          # type: ignore[misc]
        figures.append(ratio_figure(f"codec.encode.{name}", round(ours, 1), "encodes/s",
                                    round(raw, 1), "raw construct compiled builds/s"))
    return figures


def verify_figure(n: int, seconds: float) -> Figure:
    """``Transaction.verify_signature`` of ``n`` fresh decoded txs (cache emptied) against raw verifies/s."""
    keys = [crypto.PrivateKey(hashlib.sha256(b"k%d" % i).digest()) for i in range(16)]
    txs = [Transaction.create(keys[i % 16], TxKind.TRANSFER, CHAIN, i, 1000, 1, b"\x33" * 20) for i in range(n)]
    fresh = [Transaction.decode(tx.encoded) for tx in txs]
    VERIFIED.clear()
    t0 = time.perf_counter()
    for tx in fresh:
        tx.verify_signature()
    ours = n / (time.perf_counter() - t0)
    return ratio_figure("codec.tx_verify_signature", round(ours, 1), "verifies/s",
                        round(secp_verifies_per_s(seconds), 1), "raw libsecp256k1 verifies/s")


async def run(quick: bool) -> list[Figure]:
    seconds = 0.1 if quick else 1.0
    return [*codec_figures(seconds), verify_figure(1000 if quick else 5000, 0.3 if quick else 1.0)]
