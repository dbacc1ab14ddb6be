"""SPEC §6 get_blocks ranges, served by a real node over TLS to a raw peer.

A range is answered with as many consecutive blocks as fit ``sync_response_bytes``, up to 1,000 (at least
one), in one ``BLOCKS`` message; a range costs one request of the per-peer request limit (100/min, burst
20), so a peer asking past that limit is refused ``rate_limited`` and charged as before.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest_twisted

from timecoin.errors import Reason
from timecoin.ledger.block import Block
from timecoin.p2p.service import MAX_BLOCKS_PER_RESPONSE
from timecoin.sim.chaingen import ChainBuilder, make_genesis
from timecoin.sim.loopnet import Net, connect_ready, make_keys, score, wait_for
from timecoin.store import Store
from timecoin.wire import messages as m

CHAIN = "timecoin-sync-ranges"


def answers(peer: Any) -> tuple[list[Any], list[int]]:
    """(the block lists of each BLOCKS answer, the reasons of each REJECT) a raw peer received so far."""
    blocks = [list(body.blocks) for t, body in peer.messages if t == m.MsgType.BLOCKS]
    return blocks, [body.reason for t, body in peer.messages if t == m.MsgType.REJECT]


async def serving_node(tmp_path: Path, blocks: int, txs: int, **extra: str) -> tuple[Net, int]:
    """One observer node holding ``blocks`` certified blocks; (its net, the biggest block + certificate size)."""
    spec = make_genesis(validators=2, chain_id=CHAIN, seed=70, funded=2)
    net = Net(tmp_path, 0, observers=1, genesis=spec.genesis, keys=make_keys(1, seed=70), sync_interval="60",
              **extra)
    builder = ChainBuilder(Store(net.chain_path(0)), spec)
    builder.build(blocks, txs_per_block=txs)
    biggest = max(b.size + len(c.encoded) for b, c in builder.store.get_blocks(1, blocks))
    builder.store.close()
    await net.start(connect=False)
    return net, biggest


@pytest_twisted.ensureDeferred
async def test_a_range_of_1000_blocks_is_answered_in_one_response(tmp_path: Path) -> None:
    assert MAX_BLOCKS_PER_RESPONSE == 1000
    net, _ = await serving_node(tmp_path, 1010, 0)
    try:
        peer = await connect_ready(make_keys(1, seed=71)[0], net.nodes[0])
        peer.send(m.MsgType.GET_BLOCKS, {"start": 1, "count": 1000}, request_id=1)
        peer.send(m.MsgType.GET_BLOCKS, {"start": 5, "count": 5000}, request_id=2)      # more than 1,000 asked
        await wait_for(lambda: len(answers(peer)[0]) == 2, 20.0, "both ranges answered")
        (first, second), rejects = answers(peer)
        assert not rejects
        assert len(first) == 1000 and len(second) == 1000
        assert [Block.from_wire(item.block).height for item in first] == list(range(1, 1001))
        assert Block.from_wire(second[-1].block).height == 1004
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_range_stops_at_sync_response_bytes_and_holds_at_least_one_block(tmp_path: Path) -> None:
    per_answer = 16 << 10
    net, biggest = await serving_node(tmp_path, 40, 20, sync_response_bytes=str(per_answer))
    try:
        assert biggest < per_answer // 2                      # several fit, not all 40
        peer = await connect_ready(make_keys(1, seed=72)[0], net.nodes[0])
        peer.send(m.MsgType.GET_BLOCKS, {"start": 1, "count": 1000}, request_id=1)
        await wait_for(lambda: answers(peer)[0], 10.0, "the range answered")
        (got,), _ = answers(peer)
        size = sum(Block.from_wire(item.block).size for item in got)
        assert 1 < len(got) < 40 and size <= per_answer
        assert len(got) >= (per_answer - biggest) // (biggest + 1024)
        p2p = net.nodes[0].p2p                              # 1 KiB, smaller than any block: still one block
        p2p.config = dataclasses.replace(p2p.config, sync_response_bytes=1024)
        peer.send(m.MsgType.GET_BLOCKS, {"start": 3, "count": 1000}, request_id=2)
        await wait_for(lambda: len(answers(peer)[0]) == 2, 10.0, "the second range answered")
        one = answers(peer)[0][1]
        assert len(one) == 1 and Block.from_wire(one[0].block).height == 3
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_ranges_past_the_request_limit_are_refused_and_charged(tmp_path: Path) -> None:
    # Default limits (100/min, burst 20): a range is one request however many blocks it asks, and the
    # 21st-and-later requests sent at once are refused rate_limited and lower the asker's reputation.
    net, _ = await serving_node(tmp_path, 30, 0)
    try:
        node = net.nodes[0]
        asker = make_keys(1, seed=73)[0]
        peer = await connect_ready(asker, node)
        asks = 30
        for i in range(asks):
            peer.send(m.MsgType.GET_BLOCKS, {"start": 1, "count": 1000}, request_id=i + 1)
        await wait_for(lambda: sum(map(len, answers(peer))) >= asks, 10.0, "every range answered or refused")
        served, rejects = answers(peer)
        assert all(len(blocks) == 30 for blocks in served)                    # the whole chain, one answer each
        assert len(served) <= node.config.rate_limit_burst
        assert rejects and all(reason == int(Reason.RATE_LIMITED) for reason in rejects)
        assert score(node, asker) < 0
    finally:
        await net.stop()
