"""libp2p TLS identity (SPEC §5 "Transport"): certificates, their checks, and real TLS 1.3 on 127.0.0.1.

Certificates with one defect each are built by ``tests.interop.certs`` (cryptography + coincurve), so the
checks are tested against an independent builder, not against themselves.
"""
from __future__ import annotations

import os
import time
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from OpenSSL import SSL
from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.interop import certs
from timecoin import crypto
from timecoin.errors import DecodeError, Reason
from timecoin.p2p.identity import (
    HostIdentity,
    PeerAuthError,
    decode_signed_key,
    encode_signed_key,
    peer_public_key,
    public_key_from_certificate,
)

NOW = 1_900_000_000.0
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def host() -> crypto.PrivateKey:
    return crypto.PrivateKey(bytes(range(1, 33)))


@pytest.fixture(scope="module")
def other() -> crypto.PrivateKey:
    return crypto.PrivateKey(b"\x07" * 32)


# -- certificates ------------------------------------------------------------------------------------
def test_our_certificate_round_trips_to_our_peer_id(host: crypto.PrivateKey) -> None:
    ident = HostIdentity(host, now=NOW)
    assert public_key_from_certificate(ident.certificate_der, now=NOW) == host.public_key
    assert crypto.peer_id_of(public_key_from_certificate(ident.certificate_der, now=NOW)) == host.peer_id
    cert = x509.load_der_x509_certificate(ident.certificate_der)
    ext = cert.extensions.get_extension_for_oid(certs.OID)
    assert ext.critical
    proto, sig = decode_signed_key(ext.value.value)
    assert proto == crypto.libp2p_public_key_protobuf(host.public_key)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"            # ephemeral TLS key, not the host key
    assert cert.not_valid_before_utc.timestamp() == NOW - 3600
    assert cert.not_valid_after_utc.timestamp() == NOW + 365 * 24 * 3600
    assert cert.issuer == cert.subject
    # two identities of one host key: different TLS keys, same host key
    again = HostIdentity(host, now=NOW)
    assert again.certificate.public_key() != cert.public_key()
    assert public_key_from_certificate(again.certificate_der, now=NOW) == host.public_key


def test_independently_built_certificate_is_accepted(host: crypto.PrivateKey) -> None:
    der, _ = certs.good_cert(host, NOW)
    assert public_key_from_certificate(der, now=NOW) == host.public_key
    der, _ = certs.good_cert(host, NOW, critical=False)        # go-libp2p leaves the extension non-critical
    assert public_key_from_certificate(der, now=NOW) == host.public_key


def test_validity_period_is_enforced(host: crypto.PrivateKey) -> None:
    der = HostIdentity(host, now=NOW).certificate_der
    assert public_key_from_certificate(der, now=NOW - 3600) == host.public_key
    assert public_key_from_certificate(der, now=NOW + 365 * 24 * 3600) == host.public_key
    with pytest.raises(PeerAuthError, match="not valid yet"):
        public_key_from_certificate(der, now=NOW - 3601)
    with pytest.raises(PeerAuthError, match="expired"):
        public_key_from_certificate(der, now=NOW + 365 * 24 * 3600 + 1)
    old = HostIdentity(host, now=time.time() - 2 * 365 * 24 * 3600).certificate_der
    with pytest.raises(PeerAuthError, match="expired"):
        public_key_from_certificate(old)                         # default: the wall clock


def test_tampered_extension_is_refused(host: crypto.PrivateKey) -> None:
    tls_key = ec.generate_private_key(ec.SECP256R1())
    proto = crypto.libp2p_public_key_protobuf(host.public_key)
    sig = certs.host_signature(host, certs.spki_of(tls_key))
    assert public_key_from_certificate(certs.make_cert(tls_key, certs.signed_key(proto, sig), NOW), now=NOW)
    # one bit of the signature's s, or of the claimed host key (still a valid point half the time)
    bad_sig = certs.flip_byte(sig, len(sig) - 1)
    with pytest.raises(PeerAuthError, match="signature"):
        public_key_from_certificate(certs.make_cert(tls_key, certs.signed_key(proto, bad_sig), NOW), now=NOW)
    bad_proto = certs.flip_byte(proto, len(proto) - 1)
    with pytest.raises(PeerAuthError):
        public_key_from_certificate(certs.make_cert(tls_key, certs.signed_key(bad_proto, sig), NOW), now=NOW)


