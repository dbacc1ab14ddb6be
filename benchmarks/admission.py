"""The ``admission`` part (issue 15 target 4): transactions admitted to the mempool per second.

Each transaction arrives as a peer (or ``sendrawtransaction``) hands it to the node: a TX envelope's bytes,
decoded by the wire codec (``messages.decode_message``, canonical bytes only), turned into a
``Transaction`` and given to ``Mempool.add``: every admission check (chain, fee floor, amount, recipient,
signature, nonce chain, balance after the sender's pending txs, caps) against a real LMDB store. The
verified-signature cache is emptied first, so each signature is checked. Senders are distinct funded
accounts with a few pending txs each. Figure: txs/s of the fastest batch of 500 (a shared machine's noise
only adds time), next to raw libsecp256k1 verifies/s on one core
(``baselines.secp_verifies_per_s``); target ratio >= 0.8.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.baselines import secp_verifies_per_s
from benchmarks.suite import Figure, ratio_figure
from timecoin.ledger.tx import VERIFIED, Transaction
from timecoin.mempool import Mempool
from timecoin.sim import chaingen
from timecoin.store import Store
from timecoin.wire import messages as m

MIN_RATIO = 0.8
SENDERS = 1000
BATCH = 500                 # txs per timed batch; the figure is the fastest batch (noise only adds time)


def make_payloads(spec: chaingen.ChainSpec, store: Store, count: int) -> list[bytes]:
    """``count`` TX envelopes of signed transfers, round-robin over the funded senders, nonces in order."""
    builder = chaingen.ChainBuilder(store, spec)
    return [m.encode_message(m.MsgType.TX, tx.to_wire()) for tx in builder.make_transfers(count)]


def admit(pool: Mempool, payloads: list[bytes], batch: int = BATCH) -> list[float]:
    """Seconds to decode and admit each batch of payloads (each must be admitted)."""
    VERIFIED.clear()
    times = []
    for start in range(0, len(payloads), batch):
        t0 = time.perf_counter()
        for payload in payloads[start:start + batch]:
            _, _, body = m.decode_message(payload)
            pool.add(Transaction.from_wire(body))
        times.append(time.perf_counter() - t0)
    if len(pool) != len(payloads):
        raise AssertionError(f"{len(payloads) - len(pool)} txs refused")
    return times


async def run(quick: bool) -> list[Figure]:
    count = 2000 if quick else 10_000
    base = Path(tempfile.mkdtemp(prefix="timecoin-bench-admission-"))
    try:
        spec = chaingen.make_genesis(validators=4, chain_id="timecoin-bench-admission", funded=SENDERS)
        store = Store(str(base / "chain"))
        try:
            payloads = make_payloads(spec, store, count)
            pool = Mempool(spec.genesis.params, store, max_txs=count * 2, max_bytes=count * 1024,
                           min_relay_fee=0, height_fn=lambda: store.tip_height() + 1)
            seconds = min(admit(pool, payloads)) * count / BATCH
        finally:
            store.close()
        baseline = secp_verifies_per_s(0.3 if quick else 1.0)
        return [ratio_figure("admission.tx", round(count / seconds, 1), "txs/s (decode, verify, mempool insert)",
                             round(baseline, 1), "raw libsecp256k1 verifies/s", min_ratio=MIN_RATIO)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
