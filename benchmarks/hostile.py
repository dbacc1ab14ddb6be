"""Hostile peers: what one attacker's messages cost a node, and how much one lying peer slows sync (issue 11).

The node under attack is the production service tree (``timecoin.node.build_node`` through
``timecoin.sim.loopnet.Net``): one validator on a generated certified chain (real LMDB, its consensus
engine waiting at the next height, which it does not leave during the run: ``block_interval`` is an
hour). Each attack is fed by a fresh identity through :mod:`timecoin.sim.feed`, which hands the node the
bytes TLS would hand it after decryption and runs its fair input queue to empty: framing, queue,
envelope codec, handlers, reputation, engine and WAL are the production code; only TLS is left out.

Per attack message type it reports

* **CPU µs per message** (``time.process_time``, the node's whole path; best of 3 runs, each with fresh
  frames and a fresh attacker, as is the baseline), next to the baseline: the cost
  of cutting the same bytes into frames with the node's own frame decoder (reading each frame header),
  measured in the same run. Target for junk (messages that need no signature check to be dismissed):
  ratio <= 2.
* **bytes retained** once the attacker is disconnected (``tracemalloc`` after a collection, on a
  separate pass of a quarter as many fresh messages), and the seen-cache entries that pass added: target
  <= 4 KiB (its score, ban and bucket entries) and no seen-cache entry. A ``notes`` line per attack has
  the rest: bytes the node wrote back, WAL bytes it made the node write, log lines, seen-cache entries
  added and honest ones evicted, and the attacker's final score, ban and connection state.

and the sync figure: simulated seconds to sync with one liar among three peers, as a ratio to honest
peers only (target <= 1.5), from :mod:`timecoin.sim.syncpeers`.
"""
from __future__ import annotations

import gc
import os
import secrets
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.logger import globalLogPublisher

from benchmarks.suite import Figure, ratio_figure
from timecoin import crypto
from timecoin.ledger.block import Block, Header, Proposal, Vote, VoteType
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.sim import chaingen, syncpeers
from timecoin.sim.feed import FedPeer, attach_peer, frame
from timecoin.sim.loopnet import Net, sleep, wait_for
from timecoin.store import Store
from timecoin.wire import messages as m
from timecoin.wire.framing import FrameDecoder

CHAIN_BLOCKS = 30
CHAIN_TXS = 100                     # per block: GET_BLOCKS answers carry real bodies
BIG_BLOCK_BYTES = 1 << 20           # the out-of-window proposal's block
JUNK_RATIO_TARGET = 2.0
REPEATS = 3                         # CPU figures are the best of this many runs (noise only adds time)
SYNC_RATIO_TARGET = 1.5
RETAINED_TARGET = 4096              # bytes: its score, ban and bucket entries, whatever it sent


class _Attack:
    """One attack: a name, how many messages, and how to make the i-th frame (given the node)."""

    def __init__(self, name: str, count: int, make: Callable[[Any, int], bytes], junk: bool = True) -> None:
        self.name = name
        self.count = count
        self.make = make
        self.junk = junk


def _far_vote(node: Any, i: int) -> bytes:
    h = node.consensus.engine.height + 1000
    vote = Vote(VoteType.PREVOTE, h, i, secrets.token_bytes(32), secrets.token_bytes(20), secrets.token_bytes(64))
    return frame(m.MsgType.VOTE, vote.to_wire())


def _big_block(key: crypto.PrivateKey, chain_id: str) -> Block:
    tx = Transaction.create(key, TxKind.TRANSFER, chain_id, 0, 1000, 1, b"\x01" * 20)
    n = BIG_BLOCK_BYTES // max(len(tx.encoded), 1)
    txs = tuple(Transaction.create(key, TxKind.TRANSFER, chain_id, i, 1000, 1, b"\x01" * 20) for i in range(n))
    header = Header(1, 0, b"\x00" * 32, 0, key.address, b"\x00" * 32, b"\x00" * 32, b"\x00" * 32, b"\x00" * 32)
    return Block(header, txs)


def _far_proposal_maker(block: Block) -> Callable[[Any, int], bytes]:
    def make(node: Any, i: int) -> bytes:
        h = node.consensus.engine.height + 1000
        p = Proposal(h, i, -1, block.header.proposer, block, secrets.token_bytes(64))
        return frame(m.MsgType.PROPOSAL, p.to_wire())
    return make