def test_signature_by_another_key_is_refused(host: crypto.PrivateKey, other: crypto.PrivateKey) -> None:
    tls_key = ec.generate_private_key(ec.SECP256R1())
    proto = crypto.libp2p_public_key_protobuf(host.public_key)
    forged = certs.host_signature(other, certs.spki_of(tls_key))   # claims host, signed by other
    with pytest.raises(PeerAuthError, match="signature"):
        public_key_from_certificate(certs.make_cert(tls_key, certs.signed_key(proto, forged), NOW), now=NOW)


def test_swapped_tls_key_is_refused(host: crypto.PrivateKey) -> None:
    """A genuine SignedKey lifted into a certificate for another TLS key (a relayed certificate) fails."""
    victim = HostIdentity(host, now=NOW)
    ext = x509.load_der_x509_certificate(victim.certificate_der).extensions.get_extension_for_oid(certs.OID)
    thief_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(PeerAuthError, match="signature"):
        public_key_from_certificate(certs.make_cert(thief_key, ext.value.value, NOW), now=NOW)


def test_missing_extension_is_refused() -> None:
    der = certs.make_cert(ec.generate_private_key(ec.SECP256R1()), None, NOW)
    with pytest.raises(PeerAuthError, match="no libp2p public key extension"):
        public_key_from_certificate(der, now=NOW)


def test_broken_self_signature_and_garbage_are_refused(host: crypto.PrivateKey) -> None:
    der = HostIdentity(host, now=NOW).certificate_der
    with pytest.raises(PeerAuthError, match="self-signed"):
        public_key_from_certificate(certs.flip_byte(der, len(der) - 3), now=NOW)   # in the outer signature
    for junk in (b"", b"\x30\x00", der[:-1], der + b"\x00", b"\x00" * 64):
        with pytest.raises(PeerAuthError):
            public_key_from_certificate(junk, now=NOW)


