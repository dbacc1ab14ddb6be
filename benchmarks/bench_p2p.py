"""P2P latency and throughput on 127.0.0.1 with the real reactor, each next to raw Twisted TLS in the same run.

* Ping round trip: two real in-process nodes (``tests/p2pnet.Net``: a validator and an observer, full
  service trees, real LMDB, libp2p TLS 1.3 with host-key certificates checked both ways) exchange a
  PING with a 100-byte payload and its PONG, one at a time, through ``PeerConnection`` framing, the
  per-peer fair input queue, the envelope codec and the service's ``_on_ping``/``_on_pong`` handlers.
  Baseline: a raw Twisted TLS 1.3 echo (throwaway self-signed P-256 certificate, no client
  certificate) of the same 104 bytes a frame of 100 payload bytes takes (4-byte length + 100).
* Messages/s on one connection: the observer streams the same ~140-byte VOTE frame as fast as it can
  (batches of ``STREAM_BATCH`` per reactor turn, as a relay would) and the validator counts envelopes
  handled (through ``PeerConnection.process_one`` and ``P2PService.handle``). The vote is for a height
  already behind the receiver, the path every late gossip copy takes: decoded, message id hashed,
  dropped without blame, so the figure is the P2P stack, not signature checking. Baseline: raw Twisted
  TLS carrying the same framed bytes, the receiver splitting frames on the length prefix and counting.

Block production, gossip and the service's own pings are slowed to once an hour so they do not run
inside the measured window. Both ends of each connection share the one reactor thread, in ours and in
the baseline alike. The benchmark hooks the nodes only by wrapping ``P2PService.handle`` on the two
instances (to notice the PONG / count the votes); no timecoin code is changed.

Run: ``python benchmarks/bench_p2p.py`` (or ``tox -e bench``); ``BENCH_SECONDS`` sets each window
(default 1.0). Prints a table and a one-line JSON summary.
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from OpenSSL import crypto as ossl_crypto  # noqa: E402
from twisted.internet import defer, endpoints, protocol, reactor, ssl, task  # noqa: E402

from tests.p2pnet import Net, sleep, wait_for  # noqa: E402
from timecoin.ledger.block import Vote, VoteType  # noqa: E402
from timecoin.node import Node  # noqa: E402
from timecoin.p2p.protocol import PeerConnection  # noqa: E402
from timecoin.wire import messages as m  # noqa: E402
from timecoin.wire.framing import encode_frame  # noqa: E402

MIN_SECONDS = float(os.environ.get("BENCH_SECONDS", "1.0"))
PAYLOAD_BYTES = 100
WARMUP_PINGS = 50
MAX_PINGS = 200_000               # per measurement, whatever BENCH_SECONDS says
ROUND_TRIP_TIMEOUT = 5.0          # one missing answer fails the run instead of hanging it
STREAM_BATCH = 500                # frames written per reactor turn
STREAM_ROUND = 5_000              # frames per timed round; rounds repeat until MIN_SECONDS
MAX_ROUNDS = 400
QUIET = "3600"                    # seconds: keeps block production, gossip and service pings out of the window
NONCE_BASE = 1 << 62              # our ping nonces; the service's own are random 64-bit values


# -- shared measuring loops (the same for our stack and the baseline) ------------------------------------
async def rtt_loop(one_round_trip: Callable[[], defer.Deferred[Any]]) -> list[float]:
    """Round-trip times in seconds, one at a time, after a warm-up; bounded by MIN_SECONDS and MAX_PINGS."""
    for _ in range(WARMUP_PINGS):
        await one_round_trip()
    samples: list[float] = []
    t_end = time.perf_counter() + MIN_SECONDS
    while len(samples) < MAX_PINGS:
        t0 = time.perf_counter()
        await one_round_trip()
        t1 = time.perf_counter()
        samples.append(t1 - t0)
        if t1 >= t_end:
            break
    return samples


async def stream_loop(send: Callable[[int], None], received: Callable[[], int],
                      arrived: Callable[[int], defer.Deferred[Any]]) -> tuple[int, float]:
    """(frames, seconds) of rounds of STREAM_ROUND frames sent in batches, each timed until all are counted."""
    total, spent = 0, 0.0
    for _ in range(MAX_ROUNDS):
        target = received() + STREAM_ROUND
        t0 = time.perf_counter()
        for _ in range(STREAM_ROUND // STREAM_BATCH):
            send(STREAM_BATCH)
            await sleep(0)                      # one reactor turn: let the bytes move, as a relay would
        await arrived(target)
        spent += time.perf_counter() - t0
        total += STREAM_ROUND
        if spent >= MIN_SECONDS:
            break
    return total, spent


def _timed(d: defer.Deferred[Any]) -> defer.Deferred[Any]:
    return d.addTimeout(ROUND_TRIP_TIMEOUT, reactor)


# -- baseline: raw Twisted TLS 1.3 ----------------------------------------------------------------------
def throwaway_tls() -> tuple[ssl.CertificateOptions, Any]:
    """Server options with a fresh self-signed P-256 certificate, and a client creator that trusts it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    server = ssl.CertificateOptions(privateKey=ossl_crypto.PKey.from_cryptography_key(key),
                                    certificate=ossl_crypto.X509.from_cryptography(cert),
                                    raiseMinimumTo=ssl.TLSVersion.TLSv1_3)
    client = ssl.optionsForClientTLS("localhost", trustRoot=ssl.Certificate(ossl_crypto.X509.from_cryptography(cert)),
                                     extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_3})
    return server, client