def _nonvalidator_vote_maker(key: crypto.PrivateKey) -> Callable[[Any, int], bytes]:
    def make(node: Any, i: int) -> bytes:
        engine = node.consensus.engine
        vote = Vote(VoteType.PREVOTE, engine.height, engine.round, secrets.token_bytes(32), b"").signed(
            key, node.genesis.chain_id)
        return frame(m.MsgType.VOTE, vote.to_wire())
    return make


def _forged_announcement(node: Any, i: int) -> bytes:
    height = 1 + i % max(node.store.tip_height(), 1)
    return frame(m.MsgType.NEW_BLOCK, {"height": height, "hash": secrets.token_bytes(32)})


def _reject_rid0(node: Any, i: int) -> bytes:
    return frame(m.MsgType.REJECT, {"reason": 1, "message": f"junk {i}" * 20})


def _get_blocks(node: Any, i: int) -> bytes:
    return frame(m.MsgType.GET_BLOCKS, {"start": 1, "count": 1000}, i + 1)


def _attacks(quick: bool, big: Block, signer: crypto.PrivateKey) -> list[_Attack]:
    k = 10 if quick else 1
    return [
        _Attack("far_future_vote", 20_000 // k, _far_vote),
        _Attack("far_future_proposal_1MiB", max(40 // k, 4), _far_proposal_maker(big)),
        _Attack("current_vote_by_non_validator", 5_000 // k, _nonvalidator_vote_maker(signer)),
        _Attack("new_block_forged_hash", 20_000 // k, _forged_announcement),
        _Attack("reject_without_request", 20_000 // k, _reject_rid0),
        _Attack("get_blocks_1000", 200 // k, _get_blocks, junk=False),
    ]


def _frame_split_seconds(data: bytes, max_frame: int) -> float:
    """CPU seconds the node's frame decoder takes to cut ``data`` into frames (the baseline)."""
    decoder = FrameDecoder(max_frame)
    t0 = time.process_time()
    for off in range(0, len(data), 16 * 1024):
        decoder.feed(data[off:off + 16 * 1024])
    return time.process_time() - t0


class _LogCounter:
    def __init__(self) -> None:
        self.lines = 0

    def __call__(self, event: dict[str, Any]) -> None:
        self.lines += 1


def _wal_bytes(node: Any) -> int:
    try:
        return os.path.getsize(os.path.join(node.config.datadir, "consensus.wal"))
    except OSError:
        return 0


async def _run_attack(node: Any, attack: _Attack, frames: list[bytes], measure_memory: bool) -> dict[str, Any]:
    key = crypto.PrivateKey(secrets.token_bytes(32))
    peer: FedPeer | None = attach_peer(node, key, port=20_000 + secrets.randbelow(40_000))
    service = node.p2p
    honest = set(service.seen._ids)
    seen_before = len(service.seen)
    wal_before = _wal_bytes(node)
    counter = _LogCounter()
    globalLogPublisher.addObserver(counter)
    data = b"".join(frames)
    if measure_memory:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    t0 = time.process_time()
    try:
        assert peer is not None
        peer.feed(data)
        cpu = time.process_time() - t0
        out_bytes = len(peer.written())
        banned = service.peers.is_banned(key.peer_id, None, service.reactor.seconds())
        score = service.peers.score(key.peer_id)
        disconnected = not peer.connected
        peer.disconnect()
        peer = None
        retained = 0
        if measure_memory:
            for _ in range(3):
                await sleep(0.01)        # the reactor drops the cancelled input turns the feed left behind
            gc.collect()
            retained = tracemalloc.get_traced_memory()[0] - base
    finally:
        if measure_memory:
            tracemalloc.stop()
        globalLogPublisher.removeObserver(counter)
    return {"cpu": cpu, "retained": retained, "out_bytes": out_bytes, "banned": banned, "score": score,
            "disconnected": disconnected, "seen_added": len(service.seen) - seen_before,
            "honest_evicted": len(honest - set(service.seen._ids)), "wal_bytes": _wal_bytes(node) - wal_before,
            "log_lines": counter.lines, "in_bytes": len(data)}


async def _node_under_attack(base: Path) -> Net:
    spec = chaingen.make_genesis(validators=1, chain_id="timecoin-bench-hostile", funded=1)
    net = Net(base, 1, genesis=spec.genesis, keys=list(spec.keys), block_interval="3600",
              timeout_propose="3600", gossip_interval="3600", ping_interval="3600")
    builder = chaingen.ChainBuilder(Store(net.chain_path(0)), spec)
    builder.build(CHAIN_BLOCKS, CHAIN_TXS)
    builder.store.close()
    await net.start(connect=False)
    node = net.nodes[0]
    await wait_for(lambda: node.consensus.engine is not None and node.consensus.engine.height == CHAIN_BLOCKS + 1,
                   10.0, "node at its next height")
    await sleep(0.5)                     # its own start-up work (first round, sync check) is done before we measure
    return net


async def run(quick: bool) -> list[Figure]:
    base = Path(tempfile.mkdtemp(prefix="timecoin-bench-hostile-"))
    figures: list[Figure] = []
    try:
        net = await _node_under_attack(base)
        node = net.nodes[0]
        signer = crypto.PrivateKey(secrets.token_bytes(32))
        big = _big_block(signer, node.genesis.chain_id)
        max_frame = node.config.max_frame_bytes
        try:
            for attack in _attacks(quick, big, signer):
                warm = [attack.make(node, 10 * attack.count + i) for i in range(min(attack.count, 10))]
                await _run_attack(node, attack, warm, measure_memory=False)      # one-time allocations
                runs = []
                for rep in range(REPEATS):                  # best of REPEATS: fresh frames and attacker each time
                    frames = [attack.make(node, rep * attack.count + i) for i in range(attack.count)]
                    runs.append(await _run_attack(node, attack, frames, measure_memory=False))
                cpu_run = min(runs, key=lambda r: r["cpu"])
                fresh = [attack.make(node, REPEATS * attack.count + i) for i in range(max(attack.count // 4, 1))]
                mem_run = await _run_attack(node, attack, fresh, measure_memory=True)
                split = min(_frame_split_seconds(b"".join(frames), max_frame) for _ in range(REPEATS))
                n = len(frames)
                figures.append(ratio_figure(f"hostile.{attack.name}.cpu_per_msg", cpu_run["cpu"] / n * 1e6, "us",
                                            split / n * 1e6, "us to read its frame header",
                                            JUNK_RATIO_TARGET if attack.junk else None))
                figures.append(Figure(f"hostile.{attack.name}.retained_after_disconnect", mem_run["retained"],
                                      f"bytes ({len(fresh)} messages; seen-cache entries added: "
                                      f"{mem_run['seen_added']})",
                                      target=f"<= {RETAINED_TARGET} bytes, no seen-cache entry",
                                      met=mem_run["retained"] <= RETAINED_TARGET and mem_run["seen_added"] == 0))
                notes = {k: v for k, v in cpu_run.items() if k not in ("cpu", "retained")}
                figures.append(Figure(f"hostile.{attack.name}.notes", n, "messages " + _notes(notes)))
        finally:
            await net.stop()
        figures.extend(await _sync_figures(quick))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return figures


def _notes(notes: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in notes.items()) + ")"


async def _sync_figures(quick: bool) -> list[Figure]:
    """Sync time with one liar of three peers, as a ratio to honest peers only (simulated seconds).

    The liar (``timecoin.sim.syncpeers.SlowLiar``) claims a huge height, extends the honest hashes with
    made-up ones and serves one real block per request just under the 15 s timeout; in the second case it
    also answers hash requests that late. Each run is a real StateSyncManager over real LMDB on its own
    ``task.Clock``, so the figure is the sync logic's, not this machine's.
    """
    blocks = 60 if quick else 400
    figures = []
    for name, liar_args in (("late_blocks", {}), ("late_blocks_and_hashes", {"hash_delay": 14.9})):
        with tempfile.TemporaryDirectory(prefix="timecoin-bench-liar-") as workdir:
            got = syncpeers.liar_sync_ratio(workdir, blocks=blocks, **liar_args)
        fig = ratio_figure(f"hostile.sync_one_liar_of_three.{name}", got["liar_s"], "simulated s", got["honest_s"],
                           "simulated s, honest peers only", SYNC_RATIO_TARGET)
        figures.append(fig)
        figures.append(Figure(f"hostile.sync_one_liar_of_three.{name}.notes", blocks,
                              "blocks " + _notes({k: got[k] for k in ("honest_height", "liar_run_height", "liar_score",
                                                                      "liar_charged")})))
    return figures
