"""ConsensusService in a real service tree (LMDB in tmp_path) driven by ``task.Clock``.

A single-validator node finalizes blocks at ``block_interval``, puts mempool transactions in them (at
most ``max_block_txs`` per block), and after a stop in the middle of a height resumes that height from
its WAL without signing anything that conflicts with what it signed before.
"""
from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from timecoin import crypto
from timecoin.config import NodeConfig, build_config
from timecoin.consensus.service import ConsensusService
from timecoin.ledger.block import verify_certificate
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.node import Node, StoreService, prepare_datadir

T = crypto.UNITS_PER_TIME


def make_node(config: NodeConfig, clock: Clock) -> Node:
    key, genesis = prepare_datadir(config)
    node = Node(config, key, genesis)
    StoreService(node).setServiceParent(node)
    node.consensus = ConsensusService(node, clock)
    node.consensus.setServiceParent(node)
    return node


def run_until(clock: Clock, node: Node, height: int, max_steps: int = 10_000, step: float = 0.005) -> None:
    for _ in range(max_steps):                      # bounded: at most max_steps simulated ticks
        if node.store.tip_height() >= height:
            return
        clock.advance(step)
    raise AssertionError(f"height {node.store.tip_height()} after {max_steps} steps, wanted {height}")


def test_blocks_at_the_block_interval_with_mempool_txs(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(2_000_000_000)                     # a realistic wall-clock time (block timestamps)
    config = build_config({"datadir": str(tmp_path / "d"), "block_interval": "1", "max_block_txs": "3"})
    node = make_node(config, clock)
    node.startService()
    try:
        run_until(clock, node, 2)
        t2 = node.store.get_block(2).header.timestamp
        run_until(clock, node, 3)
        t3 = node.store.get_block(3).header.timestamp
        assert 1000 <= t3 - t2 <= 1100               # one block per block_interval (1 s)

        recipient = crypto.PrivateKey(b"\x05" * 32).address
        txs = [Transaction.create(node.key, TxKind.TRANSFER, node.genesis.chain_id, n, 1000, 5 * T, recipient)
               for n in range(5)]
        for tx in txs:
            node.mempool.add(tx)
        assert len(node.mempool) == 5
        start = node.store.tip_height()
        run_until(clock, node, start + 2)
        first, second = node.store.get_block(start + 1), node.store.get_block(start + 2)
        assert [tx.id for tx in first.txs] == [tx.id for tx in txs[:3]]     # max_block_txs = 3
        assert [tx.id for tx in second.txs] == [tx.id for tx in txs[3:]]
        assert len(node.mempool) == 0
        assert node.store.get_account(recipient).balance == 25 * T
        assert node.store.tx_location(txs[4].id) == (start + 2, 1)
        for h in range(1, node.store.tip_height() + 1):
            block = node.store.get_block(h)
            verify_certificate(block, node.store.get_certificate(h), node.store.validator_set(h),
                               node.genesis.chain_id)
    finally:
        node.stopService()


def test_restart_mid_height_resumes_from_the_wal_without_double_signing(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(2_000_000_000)
    config = build_config({"datadir": str(tmp_path / "d"), "block_interval": "1"})
    node = make_node(config, clock)
    signed: list[object] = []
    node.startService()
    node.consensus.broadcast = signed.append
    run_until(clock, node, 3)
    # Advance until height 4's messages are out, then stop. A single validator signs its proposal, prevote
    # and precommit (and decides) in one engine call; the guard commits each signature, and WalSigner
    # appends it to the WAL inside that sign call, so a crash anywhere in it leaves the WAL at most one
    # message behind the guard. Those crash points: tests/integration/test_consensus_crash_recovery.py.
    for _ in range(2000):
        if any(getattr(m, "height", 0) == 4 for m in signed):
            break
        clock.advance(0.001)
    ours = [m for m in signed if getattr(m, "height", 0) == 4]
    assert ours, "no message signed at height 4"
    tip = node.store.tip_height()
    node.stopService()

    node2 = make_node(config, clock)
    resigned: list[object] = []
    node2.startService()
    node2.consensus.broadcast = resigned.append
    try:
        run_until(clock, node2, tip + 2)
        block = node2.store.get_block(4)
        # Height 4's block is the one proposed before the stop, not a new (conflicting) proposal.
        first_proposal = next(m for m in ours if hasattr(m, "block"))
        assert block.hash == first_proposal.block.hash
    finally:
        node2.stopService()


def test_a_halt_stops_finalizing_survives_a_restart_and_ends_when_the_operator_removes_the_file(
        tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(2_000_000_000)
    config = build_config({"datadir": str(tmp_path / "d"), "block_interval": "1"})
    node = make_node(config, clock)
    node.startService()
    run_until(clock, node, 2)
    node.consensus.halt("conflicting commit certificates at height 2 (test)")
    stuck = node.store.tip_height()
    for _ in range(500):                                 # 5 simulated seconds: nothing is finalized
        clock.advance(0.01)
    assert node.store.tip_height() == stuck
    node.stopService()
    halt_file = tmp_path / "d" / "HALTED"
    assert "conflicting commit certificates" in halt_file.read_text()

    node = make_node(config, clock)                      # restarted: still halted
    node.startService()
    assert node.consensus.halted is not None
    for _ in range(500):
        clock.advance(0.01)
    assert node.store.tip_height() == stuck
    node.stopService()

    halt_file.unlink()                                   # the operator acted
    node = make_node(config, clock)
    node.startService()
    try:
        assert node.consensus.halted is None
        run_until(clock, node, stuck + 2)
    finally:
        node.stopService()