class RawFrames(protocol.Protocol):
    """Splits the stream on 4-byte length prefixes; counts frames, echoes them back if ``echo``."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.buf = bytearray()
        self.frames = 0
        self.target = 0
        self.waiter: defer.Deferred[int] | None = None
        self.ready: defer.Deferred[RawFrames] = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        buf = self.buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 4:
            size = int.from_bytes(buf[pos:pos + 4], "big")
            if end - pos - 4 < size:
                break
            if self.echo:
                self.transport.write(bytes(buf[pos:pos + 4 + size]))
            pos += 4 + size
            self.frames += 1
        del buf[:pos]
        if self.waiter is not None and self.frames >= self.target:
            waiter, self.waiter = self.waiter, None
            waiter.callback(self.frames)

    def wait(self, target: int) -> defer.Deferred[int]:
        """Fires once ``target`` frames have been counted in total."""
        if self.frames >= target:
            return defer.succeed(self.frames)
        self.target = target
        self.waiter = defer.Deferred()
        return _timed(self.waiter)


class _RawFactory(protocol.Factory):
    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.built: list[RawFrames] = []

    def buildProtocol(self, addr: Any) -> RawFrames:  # noqa: N802 - Twisted API
        proto = RawFrames(self.echo)
        self.built.append(proto)
        return proto


async def raw_pair(echo_server: bool) -> tuple[Any, RawFrames, RawFrames]:
    """(listening port, client, server) of a fresh raw TLS connection on 127.0.0.1, handshake done."""
    server_opts, client_opts = throwaway_tls()
    factory = _RawFactory(echo_server)
    port = await endpoints.SSL4ServerEndpoint(reactor, 0, server_opts, interface="127.0.0.1").listen(factory)
    tcp = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=5)
    client = await endpoints.wrapClientTLS(client_opts, tcp).connect(_RawFactory(False))
    # Prove the TLS handshake (and its version) before any timing: one frame there and, if echoing, back.
    client.transport.write(b"\x00\x00\x00\x01x")
    await wait_for(lambda: factory.built and factory.built[0].frames == 1, 5.0, "raw TLS handshake")
    if echo_server:
        await client.wait(1)
    version = client.transport.getHandle().get_protocol_version_name()
    assert version == "TLSv1.3", version
    return port, client, factory.built[0]


async def raw_rtt() -> list[float]:
    port, client, _ = await raw_pair(echo_server=True)
    frame = encode_frame(b"x" * PAYLOAD_BYTES)
    assert len(frame) == 4 + PAYLOAD_BYTES

    def round_trip() -> defer.Deferred[Any]:
        d = client.wait(client.frames + 1)
        client.transport.write(frame)
        return d

    try:
        return await rtt_loop(round_trip)
    finally:
        client.transport.loseConnection()
        await port.stopListening()


async def raw_stream(frame: bytes) -> tuple[int, float]:
    port, client, server = await raw_pair(echo_server=False)

    def send(n: int) -> None:
        write = client.transport.write
        for _ in range(n):
            write(frame)

    try:
        sent_before = server.frames
        frames, seconds = await stream_loop(send, lambda: server.frames, server.wait)
        assert server.frames - sent_before == frames, (server.frames, frames)
        return frames, seconds
    finally:
        client.transport.loseConnection()
        await port.stopListening()


# -- our stack: two real nodes ------------------------------------------------------------------------
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
    assert v_conn is not None and o_conn is not None
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


async def ours_rtt(sender: Node, conn: PeerConnection) -> tuple[list[float], int]:
    """RTT samples of PING(100-byte payload) -> PONG over ``conn``, and the PING frame's size."""
    waiting: dict[int, defer.Deferred[None]] = {}

    def on_message(c: PeerConnection, msg_type: m.MsgType, body: Any) -> None:
        if c is conn and msg_type == m.MsgType.PONG:
            d = waiting.pop(body.nonce, None)
            if d is not None:
                d.callback(None)

    nonces = iter(range(NONCE_BASE, NONCE_BASE + MAX_PINGS + WARMUP_PINGS + 1))
    payload = b"x" * PAYLOAD_BYTES

    def round_trip() -> defer.Deferred[Any]:
        nonce = next(nonces)
        d: defer.Deferred[None] = defer.Deferred()
        waiting[nonce] = d
        conn.ping_sent[nonce] = reactor.seconds()   # as _ping_all does: _on_pong pops it and updates latency
        conn.send(m.MsgType.PING, {"nonce": nonce, "payload": payload})
        return _timed(d)

    hook_handle(sender, on_message)
    try:
        samples = await rtt_loop(round_trip)
    finally:
        unhook_handle(sender)
    assert conn.latency is not None and not any(n >= NONCE_BASE for n in conn.ping_sent), "PONGs not handled"
    frame = len(encode_frame(m.encode_message(m.MsgType.PING, {"nonce": NONCE_BASE, "payload": payload})))
    return samples, frame