def test_high_s_and_non_canonical_host_signatures_are_refused(host: crypto.PrivateKey) -> None:
    tls_key = ec.generate_private_key(ec.SECP256R1())
    proto = crypto.libp2p_public_key_protobuf(host.public_key)
    sig = certs.host_signature(host, certs.spki_of(tls_key))
    r, s = decode_dss_signature(sig)
    assert s <= SECP256K1_N // 2                                     # we sign low-S
    high_s = encode_dss_signature(r, SECP256K1_N - s)                # the malleated twin, valid but high-S
    with pytest.raises(PeerAuthError, match="signature"):
        public_key_from_certificate(certs.make_cert(tls_key, certs.signed_key(proto, high_s), NOW), now=NOW)
    # same r, s in BER with a needless leading zero on r
    rb = r.to_bytes(32, "big")
    rb = b"\x00" + rb if rb[0] < 0x80 else b"\x00\x00" + rb
    sb = s.to_bytes((s.bit_length() + 8) // 8, "big")
    body = b"\x02" + bytes((len(rb),)) + rb + b"\x02" + bytes((len(sb),)) + sb
    lax = b"\x30" + bytes((len(body),)) + body
    with pytest.raises(PeerAuthError, match="signature"):
        public_key_from_certificate(certs.make_cert(tls_key, certs.signed_key(proto, lax), NOW), now=NOW)


def test_other_key_types_are_refused(host: crypto.PrivateKey) -> None:
    tls_key = ec.generate_private_key(ec.SECP256R1())
    sig = certs.host_signature(host, certs.spki_of(tls_key))
    ed25519_proto = bytes((0x08, 0x01, 0x12, 0x20)) + b"\x11" * 32
    with pytest.raises(PeerAuthError, match="secp256k1"):
        public_key_from_certificate(certs.make_cert(tls_key, certs.signed_key(ed25519_proto, sig), NOW), now=NOW)
    proto = crypto.libp2p_public_key_protobuf(host.public_key) + b"\x18\x01"     # trailing protobuf field
    with pytest.raises(PeerAuthError, match="secp256k1"):
        public_key_from_certificate(certs.make_cert(tls_key, certs.signed_key(proto, sig), NOW), now=NOW)


def test_unknown_critical_extension_is_refused_non_critical_ignored(host: crypto.PrivateKey) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    tls_key = ec.generate_private_key(ec.SECP256R1())
    ext = certs.signed_key(crypto.libp2p_public_key_protobuf(host.public_key),
                           certs.host_signature(host, certs.spki_of(tls_key)))
    ok = certs.make_cert(tls_key, ext, NOW, extra=[(unknown, False)])
    assert public_key_from_certificate(ok, now=NOW) == host.public_key
    with pytest.raises(PeerAuthError, match="unknown critical extension"):
        public_key_from_certificate(certs.make_cert(tls_key, ext, NOW, extra=[(unknown, True)]), now=NOW)


def test_signed_key_der_is_strict() -> None:
    proto, sig = b"\x08\x02\x12\x21" + b"\x02" * 33, b"\x30" + b"\x44" * 70
    good = encode_signed_key(proto, sig)
    assert good == certs.signed_key(proto, sig)                      # matches the independent encoder
    assert decode_signed_key(good) == (proto, sig)
    long = encode_signed_key(b"\x01" * 200, b"\x02" * 300)           # long-form lengths both ways
    assert decode_signed_key(long) == (b"\x01" * 200, b"\x02" * 300)
    inner = b"\x04\x01A\x04\x01B"
    bad = {
        "trailing bytes": good + b"\x00",
        "wrong outer tag": b"\x31" + good[1:],
        "BIT STRING field": b"\x30\x06\x03\x01A\x04\x01B",
        "indefinite length": b"\x30\x80" + inner + b"\x00\x00",
        "non-minimal length": b"\x30\x81\x06" + inner,
        "leading zero length": b"\x30\x82\x00\x06" + inner,
        "third field": b"\x30\x09" + inner + b"\x04\x01C",
        "one field": b"\x30\x03\x04\x01A",
        "truncated": good[:-1],
        "length past end": b"\x30\x07" + inner,
        "empty": b"",
    }
    for why, data in bad.items():
        with pytest.raises(PeerAuthError):
            decode_signed_key(data)
            pytest.fail(why)


def test_peer_auth_error_is_a_bad_signature() -> None:
    assert PeerAuthError.reason == Reason.BAD_SIGNATURE


def test_malformed_expected_peer_id_is_refused_before_dialing(host: crypto.PrivateKey) -> None:
    with pytest.raises(DecodeError):
        HostIdentity(host).client_creator("not-a-peer-id")


# -- real TLS over 127.0.0.1 ---------------------------------------------------------------------------
@implementer(IHandshakeListener)
class Peer(Protocol):
    """Records what the TLS layer told it; sends ``greeting`` as soon as it is connected."""

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.received = b""
        self.handshake: defer.Deferred[bytes] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None
        self.alpn: bytes | None = None
        self.version: str | None = None

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.greeting)          # buffered by Twisted until the handshake completes

    def handshakeCompleted(self) -> None:  # noqa: N802
        self.alpn = self.transport.negotiatedProtocol
        self.version = self.transport.getHandle().get_protocol_version_name()
        try:
            self.handshake.callback(peer_public_key(self.transport))
        except PeerAuthError as exc:
            self.handshake.errback(exc)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802
        if not self.handshake.called:
            self.handshake.errback(reason)
        self.reason = reason
        self.lost.callback(None)


class Server:
    """A listening libp2p TLS endpoint on 127.0.0.1 that keeps every accepted protocol."""

    def __init__(self, ident: HostIdentity) -> None:
        self.ident = ident
        self.peers: list[Peer] = []
        self.port: Any = None

    async def start(self) -> int:
        factory = Factory.forProtocol(lambda: self._new())
        endpoint = endpoints.SSL4ServerEndpoint(reactor, 0, self.ident.server_context_factory(),
                                                interface="127.0.0.1")
        self.port = await endpoint.listen(factory)
        return self.port.getHost().port

    def _new(self) -> Peer:
        peer = Peer(b"from-server")
        self.peers.append(peer)
        return peer

    async def stop(self) -> None:
        for peer in self.peers:
            if not peer.lost.called:
                peer.transport.abortConnection()
        await self.port.stopListening()


async def dial(port: int, creator: Any, greeting: bytes = b"from-client") -> Peer:
    tcp = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT)
    proto = Peer(greeting)
    await endpoints.connectProtocol(endpoints.wrapClientTLS(creator, tcp), proto).addTimeout(TIMEOUT, reactor)
    return proto


async def within(d: defer.Deferred, what: str) -> Any:
    """Await with a bound: a hang fails the test instead of blocking the run."""
    try:
        return await d.addTimeout(TIMEOUT, reactor)
    except defer.TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def until(pred: Any, what: str) -> None:
    for _ in range(int(TIMEOUT / 0.01)):
        if pred():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    pytest.fail(f"timed out waiting for {what}")


