"""Simulated time for whole nodes: one event heap for the world, and a reactor view per node.

:class:`Scheduler` holds every pending event of every node in one priority queue ordered by (world time,
sequence number), like ``task.Clock`` but shared, so N service trees run in one thread and nothing ever
sleeps or reads the wall clock. :class:`NodeReactor` is what one node's services see as "the reactor":
``callLater``/``seconds`` (``IReactorTime``, shifted by the node's clock skew), ``listenTCP``/``connectTCP``
(``IReactorTCP``, over :mod:`timecoin.sim.cluster.network`), ``secure_channel`` (the peer identity carried
beside the stream, :mod:`timecoin.sim.cluster.channel`) and ``random_stream`` (seeded randomness).

Each node incarnation (a start, or a restart after a crash) gets a fresh view. A crash kills the view:
its events are dropped, as a dead process's timers and buffers are. A paused view (SIGSTOP) keeps its
events aside and runs them, in order, when resumed.
"""
from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from zope.interface import implementer

if TYPE_CHECKING:
    from timecoin.p2p.identity import HostIdentity
    from timecoin.sim.cluster.channel import SimChannel
    from timecoin.sim.cluster.network import SimNetwork

ErrorSink = Callable[[str, BaseException], None]


class Scheduler:
    """World time and the one queue of events; ``run_until`` pops them in (time, sequence) order."""

    def __init__(self, start: float, on_error: ErrorSink | None = None) -> None:
        self.now = start
        self._heap: list[tuple[float, int, NodeReactor | None, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = 0
        self.events_run = 0
        self.on_error = on_error

    def at(self, when: float, owner: NodeReactor | None, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` at world time ``when`` (never before now) on behalf of ``owner`` (None: the world)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.now), self._seq, owner, fn, args))

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def step(self) -> bool:
        """Run the earliest event; False when none is left."""
        if not self._heap:
            return False
        when, _, owner, fn, args = heapq.heappop(self._heap)
        self.now = when
        if owner is not None:
            if owner.dead:
                return True
            if owner.paused:
                owner.held.append((fn, args))
                return True
        self.events_run += 1
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a failing callback is a finding, never the world's end
            self.report(owner.name if owner is not None else "world", exc)
        return True

    def run_until(self, until: float, stop: Callable[[], bool] | None = None, max_events: int | None = None) -> None:
        """Run events up to world time ``until`` (then set now to it), or until ``stop()`` or ``max_events``."""
        count = 0
        while self._heap and self._heap[0][0] <= until:
            self.step()
            count += 1
            if (stop is not None and stop()) or (max_events is not None and count >= max_events):
                return
        self.now = max(self.now, until)

    def report(self, where: str, exc: BaseException) -> None:
        if self.on_error is None:
            raise exc
        self.on_error(where, exc)


@implementer(IReactorTime, IReactorTCP)
class NodeReactor:
    """One node incarnation's reactor: its clock (world time + skew), its sockets, its random streams."""

    def __init__(self, scheduler: Scheduler, network: SimNetwork, name: str, ip: str, seed: str,
                 skew: float = 0.0) -> None:
        self.scheduler = scheduler
        self.network = network
        self.name = name
        self.ip = ip
        self.seed = seed
        self.skew = skew
        self.dead = False
        self.paused = False
        self.held: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.running = True
        self._calls: set[DelayedCall] = set()
        self.triggers: list[tuple[str, str, Callable[..., Any]]] = []

    # -- IReactorTime ------------------------------------------------------------------------------
    def seconds(self) -> float:
        return self.scheduler.now + self.skew

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> DelayedCall:  # noqa: N802,A002
        dc = DelayedCall(self.seconds() + max(delay, 0.0), callable, args, kw, self._calls.discard, self._reset,
                         self.seconds)
        self._calls.add(dc)
        self._schedule(dc)
        return dc

    def getDelayedCalls(self) -> list[DelayedCall]:  # noqa: N802 - Twisted API
        return [dc for dc in self._calls if not dc.cancelled and not dc.called]

    def _schedule(self, dc: DelayedCall) -> None:
        self.scheduler.at(dc.time - self.skew, self, self._fire, dc, dc.time)

    def _reset(self, dc: DelayedCall) -> None:
        self._schedule(dc)            # the entry at the old time is now stale (its time no longer matches)

    def _fire(self, dc: DelayedCall, scheduled: float) -> None:
        if dc.cancelled or dc.called or dc.time != scheduled:
            return
        if dc.delayed_time:
            dc.activate_delay()
            self._schedule(dc)
            return
        dc.called = 1
        self._calls.discard(dc)
        dc.func(*dc.args, **dc.kw)

    def call_now(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on this node as soon as the world gets to it (an event of this node)."""
        self.scheduler.at(self.scheduler.now, self, fn, *args)

    # -- the bits of IReactorCore services touch ---------------------------------------------------
    def callWhenRunning(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:  # noqa: N802
        self.callLater(0, fn, *args, **kw)

    def addSystemEventTrigger(self, phase: str, event: str, fn: Callable[..., Any], *a: Any, **kw: Any) -> int:  # noqa: N802
        self.triggers.append((phase, event, fn))
        return len(self.triggers)

    def stop(self) -> None:
        """What ``reactor.stop`` means for one simulated process: the world stops running it (RPC ``stop``)."""
        self.running = False

    # -- IReactorTCP -------------------------------------------------------------------------------
    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:  # noqa: N802
        return self.network.listen(self, port, factory, interface)

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,  # noqa: N802
                   bindAddress: Any = None) -> Any:  # noqa: N803
        return self.network.connect(self, host, port, factory, timeout)

    # -- what the simulator adds (timecoin.p2p.channel looks for these) ------------------------------
    def secure_channel(self, identity: HostIdentity) -> SimChannel:
        from timecoin.sim.cluster.channel import SimChannel
        return SimChannel(identity, self)

    def random_stream(self, purpose: str) -> random.Random:
        return random.Random(f"{self.seed}/{purpose}")

    # -- faults --------------------------------------------------------------------------------------
    def kill(self) -> None:
        """The process is gone: no timer of it runs again, its sockets are reset (the network tells peers)."""
        self.dead = True
        self.running = False
        self.held.clear()
        self._calls.clear()
        self.network.node_died(self)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        """SIGCONT: everything that came due while stopped runs now, in the order it came due."""
        self.paused = False
        held, self.held = self.held, []
        for fn, args in held:
            self.scheduler.at(self.scheduler.now, self, fn, *args)
