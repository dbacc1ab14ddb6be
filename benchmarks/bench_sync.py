"""Sync speed: an empty node catches up 5,000 certified blocks from 3 peers on 127.0.0.1 (SPEC §6).

Each figure stands next to a baseline measured in the same run: the raw libsecp256k1 verify rate
(``coincurve.PublicKey.verify`` of a fixed 32-byte message, one core), because signature checking is
the floor of what sync must do per block (every precommit of every certificate, every transaction).

* Chains: ``tests/chaingen.py`` builds two certified chains of a 4-validator genesis (every
  certificate holds the 4 precommits): 5,000 empty blocks, and 100-transfer blocks (1,000 of them by
  default -- 100,000 signed txs; building and syncing 5,000 such blocks takes minutes, set
  ``BENCH_TX_BLOCKS=5000`` for the full size). Each chain is built once and its LMDB files copied into
  3 source datadirs.
* Nodes: the production service tree (``timecoin.node.build_node``) on this process's reactor, real
  LMDB, libp2p TLS 1.3 over loopback. The 3 sources are observers (non-validator host keys) with
  ``block_interval``/timeouts of a day, so they only serve; the syncing node is an empty observer of
  the same genesis. The sync is driven only through node wiring: the 3 source addresses go into the
  syncing node's peer store, it dials them and syncs by itself (whatever sync engine the node runs).
* Timing: from the syncing node's first ready connection to its tip reaching the sources' tip (the
  dial tick before the first connection is excluded; its wall time is reported too). Everything,
  the 3 serving nodes included, shares this one reactor thread, so the figure is a lower bound for
  separate machines. The ledger's verified-signature cache is emptied before each sync (the builder
  filled it), so every signature is really checked.
* Rate limits: the sources keep the default request rate limit (``rate_limit`` = 100 requests per
  minute per peer, burst 20) -- what a node syncing from the network meets. ``BENCH_RATE_LIMIT=N``
  overrides it on the sources (e.g. 1000000 to measure the sync engine alone).

Run: ``python benchmarks/bench_sync.py`` (or ``tox -e bench``). Prints a table and a one-line JSON
summary. ``BENCH_BLOCKS`` (default 5000) sets the empty chain's length, ``BENCH_SECONDS`` the baseline's
window, ``BENCH_SYNC_TIMEOUT`` (default 900 s) the most any one sync may take.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import coincurve  # noqa: E402
from twisted.internet import defer, reactor, task  # noqa: E402

from tests.chaingen import ChainBuilder, ChainSpec, make_genesis, make_keys  # noqa: E402
from tests.p2pnet import node_config, sleep, wait_for  # noqa: E402
from timecoin.ledger.tx import VERIFIED  # noqa: E402
from timecoin.node import Node, build_node  # noqa: E402
from timecoin.store import Store  # noqa: E402

MIN_SECONDS = float(os.environ.get("BENCH_SECONDS", "1.0"))
EMPTY_BLOCKS = int(os.environ.get("BENCH_BLOCKS", "5000"))
TX_BLOCKS = int(os.environ.get("BENCH_TX_BLOCKS", "1000"))
TXS_PER_BLOCK = 100
SOURCES = 3
VALIDATORS = 4
FUNDED = 4                                 # extra funded accounts: 8 senders share each block's 100 transfers
SYNC_TIMEOUT = float(os.environ.get("BENCH_SYNC_TIMEOUT", "900"))
RATE_LIMIT = os.environ.get("BENCH_RATE_LIMIT")
QUIET = "86400"                            # a day: the sources never propose, vote or time out
POLL = 0.02                                # seconds between tip checks while syncing


# -- baseline ----------------------------------------------------------------------------------------------
def raw_verify_rate() -> float:
    """coincurve.PublicKey.verify of one fixed message and signature, per second (bounded: 10^7 calls)."""
    key = coincurve.PrivateKey(b"\x42" * 32)
    message = b"timecoin bench_sync fixed message"
    signature = key.sign(message)
    public = coincurve.PublicKey(key.public_key.format())
    assert public.verify(signature, message)
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(200):
            public.verify(signature, message)
        n += 200
        elapsed = time.perf_counter() - t0
        if elapsed >= MIN_SECONDS or n >= 10_000_000:
            return n / elapsed


# -- chains ------------------------------------------------------------------------------------------------
def build_source(path: Path, spec: ChainSpec, blocks: int, txs_per_block: int) -> tuple[float, int, bytes]:
    """Build the chain into ``path``; (seconds, signatures it holds, tip hash)."""
    t0 = time.perf_counter()
    with Store(str(path)) as store:
        ChainBuilder(store, spec).build(blocks, txs_per_block)
        sigs = sum(len(store.get_certificate(h).signatures) + len(store.get_block(h).txs)
                   for h in range(1, blocks + 1))
        return time.perf_counter() - t0, sigs, store.tip_hash()


def source_configs(base: Path, chain: Path, kind: str) -> list[Any]:
    extra = {"block_interval": QUIET, "timeout_propose": QUIET, "timeout_prevote": QUIET,
             "timeout_precommit": QUIET, "ping_interval": "15"}
    if RATE_LIMIT:
        extra |= {"rate_limit": RATE_LIMIT, "rate_limit_burst": RATE_LIMIT}
    configs = []
    for i in range(SOURCES):
        config = node_config(base, f"{kind}-src{i}", **extra)
        shutil.copytree(chain, os.path.join(config.datadir, "chain"))
        configs.append(config)
    return configs


# -- one sync ----------------------------------------------------------------------------------------------
async def sync_once(base: Path, spec: ChainSpec, chain: Path, kind: str, target: int,
                    tip_hash: bytes) -> dict[str, Any]:
    """Start 3 sources on copies of ``chain`` and one empty node; time the empty node's catch-up."""
    keys = make_keys(SOURCES + 1, seed=100 + len(kind))
    sources: list[Node] = [build_node(c, keys[i], spec.genesis, reactor)
                           for i, c in enumerate(source_configs(base, chain, kind))]
    syncing = build_node(node_config(base, f"{kind}-sync", block_interval=QUIET, timeout_propose=QUIET,
                                     timeout_prevote=QUIET, timeout_precommit=QUIET, ping_interval="15"),
                         keys[SOURCES], spec.genesis, reactor)
    nodes = [*sources, syncing]
    try:
        for node in nodes:
            node.startService()
        await wait_for(lambda: all(n.p2p.listen_addr for n in nodes), 10.0, "listening")
        assert all(n.store.tip_height() == target for n in sources)
        assert syncing.store.tip_height() == 0
        VERIFIED.__init__()  # type: ignore[misc] - forget what the builder verified: every check is real
        t_given = time.perf_counter()
        for src in sources:
            syncing.p2p.peerstore.add(src.p2p.listen_addr, "bootstrap", reactor.seconds())
        t_conn = None
        connected_at: dict[str, float] = {}
        deadline = t_given + SYNC_TIMEOUT
        for _ in range(int(SYNC_TIMEOUT / POLL) + 2):                # bounded in count and time
            for pid, c in syncing.p2p.connections.items():
                if c.state == "ready" and pid not in connected_at:
                    connected_at[pid] = time.perf_counter()
            if t_conn is None and connected_at:
                t_conn = min(connected_at.values())
            if syncing.store.tip_height() >= target or time.perf_counter() > deadline:
                break
            await sleep(POLL)
        t_end = time.perf_counter()
        height = syncing.store.tip_height()
        assert height >= target, f"{kind}: synced to {height} of {target} in {SYNC_TIMEOUT} s"
        assert syncing.store.block_hash_at(target) == tip_hash, f"{kind}: synced another chain"
        assert t_conn is not None
        served = {}
        for i, src in enumerate(sources):
            conn = src.p2p.connections.get(syncing.p2p.peer_id)
            served[f"src{i}"] = conn.messages_in if conn is not None else None
        return {"seconds": t_end - t_conn, "wall_seconds": t_end - t_given,
                "peers_connected": sum(1 for c in syncing.p2p.connections.values() if c.state == "ready"),
                "connected_after_s": sorted(round(t - t_conn, 3) for t in connected_at.values()),
                "requests_per_source": served,
                "scores": {f"src{i}": syncing.p2p.peers.score(src.p2p.peer_id) for i, src in enumerate(sources)}}
    finally:
        for node in nodes:
            if node.running:
                await defer.maybeDeferred(node.stopService)
        await sleep(0.1)


