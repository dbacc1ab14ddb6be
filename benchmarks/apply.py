"""The ``apply`` part (issue 15 target 5): 1,000-tx blocks validated, applied and committed, cold.

A certified chain of blocks of 1,000 transfers (distinct senders, as a busy chain has) is built by
:mod:`timecoin.sim.chaingen` into one LMDB store; a second, fresh store with the same genesis then takes
each block as a node finalizing or syncing it does: ``Block.decode`` of its bytes, ``verify_certificate``,
``ledger.state.validate_block`` (every check, every signature, the state root) and ``Store.commit_block``
(one fsynced LMDB write). The verified-signature cache (``timecoin.ledger.tx.VERIFIED``) is emptied first,
so every signature is really checked. Figure: txs/s of the fastest block (each does the same work, and on
a shared machine noise only adds time), next to raw libsecp256k1
verifies/s on one core (``baselines.secp_verifies_per_s``); target ratio >= 0.6.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.baselines import secp_verifies_per_s
from benchmarks.suite import Figure, ratio_figure
from timecoin.ledger.block import Block, CommitCertificate, verify_certificate
from timecoin.ledger.state import validate_block
from timecoin.ledger.tx import VERIFIED
from timecoin.sim import chaingen
from timecoin.store import Store

TXS_PER_BLOCK = 1000
MIN_RATIO = 0.6


def build_source(base: Path, blocks: int, txs: int = TXS_PER_BLOCK) -> tuple[chaingen.ChainSpec,
                                                                             list[tuple[bytes, bytes]]]:
    """A chain of ``blocks`` blocks of ``txs`` transfers; returns its spec and each (block, cert) encoding."""
    spec = chaingen.make_genesis(validators=4, chain_id="timecoin-bench-apply", funded=txs)
    builder = chaingen.build_chain(str(base / "source"), spec, blocks, txs)
    try:
        out = []
        for h in range(1, blocks + 1):
            raw, cert = builder.store.get_block_bytes(h), builder.store.get_certificate(h)
            assert raw is not None and cert is not None
            out.append((raw, cert.encoded))
        return spec, out
    finally:
        builder.store.close()


def apply_blocks(store: Store, spec: chaingen.ChainSpec, blocks: list[tuple[bytes, bytes]]) -> list[float]:
    """Seconds to decode, verify, validate and commit each of ``blocks`` on ``store`` (a node's path, cold cache)."""
    params = spec.genesis.params
    VERIFIED.clear()
    times = []
    # The parent's timestamp as a node has it (ChainApp remembers its tip's): read once here, then carried
    # from block to block, not read back from the store inside the timed work.
    tip = store.tip_height()
    prev = store.get_block(tip) if tip > 0 else None
    prev_ts = prev.header.timestamp if prev is not None else spec.genesis.genesis_time
    for raw, cert_raw in blocks:
        t0 = time.perf_counter()
        block = Block.decode(raw)
        cert = CommitCertificate.decode(cert_raw)
        height = store.tip_height() + 1
        validators = store.validator_set(height)
        assert validators is not None
        verify_certificate(block, cert, validators, spec.genesis.chain_id)
        result = validate_block(store, params, block, store.tip_hash(), prev_ts)
        store.commit_block(block, cert, result)
        prev_ts = block.header.timestamp
        times.append(time.perf_counter() - t0)
    return times


async def run(quick: bool) -> list[Figure]:
    blocks = 2 if quick else 6
    base = Path(tempfile.mkdtemp(prefix="timecoin-bench-apply-"))
    try:
        spec, encoded = build_source(base, blocks)
        store = Store(str(base / "target"))
        try:
            chaingen.initialize(store, spec.genesis)
            seconds = min(apply_blocks(store, spec, encoded))      # equal work each: noise only adds time
            assert store.tip_height() == blocks
        finally:
            store.close()
        rate = TXS_PER_BLOCK / seconds
        baseline = secp_verifies_per_s(0.3 if quick else 1.0)
        return [ratio_figure("apply.block_1000tx_cold", round(rate, 1), "txs/s (decode, validate, apply, commit)",
                             round(baseline, 1), "raw libsecp256k1 verifies/s", min_ratio=MIN_RATIO)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
