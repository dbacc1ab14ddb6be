"""Feed a running node's P2P service frames from a peer without a socket: what each message costs the node.

:func:`attach_peer` builds a real :class:`~timecoin.p2p.protocol.PeerConnection` on an in-memory transport
(``twisted.internet.testing.StringTransport``), gives it the PeerID of a key as the TLS handshake would,
lets the service admit it and says a correct hello. From then on :meth:`FedPeer.feed` hands the node bytes
exactly as TLS would after decryption (``dataReceived``) and runs the service's fair input queue to empty,
so every frame goes through the production path: framing, the per-peer queue, the envelope codec, the
handlers, reputation, the consensus engine and its WAL. Only TLS is left out (its cost is the same for
honest and junk bytes). Used by the hostile-peer benchmark and by tests that count what junk costs.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from timecoin import crypto
from timecoin.errors import Reason
from timecoin.p2p.protocol import PeerConnection
from timecoin.wire import messages as m
from timecoin.wire.framing import encode_frame

MAX_DRAIN_TURNS = 1_000_000            # bound on service drain turns per feed (each handles up to DRAIN_BATCH)


class FedPeer:
    """A peer connection of ``node`` whose input the caller writes and whose output it reads."""

    def __init__(self, node: Any, conn: PeerConnection, transport: StringTransport) -> None:
        self.node = node
        self.conn = conn
        self.transport = transport

    @property
    def peer_id(self) -> str:
        return self.conn.peer_id

    def feed(self, data: bytes, chunk: int = 16 * 1024) -> None:
        """Deliver ``data`` in TLS-record-sized chunks and handle every queued frame before returning.

        As the reactor does, one input turn of the service (up to DRAIN_BATCH frames) runs after each
        chunk read, and all of them while the connection is paused (the node stops reading then).
        """
        for off in range(0, len(data), chunk):
            self.conn.dataReceived(data[off:off + chunk])
            self.drain(1 if not self.conn.paused else MAX_DRAIN_TURNS)
        self.drain()

    def drain(self, turns: int = MAX_DRAIN_TURNS) -> None:
        """Run up to ``turns`` of the service's input turns now, as the reactor would, leaving none scheduled."""
        service = self.node.p2p
        for _ in range(turns):
            call, service._drain_call = service._drain_call, None
            if call is not None and call.active():
                call.cancel()
            if not service._ready:
                return
            service._drain()

    def send(self, msg_type: m.MsgType, body: Any, request_id: int = 0) -> None:
        self.feed(frame(msg_type, body, request_id))

    def written(self) -> bytes:
        """Everything the node wrote to this peer since the last call."""
        out = self.transport.value()
        self.transport.clear()
        return out

    def disconnect(self) -> None:
        if self.conn.state != "closed":
            self.conn.connectionLost(Failure(ConnectionDone()))

    @property
    def connected(self) -> bool:
        return self.conn.state == "ready" and not self.transport.disconnecting


def frame(msg_type: m.MsgType, body: Any, request_id: int = 0) -> bytes:
    return encode_frame(m.encode_message(msg_type, body, request_id))


def attach_peer(node: Any, key: crypto.PrivateKey, ip: str = "127.0.0.1", port: int = 40_000,
                inbound: bool = True) -> FedPeer:
    """An admitted, ready peer of ``node`` with ``key``'s identity (ValueError if the node refuses it)."""
    service = node.p2p
    transport = StringTransport(peerAddress=IPv4Address("TCP", ip, port))
    conn = PeerConnection(service, service.reactor, inbound)
    conn.makeConnection(transport)
    conn.pubkey = key.public_key
    conn.peer_id = crypto.peer_id_of(key.public_key)
    conn.address = crypto.address_of(key.public_key)
    conn.state = "hello"
    reason = service.admit(conn)
    if reason != Reason.OK:
        raise ValueError(f"node refused the peer: {reason.name.lower()}")
    fed = FedPeer(node, conn, transport)
    fed.send(m.MsgType.HELLO, service.hello_body() | {"listen_addrs": [], "agent": "fed-peer"})
    if conn.state != "ready":
        raise ValueError("node did not accept the hello")
    fed.written()
    return fed