# -- report ------------------------------------------------------------------------------------------------
async def main() -> None:
    print(f"# timecoin sync benchmark, python {sys.version.split()[0]}, reactor {type(reactor).__name__}, "
          f"{SOURCES} sources, rate_limit {RATE_LIMIT or 'default (100/min, burst 20)'}")
    raw_before = raw_verify_rate()
    spec = make_genesis(VALIDATORS, chain_id="timecoin-bench-sync", funded=FUNDED)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for kind, blocks, txs in (("empty", EMPTY_BLOCKS, 0), (f"{TXS_PER_BLOCK}tx", TX_BLOCKS, TXS_PER_BLOCK)):
            if blocks <= 0:
                continue
            chain = base / f"{kind}-chain"
            build_s, sigs, tip_hash = build_source(chain, spec, blocks, txs)
            print(f"built {blocks} {kind} blocks ({sigs:,} signatures) in {build_s:.1f} s", flush=True)
            result = await sync_once(base, spec, chain, kind, blocks, tip_hash)
            shutil.rmtree(chain)
            rows.append({"chain": kind, "blocks": blocks, "txs_per_block": txs, "signatures": sigs,
                         "build_seconds": round(build_s, 2), **result})
    raw_after = raw_verify_rate()
    raw = max(raw_before, raw_after)

    print(f"{'chain':<8} {'blocks':>7} {'sync s':>8} {'blocks/s':>10} {'sigs/s':>10} {'raw verify/s':>13} "
          f"{'sigs/raw':>9} {'blocks/s if raw':>16}")
    for r in rows:
        r["blocks_per_s"] = r["blocks"] / r["seconds"]
        r["sigs_per_s"] = r["signatures"] / r["seconds"]
        r["sig_ratio"] = r["sigs_per_s"] / raw
        r["raw_bound_blocks_per_s"] = raw / (r["signatures"] / r["blocks"])
        print(f"{r['chain']:<8} {r['blocks']:>7} {r['seconds']:>8.2f} {r['blocks_per_s']:>10,.0f} "
              f"{r['sigs_per_s']:>10,.0f} {raw:>13,.0f} {r['sig_ratio']:>9.3f} {r['raw_bound_blocks_per_s']:>16,.0f}")
    print(f"(raw = coincurve.PublicKey.verify, best of {raw_before:,.0f} before and {raw_after:,.0f} after; "
          "sigs/raw = signatures checked per second while syncing / raw verify rate; 'blocks/s if raw' = the "
          "rate if verifying were the only cost. Times from the first ready connection; wall incl. dial: "
          + ", ".join(f"{r['chain']} {r['wall_seconds']:.2f} s" for r in rows) + ")")
    print(json.dumps({
        "bench": "sync", "sources": SOURCES, "rate_limit": RATE_LIMIT or "default",
        "raw_verify_per_s": round(raw),
        "runs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }, sort_keys=True))


def run(_reactor: Any) -> Awaitable[None]:
    return defer.ensureDeferred(main())


if __name__ == "__main__":
    task.react(run)
