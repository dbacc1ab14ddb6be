"""Junk judged while the stream is cut into frames never reaches the input queue (issue 11 finding 7).

A real node (production service tree, real LMDB) is fed frames by :mod:`timecoin.sim.feed` exactly as TLS
would hand them over; each test counts the frames that reached the per-peer input queue. Far heights,
signers outside the validator sets and notices past their budget must be dropped while framing: they
then cost about what cutting the frame does (``python -m benchmarks --only hostile``).
"""
from __future__ import annotations

import math
import secrets
import time
from pathlib import Path
from typing import Any

import pytest_twisted

from tests.p2pnet import Net, make_keys, wait_for
from timecoin import crypto
from timecoin.ledger.block import Vote, VoteType
from timecoin.p2p import service as p2p_service
from timecoin.sim.feed import FedPeer, attach_peer, frame
from timecoin.wire import messages as m


async def quiet_validator(tmp_path: Path) -> Net:
    net = Net(tmp_path, 1, block_interval="3600", timeout_propose="3600", gossip_interval="3600",
              ping_interval="3600")
    await net.start(connect=False)
    node = net.nodes[0]
    await wait_for(lambda: node.consensus.engine is not None and node.consensus.engine.height >= 1, 10.0, "engine")
    return net


def queued_counter(peer: FedPeer) -> list[int]:
    """Count the frames that enter ``peer``'s input queue (wraps its connection's ``_queue``)."""
    count = [0]
    original = peer.conn._queue

    def counting(frames: list[bytes]) -> Any:
        count[0] += len(frames)
        return original(frames)

    peer.conn._queue = counting  # type: ignore[method-assign]
    return count


def vote(height: int, round_: int, signer: bytes) -> bytes:
    return frame(m.MsgType.VOTE, Vote(VoteType.PREVOTE, height, round_, secrets.token_bytes(32), signer,
                                      secrets.token_bytes(64)).to_wire())


@pytest_twisted.ensureDeferred
async def test_far_height_and_foreign_signer_frames_never_reach_the_input_queue(tmp_path: Path) -> None:
    net = await quiet_validator(tmp_path)
    try:
        node = net.nodes[0]
        h = node.consensus.engine.height
        validator = net.keys[0].address
        peer = attach_peer(node, make_keys(1, seed=120)[0])
        queued = queued_counter(peer)
        far = b"".join(vote(h + 1000 + i, 0, validator) for i in range(2_000))
        foreign = b"".join(vote(h, i, secrets.token_bytes(20)) for i in range(2_000))
        peer.feed(far + foreign)
        assert queued[0] == 0, f"{queued[0]} junk frames reached the input queue"
        assert peer.conn.decoder.frames_dropped == 2_000 and peer.conn.decoder.frames_foreign == 2_000
        assert peer.conn.height >= h + 1000                     # the far height is remembered as the peer's
        assert peer.conn.messages_in >= 4_000
        assert node.p2p.peers.score(peer.peer_id) >= -1        # not_validator: race-prone, at most once
        # A genuine vote of the current height from the validator still gets through (and is queued).
        genuine = Vote(VoteType.PREVOTE, h, 0, b"\0" * 32, validator).signed(net.keys[0], node.genesis.chain_id)
        peer.send(m.MsgType.VOTE, genuine.to_wire())
        assert queued[0] == 1
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_notices_past_their_budget_are_dropped_while_framing_answers_never(tmp_path: Path) -> None:
    net = await quiet_validator(tmp_path)
    try:
        node = net.nodes[0]
        peer = attach_peer(node, crypto.PrivateKey(secrets.token_bytes(32)))
        queued = queued_counter(peer)
        flood = 10 * p2p_service.NOTICE_BURST
        tip = max(node.store.tip_height(), 1)
        stream = b"".join(frame(m.MsgType.NEW_BLOCK, {"height": 1 + i % tip, "hash": secrets.token_bytes(32)})
                          for i in range(flood))
        started = time.monotonic()
        peer.feed(stream)
        # The budget refills while the flood is read (NOTICE_RATE a minute): a loaded machine reads slower.
        refilled = math.ceil(p2p_service.NOTICE_RATE / 60.0 * (time.monotonic() - started)) + 1
        assert queued[0] <= 2 * p2p_service.NOTICE_BURST + refilled, f"{queued[0]} of {flood} notices were queued"
        assert peer.conn.decoder.frames_muted >= flood - 2 * p2p_service.NOTICE_BURST
        assert node.p2p.peers.score(peer.peer_id) < 0            # rate_limited (race-prone)
        # While muted, a reject that answers one of our requests still gets through.
        before = queued[0]
        peer.feed(frame(m.MsgType.REJECT, {"reason": 1, "message": "answer"}, 7))
        assert queued[0] == before + 1
    finally:
        await net.stop()
