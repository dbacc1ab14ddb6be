"""A fault-injecting TCP proxy on Twisted: one listening port per link, faults settable at run time.

Each accepted connection dials the real target and pipes bytes both ways. Faults apply to every
connection of the proxy (one proxy = one directed link of a testnet):

* ``delay(s)``: each chunk is delivered ``s`` seconds after it arrived, never before an earlier chunk of
  the same direction (TCP keeps order, so must we);
* ``stall()``: bytes are held until :meth:`FaultProxy.heal` (a link that went silent without closing);
* ``reset()``: every connection is aborted on both sides now (an RST);
* ``partition()``: existing connections are reset and new ones closed at once, until ``heal()``;
* ``heal()``: no delay, no stall, no partition; held bytes are delivered in order.

Backpressure: held bytes are bounded. When one direction holds more than ``pause_bytes`` its reading
side is paused (``pauseProducing``), and the proxy registers itself as the producer of the writing side,
so a slow reader pauses the sender too. Should a direction still exceed ``max_bytes`` the connection is
reset rather than let memory grow without bound. Time comes from the injected reactor only (``callLater``),
so tests may drive it with a real reactor on loopback or a ``twisted.internet.testing`` clock.
"""
from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

PAUSE_BYTES = 256 * 1024          # held bytes per direction at which the sender is paused
MAX_BYTES = 4 * 1024 * 1024       # held bytes per direction at which the connection is reset instead


@implementer(IPushProducer)
class _Direction:
    """Bytes from one side to the other: a FIFO of (due time, chunk), paused sources, delivery timer."""

    def __init__(self, proxy: FaultProxy, pipe: _Pipe, label: str) -> None:
        self.proxy = proxy
        self.pipe = pipe
        self.label = label
        self.source: Any = None           # ITransport we read from
        self.dest: Any = None             # ITransport we write to
        self.queue: deque[tuple[float, bytes]] = deque()
        self.held = 0
        self.timer: Any = None               # IDelayedCall
        self.dest_full = False            # the destination transport asked us to pause
        self.source_paused = False
        self.closing = False              # the source closed: close the destination once drained

    # -- data in --------------------------------------------------------------------------------
    def received(self, data: bytes) -> None:
        now = self.proxy.reactor.seconds()
        due = now + self.proxy.delay
        if self.queue and self.queue[-1][0] > due:
            due = self.queue[-1][0]       # never overtake an earlier chunk
        self.queue.append((due, data))
        self.held += len(data)
        if self.held > self.proxy.max_bytes:
            self.proxy.note(f"{self.label}: {self.held} bytes held > {self.proxy.max_bytes}: reset")
            self.pipe.abort()
            return
        self.pump()
        self._update_source()

    # -- data out -------------------------------------------------------------------------------
    def pump(self) -> None:
        """Deliver every chunk that is due (unless stalled); schedule the next one."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.dest is None or self.pipe.aborted:
            return
        if not self.proxy.stalled:
            now = self.proxy.reactor.seconds()
            while self.queue and self.queue[0][0] <= now:
                _, data = self.queue.popleft()
                self.held -= len(data)
                self.dest.write(data)
            if self.queue:
                self.timer = self.proxy.reactor.callLater(max(0.0, self.queue[0][0] - now), self.pump)
            elif self.closing:
                self.dest.loseConnection()
        self._update_source()

    def _update_source(self) -> None:
        want_paused = self.dest_full or self.held > self.proxy.pause_bytes
        if self.source is None or want_paused == self.source_paused:
            return
        self.source_paused = want_paused
        if want_paused:
            self.source.pauseProducing()
        else:
            self.source.resumeProducing()

    # -- IPushProducer for the destination transport -------------------------------------------
    def pauseProducing(self) -> None:
        self.dest_full = True
        self._update_source()

    def resumeProducing(self) -> None:
        self.dest_full = False
        self._update_source()

    def stopProducing(self) -> None:
        self.dest_full = True

    def source_closed(self) -> None:
        self.closing = True
        self.pump()

    def drop(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.queue.clear()
        self.held = 0


class _Pipe:
    """One proxied connection: the accepted side, the dialed side and a :class:`_Direction` each way."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.up = _Direction(proxy, self, f"{proxy.name} ->")     # client -> target
        self.down = _Direction(proxy, self, f"{proxy.name} <-")   # target -> client
        self.client: Any = None
        self.target: Any = None
        self.aborted = False
        self.lost = 0

    def side_lost(self) -> None:
        """Forget the pipe once both sides are closed."""
        self.lost += 1
        if self.lost >= 2:
            self.proxy.pipes.discard(self)

    def connected(self) -> None:
        """Both sides are up: wire the directions and deliver what the client already sent."""
        self.up.source, self.up.dest = self.client, self.target
        self.down.source, self.down.dest = self.target, self.client
        self.target.registerProducer(self.up, True)
        self.client.registerProducer(self.down, True)
        self.client.resumeProducing()
        self.up.pump()

    def abort(self) -> None:
        """Reset both sides now (an RST each way); drop whatever was held."""
        if self.aborted:
            return
        self.aborted = True
        self.up.drop()
        self.down.drop()
        for transport in (self.client, self.target):
            if transport is not None:
                transport.abortConnection()
        self.proxy.pipes.discard(self)


