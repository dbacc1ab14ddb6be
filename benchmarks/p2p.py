"""P2P latency and throughput on 127.0.0.1 with the real reactor, each next to raw Twisted TLS in the same run.

* Round trip (issue 15 target 7): two real in-process nodes (``timecoin.sim.loopnet.Net``: a validator and
  an observer, full service trees, real LMDB, libp2p TLS 1.3 with host-key certificates checked both ways)
  exchange a PING with a 100-byte payload and its PONG, one at a time, through ``PeerConnection`` framing,
  the per-peer fair input queue, the envelope codec and the service's ``_on_ping``/``_on_pong`` handlers.
  Baseline: raw Twisted TLS 1.3 echoing a framed 100-byte payload (benchmarks/baseline_tls.py), measured
  in rounds alternating with ours (a shared machine's load drifts). Target: median and p99 <= 1.5 x raw.
* Messages/s on one connection (for information): the observer streams a ~140-byte VOTE frame as fast as
  it can (batches per reactor turn, as a relay would) and the validator counts envelopes handled. The vote
  is for a height already behind the receiver, the path every late gossip copy takes: cut from the stream,
  queued, prechecked and dropped without blame -- so the figure is the P2P stack, not signature checking.
  Baseline: raw TLS carrying the same framed bytes, the receiver splitting frames and counting.

Block production, gossip and the service's own pings are slowed to once an hour so they do not run inside
the measured window. Both ends of each connection share the one reactor thread, in ours and in the
baseline alike. The nodes are hooked only by wrapping ``P2PService.handle`` on the two instances (to
notice the PONG / count the votes).
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer

from benchmarks import baseline_tls as tls
from benchmarks.suite import Figure, ratio_figure
from timecoin.ledger.block import Vote, VoteType
from timecoin.node import Node
from timecoin.p2p.protocol import PeerConnection
from timecoin.sim.loopnet import Net, reactor, sleep, wait_for
from timecoin.wire import messages as m
from timecoin.wire.framing import encode_frame

QUIET = "3600"                    # seconds: keeps block production, gossip and service pings out of the window
NONCE_BASE = 1 << 62              # our ping nonces; the service's own are random 64-bit values
MAX_RTT_RATIO = 1.5               # issue 15 target 7
RTT_ROUNDS = 4                    # ours and raw alternate this many times (the machine's load drifts)


def ready_conn(node: Node, peer_id: str) -> PeerConnection | None:
    conn = node.p2p.connections.get(peer_id)
    return conn if conn is not None and conn.state == "ready" else None


async def connected_pair(net: Net) -> tuple[Node, Node, PeerConnection, PeerConnection]:
    """(validator, observer, validator's connection to the observer, observer's to the validator)."""
    validator, observer = net.nodes
    await net.start()
    await wait_for(lambda: ready_conn(validator, observer.p2p.peer_id) and ready_conn(observer, validator.p2p.peer_id)
                   and len(validator.p2p.connections) == 1 and len(observer.p2p.connections) == 1, 15.0,
                   "validator and observer connected")
    await sleep(0.5)                            # both dialed: let the duplicate connection close
    v_conn, o_conn = ready_conn(validator, observer.p2p.peer_id), ready_conn(observer, validator.p2p.peer_id)
    if v_conn is None or o_conn is None:
        raise RuntimeError("the two nodes lost their connection")
    return validator, observer, v_conn, o_conn


def hook_handle(node: Node, on_message: Callable[[PeerConnection, m.MsgType, Any], None]) -> None:
    """Wrap this node's P2PService.handle (instance attribute only): ``on_message`` runs after the real one."""
    real = node.p2p.handle

    def handle(conn: PeerConnection, msg_type: m.MsgType, request_id: int, body: Any, payload: bytes) -> None:
        real(conn, msg_type, request_id, body, payload)
        on_message(conn, msg_type, body)

    node.p2p.handle = handle  # type: ignore[method-assign]


def unhook_handle(node: Node) -> None:
    node.p2p.__dict__.pop("handle", None)


async def rtt_interleaved(sender: Node, conn: PeerConnection, seconds: float) -> tuple[list[float], list[float]]:
    """(ours, raw) RTT samples, measured in RTT_ROUNDS alternating rounds so both see the same machine load."""
    ours: list[float] = []
    raw: list[float] = []
    echo = await tls.RawEcho.open()
    try:
        for _ in range(RTT_ROUNDS):
            ours += await ours_rtt(sender, conn, seconds / RTT_ROUNDS)
            raw += await tls.rtt_loop(echo.round_trip, seconds / RTT_ROUNDS)
    finally:
        await echo.close()
    return ours, raw


