"""Sync speed: an empty node catches up 5,000 certified blocks from 3 peers on 127.0.0.1 (SPEC §6).

Each figure stands next to a baseline measured in the same run: the raw libsecp256k1 verify rate
(``coincurve.PublicKey.verify`` of one fixed short message and signature, one core), because signature
checking is the floor of what sync must do per block (every precommit of every certificate, every tx).

* Chains: ``tests/chaingen.py`` builds two certified chains of a 4-validator genesis (every
  certificate holds the 4 precommits): 5,000 empty blocks, and 100-transfer blocks (1,000 of them by
  default -- 100,000 signed txs; building and syncing 5,000 such blocks takes many minutes, set
  ``BENCH_TX_BLOCKS=5000`` for the full size). Each chain is built once and its LMDB files copied into
  the 3 source datadirs of every run.
* Nodes: the production service tree (``timecoin.node.build_node``) on this process's reactor, real
  LMDB, libp2p TLS 1.3 over loopback. The 3 sources are observers (non-validator host keys) with
  ``block_interval``/timeouts of a day, so they only serve; the syncing node is an empty observer of
  the same genesis. The sync is driven only through node wiring: the 3 source addresses go into the
  syncing node's peer store, it dials them and syncs by itself (whatever sync engine the node runs).
* Timing: from the syncing node's first ready connection to the last block it applied (the dial tick
  before the first connection is excluded; the JSON has the wall time too). Everything, the 3 serving
  nodes included, shares this one reactor thread, so the figure is a lower bound for separate
  machines. The ledger's verified-signature cache is emptied before each sync (the builder filled
  it), so every signature is really checked.
* Rate limits: each chain is synced twice: with the request rate limit lifted (on the sources, and in
  the syncing node's own pacing, which assumes its peers' limit: the sync engine alone), and at the node
  default (``rate_limit`` = 100 requests per minute per peer, burst 20: what a node syncing from the
  network meets; ``BENCH_RATE_LIMIT=N`` sets another value). A run that
  makes no progress for ``BENCH_STALL_SECONDS`` (30) stops and is reported as stalled; sources that
  banned the syncing node are counted in the notes.

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
STALL_SECONDS = float(os.environ.get("BENCH_STALL_SECONDS", "30"))
# (name, the sources' rate_limit and burst; None = the node's default of 100/min, burst 20)
MODES: tuple[tuple[str, str | None], ...] = (("unlimited", "1000000"), ("default", os.environ.get("BENCH_RATE_LIMIT")))
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


def source_configs(base: Path, chain: Path, kind: str, rate_limit: str | None) -> list[Any]:
    extra = {"block_interval": QUIET, "timeout_propose": QUIET, "timeout_prevote": QUIET,
             "timeout_precommit": QUIET, "ping_interval": "15"}
    if rate_limit:
        extra |= {"rate_limit": rate_limit, "rate_limit_burst": rate_limit}
    configs = []
    for i in range(SOURCES):
        config = node_config(base, f"{kind}-src{i}", **extra)
        shutil.copytree(chain, os.path.join(config.datadir, "chain"))
        configs.append(config)
    return configs


# -- one sync ----------------------------------------------------------------------------------------------
async def sync_once(base: Path, spec: ChainSpec, chain: Path, kind: str, rate_limit: str | None, target: int,
                    tip_hash: bytes) -> dict[str, Any]:
    """Start 3 sources on copies of ``chain`` and one empty node; time the empty node's catch-up.

    Stops at the target, after ``STALL_SECONDS`` without progress (reported as stalled), or at
    ``SYNC_TIMEOUT``.
    """
    keys = make_keys(SOURCES + 1, seed=100 + len(kind))
    sources: list[Node] = [build_node(c, keys[i], spec.genesis, reactor)
                           for i, c in enumerate(source_configs(base, chain, kind, rate_limit))]
    # The syncing node paces its requests to the rate limit it assumes its peers apply (its own setting),
    # so a mode that lifts the sources' limit lifts the syncing node's assumption with it.
    limits = {"rate_limit": rate_limit, "rate_limit_burst": rate_limit} if rate_limit else {}
    syncing = build_node(node_config(base, f"{kind}-sync", block_interval=QUIET, timeout_propose=QUIET,
                                     timeout_prevote=QUIET, timeout_precommit=QUIET, ping_interval="15",
                                     **limits),
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
        t_conn: float | None = None
        connected_at: dict[str, float] = {}
        last_height, t_progress = 0, t_given
        deadline = t_given + SYNC_TIMEOUT
        for _ in range(int(SYNC_TIMEOUT / POLL) + 2):                # bounded in count and time
            now = time.perf_counter()
            for pid, c in syncing.p2p.connections.items():
                if c.state == "ready" and pid not in connected_at:
                    connected_at[pid] = now
            if t_conn is None and connected_at:
                t_conn = min(connected_at.values())
            height = syncing.store.tip_height()
            if height != last_height:
                last_height, t_progress = height, now
            if height >= target or now > deadline or now - t_progress > STALL_SECONDS:
                break
            await sleep(POLL)
        height = syncing.store.tip_height()
        assert t_conn is not None, f"{kind}: the syncing node never connected"
        assert syncing.store.block_hash_at(height) == sources[0].store.block_hash_at(height), f"{kind}: another chain"
        if height >= target:
            assert syncing.store.block_hash_at(target) == tip_hash
        ours = syncing.p2p.peer_id
        now_r = reactor.seconds()
        return {"reached": height, "stalled": height < target, "seconds": t_progress - t_conn,
                "wall_seconds": t_progress - t_given,
                "connected_after_s": sorted(round(t - t_conn, 3) for t in connected_at.values()),
                "peers_connected_at_end": sum(1 for c in syncing.p2p.connections.values() if c.state == "ready"),
                "sources_banning_us": sum(1 for src in sources if src.p2p.peers.is_banned(ours, None, now_r)),
                "source_scores_of_us": [src.p2p.peers.score(ours) for src in sources],
                "our_scores_of_sources": [syncing.p2p.peers.score(src.p2p.peer_id) for src in sources]}
    finally:
        for node in nodes:
            if node.running:
                await defer.maybeDeferred(node.stopService)
        await sleep(0.1)


# -- report ------------------------------------------------------------------------------------------------
async def main() -> None:
    print(f"# timecoin sync benchmark, python {sys.version.split()[0]}, reactor {type(reactor).__name__}, "
          f"{SOURCES} sources on 127.0.0.1, one process", flush=True)
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
            for mode, limit in MODES:
                result = await sync_once(base, spec, chain, f"{kind}-{mode}", limit, blocks, tip_hash)
                rows.append({"chain": kind, "limit": mode if limit is None or mode == "unlimited" else limit,
                             "blocks": blocks, "txs_per_block": txs, "signatures": sigs,
                             "build_seconds": round(build_s, 2), **result})
                print(f"  synced {result['reached']}/{blocks} with rate limit {rows[-1]['limit']} in "
                      f"{result['seconds']:.2f} s{' (STALLED)' if result['stalled'] else ''}", flush=True)
            shutil.rmtree(chain)
    raw_after = raw_verify_rate()
    raw = max(raw_before, raw_after)

    print(f"{'chain':<6} {'rate limit':<10} {'synced':>11} {'sync s':>8} {'blocks/s':>9} {'sigs/s':>8} "
          f"{'raw verify/s':>12} {'sigs/raw':>8} {'raw-bound blocks/s':>18}  notes")
    for r in rows:
        per_block = r["signatures"] / r["blocks"]
        r["blocks_per_s"] = r["reached"] / r["seconds"] if r["seconds"] > 0 else 0.0
        r["sigs_per_s"] = r["blocks_per_s"] * per_block
        r["sig_ratio"] = r["sigs_per_s"] / raw
        r["raw_bound_blocks_per_s"] = raw / per_block
        notes = []
        if r["stalled"]:
            notes.append(f"STALLED {STALL_SECONDS:.0f} s")
        if r["sources_banning_us"]:
            notes.append(f"banned by {r['sources_banning_us']}/{SOURCES} sources")
        print(f"{r['chain']:<6} {r['limit']:<10} {r['reached']:>5}/{r['blocks']:<5} {r['seconds']:>8.2f} "
              f"{r['blocks_per_s']:>9,.1f} {r['sigs_per_s']:>8,.0f} {raw:>12,.0f} {r['sig_ratio']:>8.3f} "
              f"{r['raw_bound_blocks_per_s']:>18,.0f}  {'; '.join(notes)}")
    print(f"(raw = coincurve.PublicKey.verify, best of {raw_before:,.0f}/s before and {raw_after:,.0f}/s after; "
          "sigs/s = signatures checked per second while syncing (certificate precommits + txs); sigs/raw = that "
          "over the raw rate; raw-bound blocks/s = the rate if verifying were the only cost. Times run from the "
          "first ready connection to the last block applied.)")
    print(json.dumps({
        "bench": "sync", "sources": SOURCES, "raw_verify_per_s": round(raw),
        "runs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }, sort_keys=True))


def run(_reactor: Any) -> Awaitable[None]:
    return defer.ensureDeferred(main())


if __name__ == "__main__":
    task.react(run)
