"""Prometheus /metrics of real nodes (loopnet: TLS on 127.0.0.1, LMDB), scraped over HTTP and parsed.

Each metric is moved by exactly one test here (or, where a loopnet cannot cheaply reach the state, by
the collector's unit test in tests/unit/test_metrics.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.logger import globalLogPublisher

from tests.metricscrape import fetch, scrape, value
from tests.p2pnet import Net, banned, connect_ready, make_keys, wait_for
from timecoin import crypto
from timecoin.errors import ValidationError
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.node import build_node
from timecoin.sim.loopnet import node_config, reactor


@pytest_twisted.ensureDeferred
async def test_consensus_traffic_store_and_process_metrics_move_as_the_chain_grows(tmp_path: Path) -> None:
    net = Net(tmp_path, 2, chain_id="timecoin-metrics-a")
    node = net.nodes[0]
    try:
        await net.start()
        await wait_for(lambda: min(net.heights()) >= 2, 20.0, "first blocks")
        before = await scrape(node)
        tx = Transaction.create(node.key, TxKind.TRANSFER, node.genesis.chain_id, 0, 1000, 5 * crypto.UNITS_PER_TIME,
                                crypto.PrivateKey(b"\x05" * 32).address)
        node.mempool.add(tx)
        await wait_for(lambda: node.store.tx_location(tx.id) is not None, 20.0, "tx committed")
        h = node.store.tip_height()
        await wait_for(lambda: min(net.heights()) >= h + 3, 20.0, "three more blocks")
        after = await scrape(node)

        assert value(after, "timecoin_consensus_height") >= value(before, "timecoin_consensus_height") + 3
        assert value(after, "timecoin_consensus_txs_total") - value(before, "timecoin_consensus_txs_total") == 1
        grew = "timecoin_consensus_block_interval_seconds_count"
        assert value(after, grew) >= value(before, grew) + 3
        assert 0 < value(after, "timecoin_consensus_block_interval_seconds_sum") < 60 * value(after, grew)
        for step in ("propose", "prevote", "precommit"):
            name = "timecoin_consensus_step_duration_seconds_count"
            assert value(after, name, step=step) > value(before, name, step=step), step
        assert value(after, "timecoin_consensus_validators") == 2
        own = value(after, "timecoin_consensus_validator_power")
        assert value(after, "timecoin_consensus_validators_power") == 2 * own > 0
        assert value(after, "timecoin_consensus_halted") == 0 and "timecoin_consensus_rounds" in after
        for name in ("timecoin_p2p_message_receive_total", "timecoin_p2p_message_receive_bytes_total",
                     "timecoin_p2p_message_send_total", "timecoin_p2p_message_send_bytes_total",
                     "timecoin_p2p_accepted_messages_total", "timecoin_p2p_relayed_messages_total"):
            assert value(after, name, message_type="vote") > value(before, name, message_type="vote"), name
        assert value(after, "timecoin_store_used_bytes") > value(before, "timecoin_store_used_bytes") > 0
        assert value(after, "timecoin_store_map_size_bytes") >= value(after, "timecoin_store_used_bytes")
        assert value(after, "process_resident_memory_bytes") > 0 and value(after, "process_open_fds") > 0
        [(labels, one)] = after["timecoin_node_info"]
        assert one == 1 and labels["peer_id"] == node.peer_id and labels["chain_id"] == "timecoin-metrics-a"
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_peers_by_kind_and_direction_reputation_and_duplicates(tmp_path: Path) -> None:
    net = Net(tmp_path, 3, observers=1, chain_id="timecoin-metrics-b")
    node = net.nodes[0]
    try:
        await net.start()
        ready = lambda n: sum(c.state == "ready" for c in n.p2p.connections.values())  # noqa: E731
        await wait_for(lambda: all(ready(n) == 3 for n in net.nodes) and min(net.heights()) >= 3, 30.0,
                       "everyone connected and growing")
        s = await scrape(node)
        assert value(s, "timecoin_p2p_peers") == 3                                    # N - 1
        assert value(s, "timecoin_p2p_peers", kind="validator") == 2
        assert value(s, "timecoin_p2p_peers", kind="observer") == 1
        assert value(s, "timecoin_p2p_peers", direction="inbound") + value(
            s, "timecoin_p2p_peers", direction="outbound") == 3
        assert value(s, "timecoin_p2p_peer_reputation_bucket", le="+Inf") == 3          # one score per peer
        assert value(s, "timecoin_p2p_peer_reputation_bucket", le="-50.0") == 0
        assert value(s, "timecoin_p2p_duplicate_messages_total") > 0          # votes reach us by two routes
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_peer_sending_garbage_is_counted_in_bans_and_rejections(tmp_path: Path) -> None:
    net = Net(tmp_path, 1, chain_id="timecoin-metrics-c")
    target = net.nodes[0]
    try:
        await net.start()
        before = await scrape(target)
        key = make_keys(1, seed=9)[0]
        peer = await connect_ready(key, target)
        peer.transport.write(b"\x00\x00\x00\x06" + b"\xff" * 6)          # a frame, but no message
        await wait_for(lambda: peer.lost.called and banned(target, key), 5.0, "attacker banned")
        after = await scrape(target)
        assert value(after, "timecoin_p2p_bans_total") == value(before, "timecoin_p2p_bans_total") + 1
        name = "timecoin_p2p_rejected_messages_total"
        assert value(after, name, reason="malformed_frame") == value(before, name, reason="malformed_frame") + 1
        assert value(after, "timecoin_p2p_banned") == value(before, "timecoin_p2p_banned") + 1
        assert value(after, "timecoin_p2p_message_receive_total", message_type="hello") >= 1
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_mempool_size_bytes_and_rejections(tmp_path: Path) -> None:
    net = Net(tmp_path, 2, chain_id="timecoin-metrics-d")
    node = net.nodes[0]
    try:
        node.startService()                     # alone: half the power, no commits, the tx stays pending
        await wait_for(lambda: node.metrics.port, 5.0, "metrics listening")
        before = await scrape(node)
        tx = Transaction.create(node.key, TxKind.TRANSFER, node.genesis.chain_id, 0, 1000, 5 * crypto.UNITS_PER_TIME,
                                crypto.PrivateKey(b"\x05" * 32).address)
        node.mempool.add(tx)
        try:
            node.mempool.add(tx)
            raise AssertionError("a duplicate tx was admitted")
        except ValidationError:
            pass
        after = await scrape(node)
        assert value(before, "timecoin_mempool_size") == 0 and value(after, "timecoin_mempool_size") == 1
        assert value(after, "timecoin_mempool_size_bytes") == len(tx.encoded) > 0
        name = "timecoin_mempool_rejected_txs_total"
        assert value(after, name, reason="duplicate") == value(before, name, reason="duplicate") + 1
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_missing_validator_is_counted_and_costs_rounds(tmp_path: Path) -> None:
    net = Net(tmp_path, 4, chain_id="timecoin-metrics-e")
    node = net.nodes[0]
    try:
        await net.start()
        await wait_for(lambda: min(net.heights()) >= 2, 30.0, "four validators growing")
        await net.nodes[3].stopService()
        h = node.store.tip_height()
        await wait_for(lambda: node.store.tip_height() >= h + 2, 30.0, "three of four go on")
        s = await scrape(node)
        assert value(s, "timecoin_consensus_missing_validators") == 1
        assert value(s, "timecoin_consensus_missing_validators_power") == value(s, "timecoin_consensus_validator_power")
        # Each validator proposes in turn: within five heights the stopped one's turn costs a round.
        await wait_for(lambda: node.store.tip_height() >= h + 6, 60.0, "past its turn")
        s = await scrape(node)
        assert value(s, "timecoin_consensus_extra_rounds_total") >= 1
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_late_node_reports_its_sync_target(tmp_path: Path) -> None:
    net = Net(tmp_path, 2, observers=1, chain_id="timecoin-metrics-f")
    late = net.nodes[2]
    try:
        await net.start(connect=False)
        net.connect(0, [1])
        net.connect(1, [0])
        await wait_for(lambda: min(net.heights()[:2]) >= 6, 30.0, "validators ahead")
        before = await scrape(late)
        net.connect(2, [0])
        await wait_for(lambda: late.store.tip_height() >= 6, 30.0, "late node synced")
        after = await scrape(late)
        assert value(before, "timecoin_sync_target_height") == 0
        assert value(after, "timecoin_sync_target_height") >= 6
        assert value(after, "timecoin_sync_blocks_per_second") > 0
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_only_metrics_is_served_and_a_taken_port_leaves_the_node_running(tmp_path: Path) -> None:
    net = Net(tmp_path, 1, chain_id="timecoin-metrics-g")
    node = net.nodes[0]
    try:
        await net.start()
        code, body, headers = await fetch(node)
        assert code == 200 and headers[b"Content-Type"][0].startswith(b"text/plain")
        assert (await fetch(node, "/"))[0] == 404 and (await fetch(node, "/metricsx"))[0] == 404
        assert node.metrics.host == node.config.metrics_host == "127.0.0.1"            # loopback by default
        # A second node (an observer of the same chain) configured with the port the first one holds:
        second = build_node(node_config(tmp_path, "second", metrics_port=str(node.metrics.port)),
                            make_keys(1, seed=7)[0], net.genesis, reactor)
        errors: list[str] = []

        def watch(event: dict) -> None:
            if getattr(event.get("log_level"), "name", "") == "error":
                errors.append(str(event.get("log_format")))
        globalLogPublisher.addObserver(watch)
        try:
            second.startService()
            await wait_for(lambda: second.p2p.listen_addr, 5.0, "second node listening for peers")
        finally:
            globalLogPublisher.removeObserver(watch)
        try:
            assert second.running and second.store is not None and second.rpc.port is not None
            assert second.metrics.port is None and second.metrics.running
            assert len(errors) == 1 and "Cannot listen for metrics" in errors[0]
        finally:
            await second.stopService()
        h = node.store.tip_height()
        await wait_for(lambda: node.store.tip_height() >= h + 1, 10.0, "the first node goes on")
        assert (await fetch(node))[0] == 200
    finally:
        await net.stop()