async def ours_rtt(sender: Node, conn: PeerConnection, seconds: float) -> list[float]:
    """RTT samples (s) of PING(100-byte payload) -> PONG over ``conn``."""
    waiting: dict[int, defer.Deferred[None]] = {}

    def on_message(c: PeerConnection, msg_type: m.MsgType, body: Any) -> None:
        if c is conn and msg_type == m.MsgType.PONG:
            d = waiting.pop(body.nonce, None)
            if d is not None:
                d.callback(None)

    nonces = iter(range(NONCE_BASE, NONCE_BASE + tls.MAX_PINGS + tls.WARMUP_PINGS + 1))
    payload = b"x" * tls.PAYLOAD_BYTES

    def round_trip() -> defer.Deferred[Any]:
        nonce = next(nonces)
        d: defer.Deferred[None] = defer.Deferred()
        waiting[nonce] = d
        conn.ping_sent[nonce] = reactor.seconds()   # as _ping_all does: _on_pong pops it and updates latency
        conn.send(m.MsgType.PING, {"nonce": nonce, "payload": payload})
        return tls.timed(d)

    hook_handle(sender, on_message)
    try:
        samples = await tls.rtt_loop(round_trip, seconds)
    finally:
        unhook_handle(sender)
    if conn.latency is None or any(n >= NONCE_BASE for n in conn.ping_sent):
        raise RuntimeError("PONGs were not handled by the service")
    return samples


async def ours_stream(sender: Node, receiver: Node, out_conn: PeerConnection, in_conn: PeerConnection,
                      vote_payload: bytes, seconds: float) -> float:
    """Votes/s ``sender`` streams to ``receiver`` on one connection, counted once judged.

    Counted by the receiving connection's ``messages_in``, which counts each message once wherever it is
    judged: skipped while the stream is cut into frames (a stale height), prechecked from its fixed-offset
    fields, or decoded and handled. The count is checked after each of those steps (instance wrappers).
    """
    waiter: list[Any] = [None, 0]                  # deferred, target
    start = in_conn.messages_in

    def handled() -> int:
        return in_conn.messages_in - start

    def check() -> None:
        if waiter[0] is not None and handled() >= waiter[1]:
            d, waiter[0] = waiter[0], None
            d.callback(handled())

    def arrived(target: int) -> defer.Deferred[Any]:
        if handled() >= target:
            return defer.succeed(handled())
        waiter[0], waiter[1] = defer.Deferred(), target
        return tls.timed(waiter[0])

    def send(n: int) -> None:
        for _ in range(n):
            out_conn.send_payload(vote_payload)    # pre-encoded, as P2PService._relay sends

    real_data, real_process = in_conn.dataReceived, in_conn.process_one

    def data_received(data: bytes) -> None:
        real_data(data)
        check()

    def process_one() -> bool:
        more = real_process()
        check()
        return more

    score = receiver.p2p.peers.score(sender.p2p.peer_id)
    in_conn.dataReceived = data_received  # type: ignore[method-assign]
    in_conn.process_one = process_one  # type: ignore[method-assign]
    try:
        frames, spent = await tls.stream_loop(send, handled, arrived, seconds)
    finally:
        in_conn.__dict__.pop("dataReceived", None)
        in_conn.__dict__.pop("process_one", None)
    if in_conn.state != "ready" or receiver.p2p.peers.score(sender.p2p.peer_id) != score:
        raise RuntimeError("the sender of stale votes was blamed or disconnected")
    return frames / spent


def stale_vote(net: Net, receiver: Node) -> bytes:
    """A signed VOTE envelope for a height the receiver has decided (height 0): handled and dropped."""
    engine = receiver.consensus.engine
    if engine is None or engine.height < 1:
        raise RuntimeError("receiver's consensus engine is not running")
    key = net.keys[1]
    vote = Vote(VoteType.PREVOTE, 0, 0, b"\x22" * 32, key.address).signed(key, net.genesis.chain_id)
    return m.encode_message(m.MsgType.VOTE, vote.to_wire())


async def run(quick: bool) -> list[Figure]:
    seconds = 0.3 if quick else 1.0
    base = Path(tempfile.mkdtemp(prefix="timecoin-bench-p2p-"))
    net = Net(base, 1, observers=1, rate_limit="1000000", rate_limit_burst="1000000",
              block_interval=QUIET, gossip_interval=QUIET, ping_interval=QUIET)
    try:
        validator, observer, v_conn, o_conn = await connected_pair(net)
        vote_payload = stale_vote(net, validator)
        ours, raw = await rtt_interleaved(observer, o_conn, 2 * seconds)
        ours_rate = await ours_stream(observer, validator, o_conn, v_conn, vote_payload, seconds)
        vote_frame = encode_frame(vote_payload)
        raw_rate = await tls.raw_messages_per_s(vote_frame, seconds)
    finally:
        await net.stop()
        shutil.rmtree(base, ignore_errors=True)
    unit, raw_unit = "us", "us, raw TLS 1.3 echo of a framed 100-byte payload"
    return [
        ratio_figure("p2p.ping_rtt_100B.median", round(statistics.median(ours) * 1e6, 1), unit,
                     round(statistics.median(raw) * 1e6, 1), raw_unit, max_ratio=MAX_RTT_RATIO),
        ratio_figure("p2p.ping_rtt_100B.p99", round(tls.pct(ours, 0.99) * 1e6, 1), unit,
                     round(tls.pct(raw, 0.99) * 1e6, 1), raw_unit, max_ratio=MAX_RTT_RATIO),
        ratio_figure(f"p2p.stale_vote_{len(vote_frame)}B", round(ours_rate), "messages/s", round(raw_rate),
                     "messages/s, raw TLS 1.3, frames split and counted"),
    ]