async def ours_stream(sender: Node, receiver: Node, out_conn: PeerConnection, in_conn: PeerConnection,
                      vote_payload: bytes) -> tuple[int, float]:
    """(votes, seconds): ``sender`` streams ``vote_payload`` to ``receiver``, counted once handled."""
    handled = [0]
    waiter: list[Any] = [None, 0]                  # deferred, target

    def on_message(c: PeerConnection, msg_type: m.MsgType, body: Any) -> None:
        if c is in_conn and msg_type == m.MsgType.VOTE:
            handled[0] += 1
            if waiter[0] is not None and handled[0] >= waiter[1]:
                d, waiter[0] = waiter[0], None
                d.callback(handled[0])

    def arrived(target: int) -> defer.Deferred[Any]:
        if handled[0] >= target:
            return defer.succeed(handled[0])
        waiter[0], waiter[1] = defer.Deferred(), target
        return _timed(waiter[0])

    def send(n: int) -> None:
        for _ in range(n):
            out_conn.send_payload(vote_payload)    # pre-encoded, as P2PService._relay sends

    score = receiver.p2p.peers.score(sender.p2p.peer_id)
    in_before = in_conn.messages_in
    hook_handle(receiver, on_message)
    try:
        frames, seconds = await stream_loop(send, lambda: handled[0], arrived)
    finally:
        unhook_handle(receiver)
    assert in_conn.messages_in - in_before >= frames and handled[0] == frames, (in_conn.messages_in, handled, frames)
    assert in_conn.state == "ready" and receiver.p2p.peers.score(sender.p2p.peer_id) == score, "sender was blamed"
    return frames, seconds


