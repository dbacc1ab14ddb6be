"""Signatures of synced ranges pre-verified on worker threads (timecoin/sync/verify.py, issue 15).

The workers only fill the verified-signature cache with signatures that verify; the apply still decides.
A block holding a tx whose signature does not verify (under a valid certificate: its validators signed it)
is refused by the apply and its server charged, with the pre-verification on, as without it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from timecoin.errors import Reason
from timecoin.ledger.block import Block, CommitCertificate, tx_root
from timecoin.ledger.tx import VERIFIED
from timecoin.p2p.peers import Event
from timecoin.sim.chaingen import ChainBuilder, ChainSpec, build_chain, certify, initialize, make_genesis
from timecoin.sim.syncpeers import StorePeer
from timecoin.store import Store
from timecoin.sync.apply import apply_batch
from timecoin.sync.manager import StateSyncManager
from timecoin.sync.verify import Preverifier

BLOCKS = 12
TXS = 10
BAD_AT = 7                          # the height whose first tx carries a flipped signature
Items = list[tuple[Block, CommitCertificate]]


@pytest.fixture(scope="module")
def spec() -> ChainSpec:
    return make_genesis(validators=4, chain_id="timecoin-preverify", funded=2)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, spec: ChainSpec) -> Iterator[ChainBuilder]:
    builder = build_chain(str(tmp_path_factory.mktemp("preverify") / "chain"), spec, BLOCKS, TXS)
    yield builder
    builder.store.close()


def with_bad_tx(spec: ChainSpec, block: Block) -> tuple[Block, CommitCertificate]:
    """``block`` with its first tx's signature flipped, re-rooted and certified by every validator."""
    tx = block.txs[0]
    sig = tx.signature[:20] + bytes([tx.signature[20] ^ 1]) + tx.signature[21:]
    txs = (dataclasses.replace(tx, signature=sig), *block.txs[1:])
    bad = Block(dataclasses.replace(block.header, tx_root=tx_root(txs)), txs, block.evidence)
    return bad, certify(bad, spec.validators, spec.genesis.chain_id)


def fresh_items(chain: ChainBuilder, spec: ChainSpec) -> Items:
    """Blocks 1..BLOCKS decoded from bytes (as from the wire), block BAD_AT with a bad tx signature."""
    items = [(Block.decode(b.encoded), CommitCertificate.decode(c.encoded))
             for b, c in chain.store.get_blocks(1, BLOCKS)]
    items[BAD_AT - 1] = with_bad_tx(spec, items[BAD_AT - 1][0])
    return items


def empty_node(path: Path, spec: ChainSpec) -> Store:
    store = Store(str(path))
    initialize(store, spec.genesis)
    return store


@pytest_twisted.ensureDeferred
async def test_workers_record_exactly_the_signatures_that_verify(tmp_path: Path, spec: ChainSpec,
                                                                 chain: ChainBuilder) -> None:
    store = empty_node(tmp_path / "s", spec)
    pre = Preverifier(reactor, store, spec.genesis.chain_id)
    try:
        items = fresh_items(chain, spec)
        VERIFIED.__init__()  # type: ignore[misc]
        recorded = await pre.warm(items)
        bad_tx = items[BAD_AT - 1][0].txs[0]
        good_txs = [t for b, _ in items for t in b.txs if t is not bad_tx]
        votes = sum(len(c.signatures) for _, c in items)
        assert recorded == len(good_txs) + votes
        assert all(t.id in VERIFIED for t in good_txs) and bad_tx.id not in VERIFIED
        # The apply finds the good ones verified and still refuses the bad one, committing the prefix.
        committed, error = apply_batch(store, spec.genesis.params, spec.genesis.chain_id, items,
                                       genesis_time_ms=spec.genesis.genesis_time)
        assert committed == BAD_AT - 1 and error is not None and error.height == BAD_AT
        assert error.reason is Reason.BAD_SIGNATURE
    finally:
        pre.stop()
        store.close()


class BadChainPeer(StorePeer):
    """Serves the chain with block BAD_AT replaced by its bad-tx twin (and votes that block's hash)."""

    def __init__(self, peer_id: str, store: Store, bad: tuple[Block, CommitCertificate]) -> None:
        super().__init__(peer_id, store)
        self.bad = bad

    def hashes(self, start: int, count: int) -> list[bytes]:
        return [self.bad[0].hash if start + i == BAD_AT else h
                for i, h in enumerate(self.store.block_hashes(start, count))]

    def get_blocks(self, start: int, count: int) -> defer.Deferred[Items]:
        self.block_requests.append((start, count))
        items = [(Block.decode(b.encoded), CommitCertificate.decode(c.encoded))
                 for b, c in self.store.get_blocks(start, count)]
        if start <= BAD_AT < start + len(items):
            items[BAD_AT - start] = self.bad
        return defer.succeed(items)


@pytest_twisted.ensureDeferred
async def test_a_synced_block_with_a_bad_tx_signature_is_refused_and_its_server_charged(
        tmp_path: Path, spec: ChainSpec, chain: ChainBuilder) -> None:
    store = empty_node(tmp_path / "s", spec)
    pre = Preverifier(reactor, store, spec.genesis.chain_id)
    bad = with_bad_tx(spec, chain.store.get_block(BAD_AT))          # type: ignore[arg-type]

    def apply(items: Items) -> tuple[int, Any]:
        count, error = apply_batch(store, spec.genesis.params, spec.genesis.chain_id, items,
                                   genesis_time_ms=spec.genesis.genesis_time)
        return count, (error.reason if error else None)

    manager = StateSyncManager(store.tip_height, spec.genesis.hash, reactor, apply, batch=5, redundancy=3,
                               request_timeout=5.0, preverify=pre.warm)
    peers = [BadChainPeer(f"p{i}", chain.store, bad) for i in range(3)]
    try:
        VERIFIED.__init__()  # type: ignore[misc]
        result = await manager.sync(list(peers))
        assert store.tip_height() == BAD_AT - 1
        assert pre.verified > 0                                          # the workers did check ranges
        servers = [p for p in peers if any(s <= BAD_AT < s + n for s, n in p.block_requests)]
        charged = [p for p in peers if Event.INVALID_SIGNATURE in p.penalties]
        assert charged and set(charged) <= set(servers), [p.penalties for p in peers]
        assert result.penalized
    finally:
        pre.stop()
        store.close()
