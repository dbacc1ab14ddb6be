"""How peer connections are secured, chosen once per node: TLS on a real reactor, or what the reactor offers.

On a real network every peer connection is TLS 1.3 with a libp2p host-key certificate
(:class:`TLSChannel`; :mod:`timecoin.p2p.identity` makes and checks the certificates). The whole-node
simulator (:mod:`timecoin.sim.cluster`) runs the same service tree on a simulated reactor, where a TLS
handshake would draw fresh key shares from OpenSSL and make runs unrepeatable; such a reactor provides
``secure_channel(identity)`` returning an object with the same two methods, which carries the
authenticated certificate beside an in-memory stream instead (docs/simulation.md). Everything above
(the pre-TLS gate, ``PeerConnection.handshakeCompleted``, the certificate check) is the same code.
"""
from __future__ import annotations

import os
import random
from typing import Any, Protocol, cast

from twisted.internet import endpoints
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory

from timecoin.p2p.identity import HostIdentity


class SecureChannel(Protocol):
    """Wraps inbound factories and outbound endpoints so the wrapped protocol learns the peer's certificate."""

    def server_factory(self, factory: IProtocolFactory) -> Any:
        """A factory whose ``buildProtocol(addr)`` returns a wrapper with ``.wrappedProtocol``."""

    def client_endpoint(self, tcp: IStreamClientEndpoint, expected_peer_id: str) -> IStreamClientEndpoint:
        """An endpoint that connects over ``tcp`` and fails unless the peer proves ``expected_peer_id``."""


class TLSChannel:
    """TLS 1.3 with libp2p certificates: the production channel."""

    def __init__(self, identity: HostIdentity) -> None:
        self.identity = identity

    def server_factory(self, factory: IProtocolFactory) -> TLSMemoryBIOFactory:
        return TLSMemoryBIOFactory(cast(Any, self.identity.server_context_factory()), False, factory)

    def client_endpoint(self, tcp: IStreamClientEndpoint, expected_peer_id: str) -> IStreamClientEndpoint:
        return endpoints.wrapClientTLS(cast(Any, self.identity.client_creator(expected_peer_id)), tcp)


def channel_for(reactor: Any, identity: HostIdentity) -> SecureChannel:
    """The reactor's own channel if it offers one (the simulator), TLS otherwise."""
    offer = getattr(reactor, "secure_channel", None)
    return offer(identity) if offer is not None else TLSChannel(identity)


def certificate_time(reactor: Any) -> float | None:
    """When our certificate's validity starts: the simulated reactor's time inside the simulator, else the
    wall clock (None). Nodes on a ``task.Clock`` in tests still meet real TLS peers whose checks use the
    wall clock, so only a reactor that brings its own channel (and checks certificates on its own time)
    gets its own time here."""
    return reactor.seconds() if getattr(reactor, "secure_channel", None) is not None else None


def random_for(reactor: Any, purpose: str) -> random.Random:
    """A random stream for ``purpose``: seeded by a simulated reactor (``random_stream``), else from the OS.

    Every random choice a node makes (dial order, ping nonces, address samples) comes from such a stream,
    so one seed replays a simulated run exactly.
    """
    offer = getattr(reactor, "random_stream", None)
    return offer(purpose) if offer is not None else random.Random(os.urandom(16))