def stale_vote(net: Net, receiver: Node) -> bytes:
    """A signed VOTE envelope for a height the receiver has decided (height 0): handled and dropped."""
    engine = receiver.consensus.engine
    assert engine is not None and engine.height >= 1, "receiver's consensus engine is not running"
    key = net.keys[1]
    vote = Vote(VoteType.PREVOTE, 0, 0, b"\x22" * 32, key.address).signed(key, net.genesis.chain_id)
    return m.encode_message(m.MsgType.VOTE, vote.to_wire())


# -- report ------------------------------------------------------------------------------------------
def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    print(f"# timecoin P2P benchmark, python {sys.version.split()[0]}, reactor {type(reactor).__name__}, "
          f"BENCH_SECONDS={MIN_SECONDS}")
    with tempfile.TemporaryDirectory() as tmp:
        net = Net(Path(tmp), 1, observers=1, rate_limit="1000000", rate_limit_burst="1000000",
                  block_interval=QUIET, gossip_interval=QUIET, ping_interval=QUIET)
        try:
            validator, observer, v_conn, o_conn = await connected_pair(net)
            vote_payload = stale_vote(net, validator)
            our_rtt, ping_frame = await ours_rtt(observer, o_conn)
            raw_rtts = await raw_rtt()
            vote_frame = encode_frame(vote_payload)
            our_n, our_s = await ours_stream(observer, validator, o_conn, v_conn, vote_payload)
            raw_n, raw_s = await raw_stream(vote_frame)
        finally:
            await net.stop()

    ours_med, ours_p99 = statistics.median(our_rtt) * 1e6, pct(our_rtt, 0.99) * 1e6
    raw_med, raw_p99 = statistics.median(raw_rtts) * 1e6, pct(raw_rtts, 0.99) * 1e6
    ours_rate, raw_rate = our_n / our_s, raw_n / raw_s
    rows = [
        (f"ping RTT median ({ping_frame} B frame)", f"{ours_med:,.0f} us", f"{raw_med:,.0f} us", ours_med / raw_med),
        ("ping RTT p99", f"{ours_p99:,.0f} us", f"{raw_p99:,.0f} us", ours_p99 / raw_p99),
        (f"one-way msgs/s (VOTE, {len(vote_frame)} B frame)", f"{ours_rate:,.0f}/s", f"{raw_rate:,.0f}/s",
         ours_rate / raw_rate),
    ]
    print(f"{'measure':<40} {'timecoin':>14} {'raw TLS 1.3':>14} {'ratio':>7}")
    for name, ours, raw, ratio in rows:
        print(f"{name:<40} {ours:>14} {raw:>14} {ratio:>7.2f}")
    print(f"(RTT samples: ours {len(our_rtt)}, raw {len(raw_rtts)}; stream frames: ours {our_n}, raw {raw_n}; "
          f"RTT ratio = ours/raw, higher is slower; msgs/s ratio = ours/raw, lower is slower)")
    print(json.dumps({
        "bench": "p2p", "seconds": MIN_SECONDS,
        "rtt_us": {"ours_median": round(ours_med, 1), "ours_p99": round(ours_p99, 1),
                   "raw_median": round(raw_med, 1), "raw_p99": round(raw_p99, 1),
                   "median_ratio": round(ours_med / raw_med, 2), "samples": [len(our_rtt), len(raw_rtts)],
                   "ping_frame_bytes": ping_frame, "raw_frame_bytes": 4 + PAYLOAD_BYTES},
        "msgs_per_s": {"ours": round(ours_rate), "raw": round(raw_rate), "ratio": round(ours_rate / raw_rate, 3),
                       "frame_bytes": len(vote_frame), "frames": [our_n, raw_n]},
    }, sort_keys=True))


def run(_reactor: Any) -> Awaitable[None]:
    return defer.ensureDeferred(main())


if __name__ == "__main__":
    task.react(run)