@implementer(IOpenSSLClientConnectionCreator)
class RawClient:
    """A TLS client outside HostIdentity: chosen certificate (or none), ALPN list and top version."""

    def __init__(self, cert_der: bytes | None = None, key: Any = None, alpn: list[bytes] | None = None,
                 max_version: int = SSL.TLS1_3_VERSION) -> None:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_max_proto_version(max_version)
        if cert_der is not None:
            ctx.use_certificate(x509.load_der_x509_certificate(cert_der))
            ctx.use_privatekey(key)
        ctx.set_verify(SSL.VERIFY_NONE)
        if alpn != []:                                 # [] offers no ALPN at all
            ctx.set_alpn_protos(alpn or [b"libp2p"])
        self.ctx = ctx

    def clientConnectionForTLS(self, tls: Any) -> SSL.Connection:  # noqa: N802
        conn = SSL.Connection(self.ctx, None)
        conn.set_app_data(tls)
        conn.set_connect_state()
        return conn


async def assert_refused_by_server(server: Server, client: Peer) -> None:
    """The server never completes a handshake with ``client`` nor delivers its bytes; the link closes."""
    await within(client.lost, "the refused client to be disconnected")
    await until(lambda: server.peers and all(p.lost.called for p in server.peers), "server side closed")
    for p in server.peers:
        assert p.received == b""
        assert p.alpn is None and p.version is None       # handshakeCompleted never ran
        p.handshake.addErrback(lambda _f: None)


@pytest_twisted.ensureDeferred
async def test_mutual_authentication_over_tls13(host: crypto.PrivateKey, other: crypto.PrivateKey) -> None:
    server = Server(HostIdentity(host))
    port = await server.start()
    try:
        client_ident = HostIdentity(other)
        client = await dial(port, client_ident.client_creator(host.peer_id))
        assert await within(client.handshake, "client handshake") == host.public_key
        await until(lambda: len(server.peers) == 1 and server.peers[0].handshake.called, "server handshake")
        srv = server.peers[0]
        assert await srv.handshake == other.public_key
        await until(lambda: client.received == b"from-server" and srv.received == b"from-client", "data")
        assert client.alpn == srv.alpn == b"libp2p"
        assert client.version == srv.version == "TLSv1.3"
        # a second dial without an expected PeerID reuses the same contexts and still learns the key
        second = await dial(port, client_ident.client_creator(None))
        assert await within(second.handshake, "second handshake") == host.public_key
        second.transport.loseConnection()
        client.transport.loseConnection()
        await within(client.lost, "client close")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_unexpected_server_peer_id_aborts_the_dial(host: crypto.PrivateKey, other: crypto.PrivateKey) -> None:
    server = Server(HostIdentity(host))
    port = await server.start()
    try:
        wrong = crypto.PrivateKey(b"\x09" * 32).peer_id
        client = await dial(port, HostIdentity(other).client_creator(wrong), greeting=b"secret")
        await within(client.lost, "the mismatched dial to fail")
        assert client.reason is not None and client.reason.check(SSL.Error), client.reason
        assert client.alpn is None and client.received == b""
        client.handshake.addErrback(lambda _f: None)
        await until(lambda: server.peers and all(p.lost.called for p in server.peers), "server side closed")
        for p in server.peers:
            assert p.received == b""                    # the client's bytes never reached the server
            assert p.version is None
            p.handshake.addErrback(lambda _f: None)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_server_refuses_clients_without_a_valid_libp2p_certificate(
        host: crypto.PrivateKey, other: crypto.PrivateKey) -> None:
    server = Server(HostIdentity(host))
    port = await server.start()
    try:
        # 1. plain TLS 1.3 client with no certificate at all
        client = await dial(port, RawClient())
        await assert_refused_by_server(server, client)
        client.handshake.addErrback(lambda _f: None)
        server.peers.clear()
        # 2. a self-signed certificate whose host signature is made by another key
        tls_key = ec.generate_private_key(ec.SECP256R1())
        forged = certs.signed_key(crypto.libp2p_public_key_protobuf(other.public_key),
                                  certs.host_signature(host, certs.spki_of(tls_key)))
        client = await dial(port, RawClient(certs.make_cert(tls_key, forged, time.time()), tls_key))
        await assert_refused_by_server(server, client)
        client.handshake.addErrback(lambda _f: None)
        server.peers.clear()
        # 3. a valid libp2p certificate, but the client insists on another ALPN protocol
        der, key = certs.good_cert(other, time.time())
        client = await dial(port, RawClient(der, key, alpn=[b"h2"]))
        await assert_refused_by_server(server, client)
        client.handshake.addErrback(lambda _f: None)
        server.peers.clear()
        # 3b. a valid libp2p certificate, and no ALPN offered at all (the select callback never runs)
        client = await dial(port, RawClient(der, key, alpn=[]))
        await assert_refused_by_server(server, client)
        client.handshake.addErrback(lambda _f: None)
        server.peers.clear()
        # 4. a valid libp2p certificate over TLS 1.2
        client = await dial(port, RawClient(der, key, max_version=SSL.TLS1_2_VERSION))
        await assert_refused_by_server(server, client)
        client.handshake.addErrback(lambda _f: None)
        server.peers.clear()
        # control: the same valid certificate over TLS 1.3 with libp2p ALPN is admitted
        client = await dial(port, RawClient(der, key))
        await until(lambda: server.peers and server.peers[0].handshake.called, "server handshake")
        assert await server.peers[0].handshake == other.public_key
        client.transport.loseConnection()
        await within(client.lost, "client close")
    finally:
        await server.stop()