class _ClientSide(Protocol):
    """The connection a node opened to the proxy."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def connectionMade(self) -> None:
        proxy = self.pipe.proxy
        transport: Any = self.transport
        self.pipe.client = transport
        if proxy.partitioned:
            proxy.refused += 1
            transport.abortConnection()
            return
        proxy.pipes.add(self.pipe)
        transport.pauseProducing()        # until the target answers
        proxy.reactor.connectTCP(proxy.target_host, proxy.target_port, _TargetFactory(self.pipe),
                                 timeout=proxy.connect_timeout)

    def dataReceived(self, data: bytes) -> None:
        if not self.pipe.aborted:
            self.pipe.up.received(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        pipe = self.pipe
        if pipe.target is None:           # gone before the target answered: the dial is dropped on arrival
            pipe.aborted = True
            pipe.proxy.pipes.discard(pipe)
            return
        if not pipe.aborted:
            pipe.up.source_closed()
        pipe.side_lost()


class _TargetSide(Protocol):
    """The connection the proxy opened to the real target."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.pipe.target = transport
        if self.pipe.aborted or self.pipe.proxy.partitioned:
            self.pipe.abort()
            transport.abortConnection()
            return
        self.pipe.connected()

    def dataReceived(self, data: bytes) -> None:
        if not self.pipe.aborted:
            self.pipe.down.received(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.pipe.aborted:
            self.pipe.down.source_closed()
        self.pipe.side_lost()


class _TargetFactory(ClientFactory):
    noisy = False

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def buildProtocol(self, addr: Any) -> Protocol:
        return _TargetSide(self.pipe)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        """The target is down (killed, restarting): the client sees its connection reset."""
        self.pipe.abort()


class FaultProxy(Factory):
    """Listens on 127.0.0.1:``port`` and forwards every connection to ``target_host:target_port``."""

    noisy = False

    def __init__(self, reactor: Any, target_host: str, target_port: int, name: str = "",
                 pause_bytes: int = PAUSE_BYTES, max_bytes: int = MAX_BYTES, connect_timeout: float = 5.0) -> None:
        if pause_bytes < 1 or max_bytes < 1:
            raise ValueError("pause_bytes and max_bytes must be positive")
        self.reactor = reactor
        self.target_host = target_host
        self.target_port = target_port
        self.name = name or f"proxy->{target_host}:{target_port}"
        self.pause_bytes = pause_bytes
        self.max_bytes = max_bytes
        self.connect_timeout = connect_timeout
        self.delay = 0.0
        self.stalled = False
        self.partitioned = False
        self.pipes: set[_Pipe] = set()
        self.refused = 0                  # connections closed at once during a partition
        self.notes: list[str] = []        # resets for overflow, newest last (bounded)
        self.port: Any = None             # IListeningPort

    def note(self, text: str) -> None:
        self.notes = [*self.notes[-99:], text]

    def listen(self, port: int = 0, interface: str = "127.0.0.1") -> Any:
        """Start listening (port 0: any free port); the port number is ``listening_port``."""
        self.port = self.reactor.listenTCP(port, self, interface=interface)
        return self.port

    @property
    def listening_port(self) -> int:
        if self.port is None:
            raise RuntimeError(f"{self.name} is not listening")
        return int(self.port.getHost().port)

    def buildProtocol(self, addr: Any) -> Protocol:
        return _ClientSide(_Pipe(self))

    # -- faults ---------------------------------------------------------------------------------
    def set_delay(self, seconds: float) -> None:
        """Add ``seconds`` to every chunk from now on (order per direction is kept)."""
        if not seconds >= 0:
            raise ValueError(f"delay must be >= 0 seconds, not {seconds!r}")
        self.delay = float(seconds)

    def stall(self) -> None:
        """Hold every byte until :meth:`heal` (the senders are paused once ``pause_bytes`` are held)."""
        self.stalled = True

    def reset(self) -> int:
        """Abort every connection on both sides now; the number aborted."""
        pipes = list(self.pipes)
        for pipe in pipes:
            pipe.abort()
        self.pipes.clear()
        return len(pipes)

    def partition(self) -> int:
        """Reset every connection and close new ones at once until :meth:`heal`."""
        self.partitioned = True
        return self.reset()

    def heal(self) -> None:
        """No delay, stall or partition: held bytes go out in order now."""
        self.delay = 0.0
        self.stalled = False
        self.partitioned = False
        for pipe in list(self.pipes):
            for direction in (pipe.up, pipe.down):
                direction.queue = deque((0.0, data) for _, data in direction.queue)
                direction.pump()

    def held_bytes(self) -> int:
        return sum(p.up.held + p.down.held for p in self.pipes)

    def stop(self) -> Any:
        """Stop listening and reset every connection (a Deferred from stopListening, or None)."""
        self.reset()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return port.stopListening()
