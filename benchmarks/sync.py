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
* ``sync.empty.blocks_per_reactor_cpu_s``, ``sync.tx100.tx_per_reactor_cpu_s``: the same syncs over the
  CPU time of the syncing node's reactor thread (the signature workers excluded): what sync would reach
  if that thread had a core to itself, and a figure other load on a shared machine barely moves.

Setup: ``timecoin.sim.chaingen`` builds each chain once. The 3 sources run in one child process
(``python -m benchmarks.sync serve``: a real node's peers run elsewhere, so their serving is not charged
to the syncing node's reactor thread; on this 2-core machine they still share the cores), each on its own
copy of the chain; the syncing node runs in this process. All are the production service tree
(``timecoin.node.build_node``), real LMDB and libp2p TLS 1.3 over loopback, at the node defaults for
limits (``rate_limit`` 100/min, burst 20; ``sync_response_bytes`` 4 MiB): what a node syncing from the
network meets. The sources are observers whose consensus never moves (a day's timeouts), the syncing
node an empty observer of the same genesis; it is given the 3 addresses and syncs by itself. Time runs
from its first ready connection to the last block applied. The ledger's verified-signature cache is
emptied before each sync (the builder filled it), so every signature is really checked.

``--quick``: 500 empty blocks and 20 tx blocks (the CI smoke: well under 30 s).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task, threads

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
CHAIN_ID = "timecoin-bench-sync"
GENESIS_SEED = 7
ROOT = str(Path(__file__).resolve().parent.parent)


def _spec(genesis_time: int) -> ChainSpec:
    return make_genesis(VALIDATORS, chain_id=CHAIN_ID, seed=GENESIS_SEED, funded=FUNDED, genesis_time=genesis_time)


def _chain(base: Path, spec: ChainSpec, blocks: int, txs: int) -> Path:
    path = base / f"chain-{blocks}x{txs}"
    with Store(str(path)) as store:
        ChainBuilder(store, spec).build(blocks, txs)
    return path


def _quiet(base: Path, name: str) -> Any:
    return node_config(base, name, block_interval=QUIET, timeout_propose=QUIET, timeout_prevote=QUIET,
                       timeout_precommit=QUIET, ping_interval="15")


async def serve(chain: str, base: str, genesis_time: int) -> None:
    """The child process: 3 sources on copies of ``chain`` under ``base``; prints their addresses (one JSON
    line), then serves until its stdin closes (the parent ended or was killed)."""
    spec = _spec(genesis_time)
    keys = make_keys(SOURCES + 1, seed=100)
    configs = [_quiet(Path(base), f"src{i}") for i in range(SOURCES)]
    for config in configs:
        shutil.copytree(chain, Path(config.datadir) / "chain")
    sources = [build_node(c, keys[i], spec.genesis, reactor) for i, c in enumerate(configs)]
    for node in sources:
        node.startService()
    await wait_for(lambda: all(n.p2p.listen_addr for n in sources), 10.0, "listening")
    print(json.dumps([n.p2p.listen_addr for n in sources]), flush=True)
    await threads.deferToThread(sys.stdin.read)                    # until the parent closes our stdin
    for node in sources:
        await defer.maybeDeferred(node.stopService)


class Sources:
    """The 3 serving nodes in a child process (``python -m benchmarks.sync serve``): a real node's peers
    run elsewhere, so their serving work is not charged to the syncing node's reactor thread."""

    def __init__(self, chain: Path, base: Path, genesis_time: int) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.sync", "serve", str(chain), str(base),
                                      str(genesis_time)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=ROOT, env=env, text=True)
        self.addrs: list[str] = []

    async def start(self) -> list[str]:
        assert self.proc.stdout is not None
        line = await threads.deferToThread(self.proc.stdout.readline)
        if not line:
            raise AssertionError(f"the sources' process ended ({self.proc.wait(5)}) before listening")
        self.addrs = json.loads(line)
        return self.addrs

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


async def sync_once(base: Path, spec: ChainSpec, chain: Path, name: str, target: int) -> dict[str, Any]:
    """3 sources (another process) on copies of ``chain`` and one empty node: the time from its first ready
    connection to the last block applied, and the height reached."""
    sources = Sources(chain, base / f"{name}-sources", spec.genesis.genesis_time)
    syncing: Node | None = None
    try:
        addrs = await sources.start()
        syncing = build_node(_quiet(base, f"{name}-sync"), make_keys(SOURCES + 1, seed=100)[SOURCES], spec.genesis,
                             reactor)
        syncing.startService()
        VERIFIED.__init__()  # type: ignore[misc]   # forget what the builder verified: every check is real
        for addr in addrs:
            syncing.p2p.peerstore.add(addr, "bootstrap", reactor.seconds())
        t_conn: float | None = None
        cpu_conn = cpu_progress = 0.0                                # this (the reactor) thread's CPU time
        height, t_progress = 0, time.perf_counter()
        deadline = t_progress + SYNC_TIMEOUT_S
        for _ in range(int(SYNC_TIMEOUT_S / POLL) + 2):              # bounded in count and time
            now = time.perf_counter()
            if t_conn is None and any(c.state == "ready" for c in syncing.p2p.connections.values()):
                t_conn, cpu_conn = now, time.thread_time()
            tip = syncing.store.tip_height()
            if tip != height:
                height, t_progress, cpu_progress = tip, now, time.thread_time()
            if height >= target or now > deadline or now - t_progress > STALL_S:
                break
            await sleep(POLL)
        if t_conn is None:
            raise AssertionError(f"{name}: the syncing node never connected")
        with Store(str(chain)) as source:
            if syncing.store.block_hash_at(height) != source.block_hash_at(height):
                raise AssertionError(f"{name}: synced another chain")
        return {"height": height, "seconds": max(t_progress - t_conn, 1e-6),
                "reactor_cpu_s": max(cpu_progress - cpu_conn, 1e-6)}
    finally:
        if syncing is not None and syncing.running:
            await defer.maybeDeferred(syncing.stopService)
        sources.stop()
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
    spec = _spec(int(time.time() * 1000) - 86_400_000)            # a day ago: every block lies in the past
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
            Figure("sync.verify_threads_speedup", round(speedup, 2), "x (2 threads over 1)"),
            # What the reactor thread alone allows (its CPU time, not wall time): the bound on a machine
            # whose cores are free, and a figure other load on a shared machine barely moves.
            Figure("sync.empty.blocks_per_reactor_cpu_s", round(empty["height"] / empty["reactor_cpu_s"], 1),
                   "blocks/CPU-s"),
            Figure("sync.tx100.tx_per_reactor_cpu_s",
                   round(txs["height"] * TXS_PER_BLOCK / txs["reactor_cpu_s"], 1), "tx/CPU-s")]


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    task.react(lambda _r: defer.ensureDeferred(serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
