"""Raw Twisted TLS 1.3 on 127.0.0.1: the floor of every P2P figure, measured once per run.

A throwaway self-signed P-256 certificate (no client certificate), the real reactor, both ends in this
process and on its one thread -- as our two nodes are in the ``p2p`` part. Frames are what ours are on
the wire: a 4-byte big-endian length and the payload.

* :func:`raw_rtt`: round-trip times of a framed 100-byte payload echoed back, one at a time
  (:class:`RawEcho` keeps such a connection open, for a part that interleaves its rounds with its own).
* :func:`raw_messages_per_s`: frames/s one connection carries one way, the receiver splitting them on the
  length prefix and counting (sent in batches per reactor turn, as a relay writes).

Results are memoized per run (per argument), so every part of one run divides by one measurement.
"""
from __future__ import annotations

import datetime
import statistics
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto as ossl_crypto
from twisted.internet import defer, endpoints, protocol, ssl

from benchmarks.suite import Figure
from timecoin.sim.loopnet import reactor, sleep, wait_for
from timecoin.wire.framing import encode_frame

PAYLOAD_BYTES = 100
WARMUP_PINGS = 50
MAX_PINGS = 200_000               # per measurement, whatever the window says
ROUND_TRIP_TIMEOUT = 5.0          # one missing answer fails the run instead of hanging it
STREAM_FRAME_BYTES = 138         # the p2p part's VOTE frame (4-byte length + envelope): one shared measurement
STREAM_BATCH = 500                # frames written per reactor turn
STREAM_ROUND = 5_000              # frames per timed round; rounds repeat until the window is spent
MAX_ROUNDS = 400

_memo: dict[tuple[str, Any], Any] = {}


# -- measuring loops shared with the p2p part (the same for our stack and the baseline) -----------------
async def rtt_loop(one_round_trip: Callable[[], defer.Deferred[Any]], seconds: float) -> list[float]:
    """Round-trip times in seconds, one at a time, after a warm-up; bounded by ``seconds`` and MAX_PINGS."""
    for _ in range(WARMUP_PINGS):
        await one_round_trip()
    samples: list[float] = []
    t_end = time.perf_counter() + seconds
    while len(samples) < MAX_PINGS:
        t0 = time.perf_counter()
        await one_round_trip()
        t1 = time.perf_counter()
        samples.append(t1 - t0)
        if t1 >= t_end:
            break
    return samples


async def stream_loop(send: Callable[[int], None], received: Callable[[], int],
                      arrived: Callable[[int], defer.Deferred[Any]], seconds: float) -> tuple[int, float]:
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
        if spent >= seconds:
            break
    return total, spent


def timed(d: defer.Deferred[Any]) -> defer.Deferred[Any]:
    return d.addTimeout(ROUND_TRIP_TIMEOUT, reactor)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- raw TLS ---------------------------------------------------------------------------------------------
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

    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        # The same socket option our peer connections set (PeerConnection.connectionMade): like for like.
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            set_nodelay(True)

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

    def wait(self, target: int) -> defer.Deferred[Any]:
        """Fires once ``target`` frames have been counted in total."""
        if self.frames >= target:
            return defer.succeed(self.frames)
        self.target = target
        self.waiter = defer.Deferred()
        return timed(self.waiter)


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
    if version != "TLSv1.3":
        raise RuntimeError(f"raw baseline negotiated {version}, not TLSv1.3")
    return port, client, factory.built[0]


class RawEcho:
    """One open raw TLS 1.3 connection to an echo server: a framed 100-byte payload there and back per call."""

    def __init__(self, port: Any, client: RawFrames) -> None:
        self.port, self.client = port, client
        self.frame = encode_frame(b"x" * PAYLOAD_BYTES)

    @classmethod
    async def open(cls) -> RawEcho:
        port, client, _ = await raw_pair(echo_server=True)
        return cls(port, client)

    def round_trip(self) -> defer.Deferred[Any]:
        d = self.client.wait(self.client.frames + 1)
        self.client.transport.write(self.frame)
        return d

    async def close(self) -> None:
        self.client.transport.loseConnection()
        await self.port.stopListening()


async def raw_rtt(seconds: float) -> list[float]:
    """Round-trip times (s) of a framed 100-byte payload over raw TLS 1.3; memoized per run."""
    key = ("rtt", seconds)
    if key not in _memo:
        echo = await RawEcho.open()
        try:
            _memo[key] = await rtt_loop(echo.round_trip, seconds)
        finally:
            await echo.close()
    return list(_memo[key])


async def raw_messages_per_s(frame: bytes, seconds: float) -> float:
    """Frames/s of ``frame`` one raw TLS 1.3 connection carries one way, split and counted; memoized per run."""
    key = ("stream", (len(frame), seconds))          # the bytes themselves do not matter to raw TLS
    if key not in _memo:
        port, client, server = await raw_pair(echo_server=False)

        def send(n: int) -> None:
            write = client.transport.write
            for _ in range(n):
                write(frame)

        try:
            before = server.frames
            frames, spent = await stream_loop(send, lambda: server.frames, server.wait, seconds)
            if server.frames - before != frames:
                raise RuntimeError(f"raw stream counted {server.frames - before} frames of {frames}")
            _memo[key] = frames / spent
        finally:
            client.transport.loseConnection()
            await port.stopListening()
    return float(_memo[key])


async def run(quick: bool) -> list[Figure]:
    """The ``tls`` part: the raw figures themselves, so a reader sees what the p2p ratios divide by."""
    seconds = 0.3 if quick else 1.0
    rtts = await raw_rtt(seconds)
    rate = await raw_messages_per_s(encode_frame(b"v" * (STREAM_FRAME_BYTES - 4)), seconds)
    return [Figure("baseline.tls_rtt_100B.median", round(statistics.median(rtts) * 1e6, 1), "us"),
            Figure("baseline.tls_rtt_100B.p99", round(pct(rtts, 0.99) * 1e6, 1), "us"),
            Figure(f"baseline.tls_messages_{STREAM_FRAME_BYTES}B", round(rate), "messages/s")]
