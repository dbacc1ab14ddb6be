"""The simulated network between node reactors: TCP-like connections over links with latency, jitter,
bandwidth and partitions, every draw from the world's seeded stream.

A connection is two :class:`SimTransport` ends. Bytes written at one end reach the other in order (a
FIFO per direction: the arrival time is never before the previous chunk's), after the link's
serialization time (``len / bandwidth``), latency and a jitter draw. ``connectTCP`` reaches the
listener after one latency (the server's ``buildProtocol``; None closes the socket, as a refused accept
does) and the client learns it after a round trip; no listener means ``ConnectionRefusedError``, a cut
link means ``TimeoutError`` after the dial's timeout.

A partition cuts the links between two sides. Each connection across it either *stalls* (its bytes wait
and arrive in order at the heal, as TCP retransmits them) or is *reset* (both ends see the connection
lost), a draw per connection. A killed node's connections are reset at the peers one latency later (its
kernel closes the sockets); a paused node's bytes wait in its buffers (its reactor view holds them).
"""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IConnector, IListeningPort, ITCPTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from timecoin.sim.cluster.reactor import NodeReactor, Scheduler

EPHEMERAL_START = 40_000


@dataclass(frozen=True)
class LinkModel:
    """One link's physics: one-way ``latency`` + uniform ``jitter`` (seconds), ``bandwidth`` (bytes/s)."""

    latency: float = 0.005
    jitter: float = 0.002
    bandwidth: float = 12_500_000.0      # 100 Mbit/s

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0 or self.bandwidth <= 0:
            raise ValueError("latency and jitter must be >= 0 and bandwidth > 0")


@dataclass
class _Direction:
    busy_until: float = 0.0      # when the sender's side of the link finishes serializing what it has
    last_arrival: float = 0.0    # the latest arrival scheduled (TCP keeps order)
    stalled: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class Stats:
    """What crossed the network: bytes and chunks, dials, resets."""

    bytes: int = 0
    chunks: int = 0
    dials: int = 0
    refused: int = 0
    timeouts: int = 0
    resets: int = 0
    by_node: Counter[str] = field(default_factory=Counter)


