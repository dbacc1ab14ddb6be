"""SyncCoordinator in running nodes (real TLS on 127.0.0.1, real LMDB): catch-up, fork rollback, genesis check.

* A validator started long after the others catches up through the StateSyncManager (hashes voted by
  its peers, bodies verified and applied in batches) and then takes part in consensus.
* A node whose store holds a branch with forged certificates finds the fork, rolls back (well within
  max_reorg_depth), re-syncs the honest chain and agrees with the network.
* The genesis consensus check refuses to sync when fewer than 2/3 of responding peers share our genesis.
"""
from __future__ import annotations

from pathlib import Path

import pytest_twisted

from tests.chaingen import ChainBuilder, make_genesis
from tests.p2pnet import Net, sleep, wait_for
from timecoin.store import Store
from timecoin.sync.peer import PeerStatus

FAST_SYNC = {"sync_interval": "1"}


@pytest_twisted.ensureDeferred
async def test_a_validator_started_late_catches_up_by_sync_then_joins_consensus(tmp_path: Path) -> None:
    net = Net(tmp_path, 4, **FAST_SYNC)
    try:
        for n in net.nodes[:3]:
            n.startService()
        await wait_for(lambda: all(n.p2p.listen_addr for n in net.nodes[:3]), 5.0, "listening")
        for i in range(3):
            net.connect(i, [0, 1, 2])
        await wait_for(lambda: min(net.heights()[:3]) >= 40, 60.0, "3 validators at height 40")
        late = net.nodes[3]
        late.startService()
        await wait_for(lambda: late.p2p.listen_addr, 5.0, "late node listening")
        net.connect(3)
        await wait_for(lambda: late.sync.last_result is not None and late.sync.last_result.blocks >= 30, 30.0,
                       "late node synced")
        target = max(net.heights()) + 3
        await wait_for(lambda: min(net.heights()) >= target, 30.0, "all four at the same heights")
        ref = net.nodes[0].store
        for h in (1, 20, 40, target):
            assert late.store.block_hash_at(h) == ref.block_hash_at(h)
        assert late.sync.progress["height"] >= 30 and not late.sync.progress["syncing"]
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_node_on_a_forged_branch_rolls_back_and_resyncs_the_honest_chain(tmp_path: Path) -> None:
    spec = make_genesis(validators=4, chain_id="timecoin-forkroll")
    net = Net(tmp_path, 4, genesis=spec.genesis, keys=list(spec.validators), block_interval="0.2", **FAST_SYNC)
    # Honest chain of 30 blocks for nodes 0-2; node3: the same 20, then 8 blocks certified by one validator.
    honest = ChainBuilder(Store(net.chain_path(0)), spec)
    honest.build(30)
    for i in (1, 2):
        store = Store(net.chain_path(i))
        honest.copy_to(store, 30)
        store.close()
    bad_store = Store(net.chain_path(3))
    bad = honest.fork(20, bad_store, salt=5)
    bad.build(8, signers=[0])
    forged_hash = bad_store.block_hash_at(25)
    honest_21 = honest.store.block_hash_at(21)
    honest.store.close()
    bad_store.close()
    try:
        await net.start()
        node3 = net.nodes[3]
        assert node3.store.block_hash_at(25) == forged_hash
        await wait_for(lambda: node3.store.block_hash_at(21) == honest_21, 30.0, "node3 rolled back and re-synced")
        target = max(net.heights()) + 2
        await wait_for(lambda: min(net.heights()) >= target, 30.0, "all four agree and go on")
        for h in (21, 25, target):
            assert len({n.store.block_hash_at(h) for n in net.nodes}) == 1
        assert node3.consensus.halted is None
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_genesis_consensus_refuses_to_sync_without_two_thirds(tmp_path: Path) -> None:
    net = Net(tmp_path, 1)
    node = net.nodes[0]
    try:
        node.startService()
        ours, other = node.genesis.hash, b"\x99" * 32
        st = {f"p{i}": PeerStatus(50, b"\x01" * 32, 50, b"\x01" * 32, ours if i < 1 else other, 0.01)
              for i in range(3)}
        assert not node.sync._genesis_consensus(st)
        assert node.sync.genesis_alert and "1 of 3" in node.sync.genesis_alert
        st = {f"p{i}": PeerStatus(50, b"\x01" * 32, 50, b"\x01" * 32, ours if i < 2 else other, 0.01)
              for i in range(3)}
        assert node.sync._genesis_consensus(st) and node.sync.genesis_alert is None
        await sleep(0.01)
    finally:
        await net.stop()
