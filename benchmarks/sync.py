"""The ``sync`` part: an empty node catches up certified chains from 3 peers on 127.0.0.1, at default settings.

Figures (issue 15, target 6), each beside the raw libsecp256k1 verify rate of the same run
(``baselines.secp_verifies_per_s``: signature checking is the floor of what sync does per block -- every
precommit of every certificate, every tx):

* ``sync.empty.blocks_per_s``: 5,000 empty blocks (4-validator certificates), blocks/s; target >= 1,000.
  ``sync.empty.vs_verify`` is the same figure over raw verifies/s, for information.
* ``sync.tx100.tx_per_s``: blocks of 100 signed transfers (1,000 of them: 100,000 txs), tx/s over raw
  single-core verifies/s; target >= 1.2 (signatures verified on both cores: ``timecoin/sync/verify.py``).
* ``sync.verify_threads_speedup``: verifies/s of 2 threads over 1 through ``crypto.verify_digest`` (the
  coincurve cffi call releases the GIL when the ratio is near 2 on 2 free cores), for information.

Setup: ``timecoin.sim.chaingen`` builds each chain once; its LMDB files are copied into 3 source datadirs.
The sources and the syncing node are the production service tree (``timecoin.node.build_node``) on this
process's reactor, real LMDB and libp2p TLS 1.3 over loopback, all at the node defaults for limits
(``rate_limit`` 100/min, burst 20; ``sync_response_bytes`` 4 MiB): what a node syncing from the network
meets. The sources are observers whose consensus never moves (a day's timeouts), the syncing node an
empty observer of the same genesis; it is given the 3 addresses and syncs by itself. Time runs from its
first ready connection to the last block applied. Everything shares one reactor thread (the sources'
serving too), so the figure is a lower bound for separate machines. The ledger's verified-signature
cache is emptied before each sync (the builder filled it), so every signature is really checked.

``--quick``: 500 empty blocks and 20 tx blocks (the CI smoke: well under 30 s).
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer

from benchmarks.baselines import secp_verifies_per_s
from benchmarks.suite import Figure, ratio_figure, value_figure
from timecoin import crypto
from timecoin.ledger.tx import VERIFIED
from timecoin.node import Node, build_node
from timecoin.sim.chaingen import ChainBuilder, ChainSpec, make_genesis
from timecoin.sim.loopnet import make_keys, node_config, reactor, sleep, wait_for
from timecoin.store import Store

SOURCES = 3
VALIDATORS = 4
FUNDED = 4                         # funded accounts: 8 senders share each block's 100 transfers
TXS_PER_BLOCK = 100
QUIET = "86400"                    # a day: the sources never propose, vote or time out
POLL = 0.02                        # seconds between tip checks while syncing
STALL_S = 30.0                     # no progress for this long: the run ends (reported as it stands)
SYNC_TIMEOUT_S = 600.0


def _chain(base: Path, spec: ChainSpec, blocks: int, txs: int) -> Path:
    path = base / f"chain-{blocks}x{txs}"
    with Store(str(path)) as store:
        ChainBuilder(store, spec).build(blocks, txs)
    return path


def _quiet(base: Path, name: str) -> Any:
    return node_config(base, name, block_interval=QUIET, timeout_propose=QUIET, timeout_prevote=QUIET,
                       timeout_precommit=QUIET, ping_interval="15")


async def sync_once(base: Path, spec: ChainSpec, chain: Path, name: str, target: int) -> dict[str, Any]:
    """3 sources on copies of ``chain`` and one empty node: (seconds from first connection to target, height)."""
    keys = make_keys(SOURCES + 1, seed=100)
    configs = [_quiet(base, f"{name}-src{i}") for i in range(SOURCES)]
    for config in configs:
        shutil.copytree(chain, Path(config.datadir) / "chain")
    sources: list[Node] = [build_node(c, keys[i], spec.genesis, reactor) for i, c in enumerate(configs)]
    syncing = build_node(_quiet(base, f"{name}-sync"), keys[SOURCES], spec.genesis, reactor)
    nodes = [*sources, syncing]
    try:
        for node in nodes:
            node.startService()
        await wait_for(lambda: all(n.p2p.listen_addr for n in nodes), 10.0, "listening")
        VERIFIED.__init__()  # type: ignore[misc]   # forget what the builder verified: every check is real
        for src in sources:
            syncing.p2p.peerstore.add(src.p2p.listen_addr, "bootstrap", reactor.seconds())
        t_conn: float | None = None
        height, t_progress = 0, time.perf_counter()
        deadline = t_progress + SYNC_TIMEOUT_S
        for _ in range(int(SYNC_TIMEOUT_S / POLL) + 2):              # bounded in count and time
            now = time.perf_counter()
            if t_conn is None and any(c.state == "ready" for c in syncing.p2p.connections.values()):
                t_conn = now
            tip = syncing.store.tip_height()
            if tip != height:
                height, t_progress = tip, now
            if height >= target or now > deadline or now - t_progress > STALL_S:
                break
            await sleep(POLL)
        if t_conn is None:
            raise AssertionError(f"{name}: the syncing node never connected")
        if syncing.store.block_hash_at(height) != sources[0].store.block_hash_at(height):
            raise AssertionError(f"{name}: synced another chain")
        return {"height": height, "seconds": max(t_progress - t_conn, 1e-6)}
    finally:
        for node in nodes:
            if node.running:
                await defer.maybeDeferred(node.stopService)
        await sleep(0.1)


def verify_threads_speedup(seconds: float) -> float:
    """Verifies/s of 2 threads over 1 through ``crypto.verify_digest``: ~2 when the GIL is released."""
    keys = [crypto.PrivateKey(hashlib.sha256(b"gil %d" % i).digest()) for i in range(32)]
    triples = [(k.public_key, d, k.sign_digest(d)) for k in keys for d in [hashlib.sha256(k.public_key).digest()]]

    def work(stop: float, out: list[int]) -> None:
        n = 0
        for _ in range(10_000_000):                                  # bounded in count and time
            for pub, digest, sig in triples:
                if not crypto.verify_digest(pub, digest, sig):
                    raise AssertionError("signature does not verify")
            n += len(triples)
            if time.perf_counter() >= stop:
                break
        out.append(n)

    rates = []
    for n_threads in (1, 2):
        out: list[int] = []
        t0 = time.perf_counter()
        threads = [threading.Thread(target=work, args=(t0 + seconds, out)) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rates.append(sum(out) / (time.perf_counter() - t0))
    return rates[1] / rates[0]


async def run(quick: bool) -> list[Figure]:
    empty_blocks, tx_blocks = (500, 20) if quick else (5000, 1000)
    raw = secp_verifies_per_s(0.3 if quick else 1.0)
    speedup = verify_threads_speedup(0.3 if quick else 1.0)
    spec = make_genesis(VALIDATORS, chain_id="timecoin-bench-sync", funded=FUNDED)
    base = Path(tempfile.mkdtemp(prefix="tc-bench-sync-"))
    try:
        empty = await sync_once(base, spec, _chain(base, spec, empty_blocks, 0), "empty", empty_blocks)
        txs = await sync_once(base, spec, _chain(base, spec, tx_blocks, TXS_PER_BLOCK), "tx", tx_blocks)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    empty_rate = empty["height"] / empty["seconds"]
    tx_rate = txs["height"] * TXS_PER_BLOCK / txs["seconds"]
    return [value_figure("sync.empty.blocks_per_s", round(empty_rate, 1), "blocks/s", at_least=1000),
            ratio_figure("sync.empty.vs_verify", round(empty_rate, 1), "blocks/s", round(raw, 1), "verifies/s"),
            ratio_figure("sync.tx100.tx_per_s", round(tx_rate, 1), "tx/s", round(raw, 1), "verifies/s (1 core)",
                         min_ratio=1.2),
            Figure("sync.verify_threads_speedup", round(speedup, 2), "x (2 threads over 1)")]