@implementer(IOpenSSLServerConnectionCreator)
class RawServerContext:
    """A TLS 1.3 server outside HostIdentity: a valid libp2p certificate, any client certificate, and
    an ALPN choice of its own (None: ignores the client's ALPN offer, as a non-libp2p server would)."""

    def __init__(self, cert_der: bytes, key: Any, select: bytes | None = None) -> None:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.use_certificate(x509.load_der_x509_certificate(cert_der))
        ctx.use_privatekey(key)
        ctx.set_verify(SSL.VERIFY_PEER, lambda *_args: True)
        if select is not None:
            ctx.set_alpn_select_callback(lambda _conn, _offered: select)
        self.ctx = ctx

    def serverConnectionForTLS(self, tls: Any) -> SSL.Connection:  # noqa: N802
        conn = SSL.Connection(self.ctx, None)
        conn.set_app_data(tls)
        return conn


@pytest_twisted.ensureDeferred
async def test_client_refuses_a_server_that_did_not_negotiate_libp2p_alpn(
        host: crypto.PrivateKey, other: crypto.PrivateKey) -> None:
    der, key = certs.good_cert(host, time.time())            # the server proves ``host`` correctly
    client_ident = HostIdentity(other)
    for select, expect_ok in ((None, False), (b"libp2p", True)):
        server = Server(HostIdentity(host))
        endpoint = endpoints.SSL4ServerEndpoint(reactor, 0, RawServerContext(der, key, select),
                                                interface="127.0.0.1")
        server.port = await endpoint.listen(Factory.forProtocol(lambda s=server: s._new()))
        port = server.port.getHost().port
        try:
            for expected in (host.peer_id, None):            # pinned or not, the client checks ALPN
                client = await dial(port, client_ident.client_creator(expected), greeting=b"secret")
                if expect_ok:                                # control: same server, ALPN selected
                    assert await within(client.handshake, "handshake") == host.public_key
                    assert client.alpn == b"libp2p"
                    client.transport.loseConnection()
                    await within(client.lost, "client close")
                    continue
                await within(client.lost, "the dial to a server without libp2p ALPN to fail")
                assert client.reason is not None and client.reason.check(SSL.Error), client.reason
                assert client.alpn is None and client.version is None and client.received == b""
                client.handshake.addErrback(lambda _f: None)
                await until(lambda s=server: s.peers and all(p.lost.called for p in s.peers), "server closed")
                assert all(p.received == b"" for p in server.peers)      # our bytes never left
                for p in server.peers:
                    p.handshake.addErrback(lambda _f: None)
                server.peers.clear()
        finally:
            await server.stop()


@pytest.mark.parametrize("name", ["found-unknown-key-type", "found-invalid-version"])
def test_certificates_the_fuzzer_found_are_peer_auth_errors(name: str) -> None:
    """Found by the ``certificate`` fuzz target: a key type cryptography cannot load (UnsupportedAlgorithm)
    and an X.509 version it does not know (InvalidVersion) escaped the check instead of refusing the peer."""
    found = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "fuzz", "corpus", "certificate", name)
    with open(found, "rb") as f:
        der = f.read()
    with pytest.raises(PeerAuthError):
        public_key_from_certificate(der, now=1_900_000_000.0)
