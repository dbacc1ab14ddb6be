"""The simulator's secure channel: the authenticated peer identity carried beside the in-memory stream.

In the real network TLS 1.3 proves each side's libp2p host certificate (``timecoin.p2p.channel.TLSChannel``).
Inside the simulator a TLS handshake would draw fresh randomness from OpenSSL on every connection, so no
run could be replayed; instead each end sends its certificate *beside* the byte stream, in order with it
(``SimTransport.send_beside``), one latency away like the handshake's flight. The receiving end checks it
with the production code (``identity.public_key_from_certificate``: the libp2p extension, the host-key
signature, the validity period on the simulated clock), refuses a dialed peer that is not the key it
asked for, and only then tells the protocol ``handshakeCompleted`` -- so the gate before TLS, the pending
slots, admission and everything after run unchanged. What is left out: the TLS record layer's bytes and CPU.
"""
from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto as ossl
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from timecoin import crypto
from timecoin.p2p.identity import HostIdentity, PeerAuthError, public_key_from_certificate
from timecoin.sim.cluster.reactor import NodeReactor


class SimSecureProtocol(Protocol):
    """Stands where ``TLSMemoryBIOProtocol`` stands: the wrapped protocol's transport, certificate included."""

    transport: Any

    def __init__(self, wrapped: Any, identity: HostIdentity, reactor: NodeReactor,
                 expected_pubkey: bytes | None) -> None:
        self.wrappedProtocol = wrapped
        self.identity = identity
        self.reactor = reactor
        self.expected_pubkey = expected_pubkey
        self.peer_certificate: Any = None
        self.handshake_done = False

    # -- from below ------------------------------------------------------------------------------------
    def connectionMade(self) -> None:  # noqa: N802
        self.transport.beside_sink = self.beside_received     # (an endpoint's wrapper may sit between us)
        self.transport.send_beside(self.identity.certificate)
        self.wrappedProtocol.makeConnection(self)

    def beside_received(self, certificate: Any) -> None:
        if self.handshake_done or not isinstance(certificate, type(self.identity.certificate)):
            self.transport.abortConnection()
            return
        der = certificate.public_bytes(Encoding.DER)
        try:
            pubkey = public_key_from_certificate(der, self.reactor.seconds())
        except PeerAuthError:
            self.transport.abortConnection()
            return
        if self.expected_pubkey is not None and pubkey != self.expected_pubkey:
            self.transport.abortConnection()       # TLS's verify callback refuses the wrong key
            return
        self.peer_certificate = ossl.X509.from_cryptography(certificate)
        self.handshake_done = True
        hook = getattr(self.wrappedProtocol, "handshakeCompleted", None)
        if hook is not None:
            hook()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if not self.handshake_done:              # bytes before the handshake: not a TLS peer
            self.transport.abortConnection()
            return
        self.wrappedProtocol.dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        self.wrappedProtocol.connectionLost(reason)

    # -- to the wrapped protocol: the transport it sees ------------------------------------------------
    def getPeerCertificate(self) -> Any:  # noqa: N802
        return self.peer_certificate

    def write(self, data: bytes) -> None:
        if self.handshake_done:
            self.transport.write(data)

    def writeSequence(self, seq: Any) -> None:  # noqa: N802
        self.write(b"".join(seq))

    def loseConnection(self) -> None:  # noqa: N802
        self.transport.loseConnection()

    def abortConnection(self) -> None:  # noqa: N802
        self.transport.abortConnection()

    def getPeer(self) -> Any:  # noqa: N802
        return self.transport.getPeer()

    def getHost(self) -> Any:  # noqa: N802
        return self.transport.getHost()

    def pauseProducing(self) -> None:  # noqa: N802
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        self.transport.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        self.transport.stopProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:  # noqa: N802
        self.transport.unregisterProducer()

    @property
    def disconnecting(self) -> bool:
        return bool(getattr(self.transport, "disconnecting", False))


class SimSecureFactory(Factory):
    """Wraps a protocol factory like ``TLSMemoryBIOFactory`` does (None from the inner factory stays None)."""

    def __init__(self, inner: Any, identity: HostIdentity, reactor: NodeReactor,
                 expected_pubkey: bytes | None = None) -> None:
        self.inner = inner
        self.identity = identity
        self.reactor = reactor
        self.expected_pubkey = expected_pubkey

    def doStart(self) -> None:  # noqa: N802
        self.inner.doStart()

    def doStop(self) -> None:  # noqa: N802
        self.inner.doStop()

    def buildProtocol(self, addr: Any) -> SimSecureProtocol | None:  # noqa: N802
        proto = self.inner.buildProtocol(addr)
        if proto is None:
            return None
        return SimSecureProtocol(proto, self.identity, self.reactor, self.expected_pubkey)

    # ClientFactory hooks the endpoint's wrapping factory relies on
    def startedConnecting(self, connector: Any) -> None:  # noqa: N802
        hook = getattr(self.inner, "startedConnecting", None)
        if hook is not None:
            hook(connector)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:  # noqa: N802
        hook = getattr(self.inner, "clientConnectionFailed", None)
        if hook is not None:
            hook(connector, reason)


class _SimSecureEndpoint:
    """``wrapClientTLS`` for the simulator: connect over ``tcp``, fire with the wrapped protocol."""

    def __init__(self, tcp: Any, identity: HostIdentity, reactor: NodeReactor,
                 expected_pubkey: bytes) -> None:
        self.tcp = tcp
        self.identity = identity
        self.reactor = reactor
        self.expected_pubkey = expected_pubkey

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        d = self.tcp.connect(SimSecureFactory(factory, self.identity, self.reactor, self.expected_pubkey))
        return d.addCallback(lambda proto: proto.wrappedProtocol)


class SimChannel:
    """What ``timecoin.p2p.channel.channel_for`` returns on a :class:`NodeReactor`."""

    def __init__(self, identity: HostIdentity, reactor: NodeReactor) -> None:
        self.identity = identity
        self.reactor = reactor

    def server_factory(self, factory: Any) -> SimSecureFactory:
        return SimSecureFactory(factory, self.identity, self.reactor)

    def client_endpoint(self, tcp: Any, expected_peer_id: str) -> Any:
        return _SimSecureEndpoint(tcp, self.identity, self.reactor, crypto.pubkey_from_peer_id(expected_peer_id))