class SimNetwork:
    """Addresses, listeners, links and connections of the simulated world."""

    def __init__(self, scheduler: Scheduler, rng: random.Random, default: LinkModel | None = None) -> None:
        self.scheduler = scheduler
        self.rng = rng
        self.default = default or LinkModel()
        self.models: dict[frozenset[str], LinkModel] = {}
        self.listeners: dict[tuple[str, int], SimPort] = {}
        self.connections: list[SimConnection] = []
        self.cut: set[frozenset[str]] = set()
        self.stats = Stats()
        self._next_port: Counter[str] = Counter()
        self.on_chunk: Callable[[str, str, int], None] | None = None     # (from ip, to ip, bytes): the trace

    # -- links ---------------------------------------------------------------------------------------
    def model(self, a: str, b: str) -> LinkModel:
        return self.models.get(frozenset((a, b)), self.default)

    def set_model(self, a: str, b: str, model: LinkModel) -> None:
        self.models[frozenset((a, b))] = model

    def is_cut(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self.cut

    def delay(self, a: str, b: str) -> float:
        m = self.model(a, b)
        return m.latency + m.jitter * self.rng.random()

    def partition(self, side: set[str], others: set[str], reset_share: float = 0.5) -> None:
        """Cut every link between ``side`` and ``others``; each connection across stalls or is reset."""
        for a in side:
            for b in others:
                if a != b:
                    self.cut.add(frozenset((a, b)))
        for conn in list(self.connections):
            ips = {conn.a.host_ip, conn.b.host_ip}
            if len(ips) == 2 and self.is_cut(*ips) and self.rng.random() < reset_share:
                conn.reset_both()

    def heal(self) -> None:
        """Every cut link works again; stalled bytes go out in order, as retransmissions."""
        self.cut.clear()
        for conn in list(self.connections):
            conn.unstall()

    # -- listening and dialing -----------------------------------------------------------------------
    def listen(self, reactor: NodeReactor, port: int, factory: Any, interface: str) -> SimPort:
        ip = reactor.ip
        if port == 0:
            port = self._ephemeral(ip)
        if (ip, port) in self.listeners:
            raise error.CannotListenError(interface, port, OSError(98, "Address already in use"))
        listener = SimPort(self, reactor, ip, port, factory)
        self.listeners[(ip, port)] = listener
        factory.doStart()
        return listener

    def _ephemeral(self, ip: str) -> int:
        self._next_port[ip] += 1
        return EPHEMERAL_START + self._next_port[ip]

    def connect(self, reactor: NodeReactor, host: str, port: int, factory: Any, timeout: float) -> SimConnector:
        connector = SimConnector(self, reactor, host, port, factory, timeout)
        factory.doStart()
        factory.startedConnecting(connector)
        self.stats.dials += 1
        src = reactor.ip
        if self.is_cut(src, host):
            self.stats.timeouts += 1
            reactor.callLater(timeout, connector.failed, error.TimeoutError(string=f"{host}:{port}"))
            return connector
        self.scheduler.at(self.scheduler.now + self.delay(src, host), None, self._syn_arrives, connector)
        return connector

    def _syn_arrives(self, connector: SimConnector) -> None:
        src, dst = connector.reactor.ip, connector.host
        back = self.delay(src, dst)
        if connector.reactor.dead or connector.cancelled:
            return
        listener = self.listeners.get((dst, connector.port))
        if listener is None or listener.reactor.dead:
            self.stats.refused += 1
            self.scheduler.at(self.scheduler.now + back, connector.reactor, connector.failed,
                              error.ConnectionRefusedError(string=f"{dst}:{connector.port}"))
            return
        client_port = self._ephemeral(src)
        conn = SimConnection(self, IPv4Address("TCP", src, client_port), IPv4Address("TCP", dst, connector.port),
                             connector.reactor, listener.reactor)
        if listener.reactor.paused:
            # The kernel of a stopped process still accepts; the process picks the socket up when resumed.
            listener.reactor.held.append((self._accept, (listener, conn, connector, back)))
            return
        self._accept(listener, conn, connector, back)

    def _accept(self, listener: SimPort, conn: SimConnection, connector: SimConnector, back: float) -> None:
        if listener.stopped or listener.reactor.dead:
            self.scheduler.at(self.scheduler.now + back, connector.reactor, connector.failed,
                              error.ConnectionRefusedError(string="listener gone"))
            return
        proto = listener.factory.buildProtocol(conn.a.address)
        self.connections.append(conn)
        if proto is None:
            # Refused at accept (e.g. a banned address): the socket is closed before a byte is read.
            conn.b.closed = True
            self.scheduler.at(self.scheduler.now + back, connector.reactor, self._client_up, conn, connector, True)
            return
        conn.b.attach(proto)
        self.scheduler.at(self.scheduler.now + back, connector.reactor, self._client_up, conn, connector, False)

    def _client_up(self, conn: SimConnection, connector: SimConnector, refused: bool) -> None:
        if connector.cancelled:
            conn.reset_both()
            return
        proto = connector.factory.buildProtocol(conn.b.address)
        if proto is None:
            conn.a.closed = True
            conn.b.lose_now(Failure(error.ConnectionDone()))
            return
        connector.transport = conn.a
        conn.a.attach(proto)
        if refused:
            conn.a.lose_now(Failure(error.ConnectionDone("closed by peer")))
            self._forget(conn)

    # -- failures ------------------------------------------------------------------------------------
    def node_died(self, reactor: NodeReactor) -> None:
        for key, listener in list(self.listeners.items()):
            if listener.reactor is reactor:
                del self.listeners[key]
        for conn in list(self.connections):
            for mine, theirs in ((conn.a, conn.b), (conn.b, conn.a)):
                if mine.reactor is reactor:
                    mine.closed = True
                    theirs.reset(self.delay(mine.host_ip, theirs.host_ip))

    def _forget(self, conn: SimConnection) -> None:
        if conn.a.closed and conn.b.closed and conn in self.connections:
            self.connections.remove(conn)


class SimConnection:
    """Both ends of one simulated TCP connection (``a`` dialed, ``b`` accepted)."""

    def __init__(self, net: SimNetwork, client: IPv4Address, server: IPv4Address, client_reactor: NodeReactor,
                 server_reactor: NodeReactor) -> None:
        self.net = net
        self.a = SimTransport(self, client_reactor, client, server)
        self.b = SimTransport(self, server_reactor, server, client)
        self.a.other, self.b.other = self.b, self.a
        self.dirs = {id(self.a): _Direction(), id(self.b): _Direction()}

    def send(self, src: SimTransport, kind: str, item: Any, size: int) -> None:
        dst = src.other
        d = self.dirs[id(src)]
        if self.net.is_cut(src.host_ip, dst.host_ip):
            d.stalled.append((kind, item))
            return
        self._schedule(src, dst, d, kind, item, size)

    def _schedule(self, src: SimTransport, dst: SimTransport, d: _Direction, kind: str, item: Any, size: int) -> None:
        net, now = self.net, self.net.scheduler.now
        model = net.model(src.host_ip, dst.host_ip)
        d.busy_until = max(d.busy_until, now) + size / model.bandwidth
        arrival = max(d.busy_until + net.delay(src.host_ip, dst.host_ip), d.last_arrival)
        d.last_arrival = arrival
        if size:
            net.stats.bytes += size
            net.stats.chunks += 1
            net.stats.by_node[src.reactor.name] += size
            if net.on_chunk is not None:
                net.on_chunk(src.host_ip, dst.host_ip, size)
        net.scheduler.at(arrival, dst.reactor, dst.arrive, kind, item)

    def unstall(self) -> None:
        for src in (self.a, self.b):
            d = self.dirs[id(src)]
            stalled, d.stalled = d.stalled, []
            for kind, item in stalled:
                size = len(item) if kind == "data" else 0
                self._schedule(src, src.other, d, kind, item, size)

    def reset_both(self) -> None:
        self.net.stats.resets += 1
        for end in (self.a, self.b):
            end.reset(0.0)


@implementer(ITCPTransport)
class SimTransport:
    """One end of a simulated connection, as the protocol above sees its TCP transport."""

    def __init__(self, conn: SimConnection, reactor: NodeReactor, host: IPv4Address, peer: IPv4Address) -> None:
        self.conn = conn
        self.reactor = reactor
        self.address = host
        self.peer_address = peer
        self.host_ip = host.host
        self.other: SimTransport = self
        self.protocol: Any = None
        self.closed = False            # connectionLost was (or will never be) delivered
        self.disconnecting = False
        self.connected = False
        self.reading_paused = False
        self._inbox: list[tuple[str, Any]] = []
        self.producer: Any = None
        self.extra: dict[str, Any] = {}
        self.beside_sink: Callable[[Any], None] | None = None   # who reads what comes beside the bytes

    def attach(self, proto: Any) -> None:
        self.protocol = proto
        self.connected = True
        proto.makeConnection(self)
        self._flush()

    # -- the sending side ----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closed or self.disconnecting or not data:
            return
        self.conn.send(self, "data", bytes(data), len(data))

    def writeSequence(self, seq: Any) -> None:  # noqa: N802
        self.write(b"".join(seq))

    def send_beside(self, item: Any) -> None:
        """Carry ``item`` to the other end in order with the bytes, without counting it as bytes."""
        if not self.closed:
            self.conn.send(self, "beside", item, 0)

    def loseConnection(self) -> None:  # noqa: N802
        """FIN after what was written: the other end loses the connection once everything arrived."""
        if self.closed or self.disconnecting:
            return
        self.disconnecting = True
        self.conn.send(self, "fin", None, 0)
        self.reactor.call_now(self.lose_now, Failure(error.ConnectionDone()))

    def abortConnection(self) -> None:  # noqa: N802
        """RST: this end is gone now, the other learns one latency later and loses what is in flight."""
        if self.closed:
            return
        self.conn.net.stats.resets += 1
        self.closed = True
        self.other.reset(self.conn.net.delay(self.host_ip, self.other.host_ip))
        self.reactor.call_now(self._lost, Failure(error.ConnectionAborted()))

    # -- the receiving side --------------------------------------------------------------------------
    def arrive(self, kind: str, item: Any) -> None:
        if self.closed:
            return
        self._inbox.append((kind, item))
        self._flush()

    def _flush(self) -> None:
        while self._inbox and self.protocol is not None and not self.reading_paused and not self.closed:
            kind, item = self._inbox.pop(0)
            if kind == "data":
                self.protocol.dataReceived(item)
            elif kind == "beside":
                if self.beside_sink is not None:
                    self.beside_sink(item)
            else:   # fin
                self.lose_now(Failure(error.ConnectionDone()))

    def lose_now(self, reason: Failure) -> None:
        """This end's connection is over (EOF read, closed by us, or reset): connectionLost, once."""
        if self.closed:
            return
        self.closed = True
        self._lost(reason)

    def _lost(self, reason: Failure) -> None:
        self.connected = False
        self._inbox.clear()
        proto, self.protocol = self.protocol, None
        if proto is not None:
            proto.connectionLost(reason)
        self.conn.net._forget(self.conn)

    def reset(self, after: float) -> None:
        """A reset reaches this end ``after`` seconds from now (nothing in flight is read after it)."""
        if self.closed:
            return
        net = self.conn.net
        net.scheduler.at(net.scheduler.now + after, self.reactor, self.lose_now,
                         Failure(error.ConnectionLost("connection reset")))

    # -- producer and the rest of ITCPTransport --------------------------------------------------------
    def pauseProducing(self) -> None:  # noqa: N802
        self.reading_paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.reading_paused = False
        if self._inbox:
            self.reactor.call_now(self._flush)

    def stopProducing(self) -> None:  # noqa: N802
        self.loseConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        self.producer = producer

    def unregisterProducer(self) -> None:  # noqa: N802
        self.producer = None

    def getPeer(self) -> IPv4Address:  # noqa: N802
        return self.peer_address

    def getHost(self) -> IPv4Address:  # noqa: N802
        return self.address

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802
        self.extra["nodelay"] = enabled

    def getTcpNoDelay(self) -> bool:  # noqa: N802
        return bool(self.extra.get("nodelay", False))

    def setTcpKeepAlive(self, enabled: bool) -> None:  # noqa: N802
        self.extra["keepalive"] = enabled

    def getTcpKeepAlive(self) -> bool:  # noqa: N802
        return bool(self.extra.get("keepalive", False))

    def loseWriteConnection(self) -> None:  # noqa: N802
        self.loseConnection()

    def getHandle(self) -> None:  # noqa: N802
        return None


@implementer(IListeningPort)
class SimPort:
    """A listening socket at (ip, port) of one node."""

    def __init__(self, net: SimNetwork, reactor: NodeReactor, ip: str, port: int, factory: Any) -> None:
        self.net = net
        self.reactor = reactor
        self.address = IPv4Address("TCP", ip, port)
        self.factory = factory
        self.stopped = False

    def startListening(self) -> None:  # noqa: N802
        pass

    def stopListening(self) -> None:  # noqa: N802
        if not self.stopped:
            self.stopped = True
            self.net.listeners.pop((self.address.host, self.address.port), None)
            self.factory.doStop()

    def getHost(self) -> IPv4Address:  # noqa: N802
        return self.address


@implementer(IConnector)
class SimConnector:
    """An outbound dial: fails (refused, timeout) or hands its factory a connected protocol."""

    def __init__(self, net: SimNetwork, reactor: NodeReactor, host: str, port: int, factory: Any,
                 timeout: float) -> None:
        self.net = net
        self.reactor = reactor
        self.host = host
        self.port = port
        self.factory = factory
        self.timeout = timeout
        self.cancelled = False
        self.done = False
        self.transport: SimTransport | None = None

    def failed(self, reason: BaseException) -> None:
        if self.done or self.cancelled:
            return
        self.done = True
        self.factory.clientConnectionFailed(self, Failure(reason))
        self.factory.doStop()

    def stopConnecting(self) -> None:  # noqa: N802
        if not self.done and self.transport is None:
            self.cancelled = True
            self.done = True
            self.factory.clientConnectionFailed(self, Failure(error.UserError()))
            self.factory.doStop()

    def disconnect(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()
        else:
            self.stopConnecting()

    def connect(self) -> None:
        pass

    def getDestination(self) -> IPv4Address:  # noqa: N802
        return IPv4Address("TCP", self.host, self.port)
