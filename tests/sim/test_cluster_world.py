"""The simulated world itself: time, links, partitions, the identity beside the stream, node faults, replay.

Each rule of the world has a test that fails when the rule is broken: a link that reorders, a partition
that leaks, a stall that loses bytes, a dial that accepts the wrong key, a crash that keeps timers alive,
a paused node that still runs, a run that is not a function of its seed.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import endpoints
from twisted.internet.protocol import Factory, Protocol

from timecoin.sim.cluster.cluster import Cluster
from timecoin.sim.cluster.network import LinkModel, SimNetwork
from timecoin.sim.cluster.reactor import NodeReactor, Scheduler


# -- a bare world: two reactors on one network, a recording protocol ------------------------------------
class Recorder(Protocol):
    def __init__(self, log: list[Any], clock: NodeReactor) -> None:
        self.log = log
        self.clock = clock

    def connectionMade(self) -> None:  # noqa: N802
        self.log.append(("made", round(self.clock.seconds(), 6)))

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.log.append(("data", data, round(self.clock.seconds(), 6)))

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.log.append(("lost", type(reason.value).__name__))


class World:
    def __init__(self, link: LinkModel | None = None) -> None:
        self.sched = Scheduler(1000.0)
        self.net = SimNetwork(self.sched, random.Random(1), link or LinkModel(latency=0.01, jitter=0.0))
        self.a = NodeReactor(self.sched, self.net, "a", "10.0.0.1", "a")
        self.b = NodeReactor(self.sched, self.net, "b", "10.0.0.2", "b")
        self.server_log: list[Any] = []
        self.client_log: list[Any] = []
        self.servers: list[Recorder] = []

    def listen(self) -> None:
        world = self

        class F(Factory):
            def buildProtocol(self, addr: Any) -> Recorder:  # noqa: N802
                p = Recorder(world.server_log, world.b)
                world.servers.append(p)
                return p

        self.b.listenTCP(7000, F(), interface="10.0.0.2")

    def dial(self) -> Any:
        ep = endpoints.TCP4ClientEndpoint(self.a, "10.0.0.2", 7000, timeout=2)
        got: list[Any] = []
        d = ep.connect(Factory.forProtocol(lambda: Recorder(self.client_log, self.a)))
        d.addBoth(got.append)
        self.sched.run_until(self.sched.now + 0.1)
        return got[0]


def test_callLater_runs_in_time_order_with_the_nodes_skew() -> None:
    sched = Scheduler(100.0)
    net = SimNetwork(sched, random.Random(1))
    early = NodeReactor(sched, net, "early", "10.0.0.1", "s", skew=0.5)
    plain = NodeReactor(sched, net, "plain", "10.0.0.2", "s")
    seen: list[tuple[str, float]] = []
    plain.callLater(0.2, lambda: seen.append(("plain", plain.seconds())))
    early.callLater(0.1, lambda: seen.append(("early", early.seconds())))
    dc = plain.callLater(0.05, lambda: seen.append(("cancelled", 0.0)))
    dc.cancel()
    later = plain.callLater(0.01, lambda: seen.append(("reset", plain.seconds())))
    later.reset(0.3)
    sched.run_until(101.0)
    assert seen == [("early", 100.6), ("plain", 100.2), ("reset", 100.3)]


def test_bytes_arrive_in_order_after_latency_and_serialization() -> None:
    w = World(LinkModel(latency=0.01, jitter=0.0, bandwidth=1000.0))
    w.listen()
    client = w.dial()
    sent_at = w.sched.now
    client.transport.write(b"x" * 100)       # 0.1 s to serialize at 1000 B/s
    client.transport.write(b"y")
    w.sched.run_until(w.sched.now + 1.0)
    data = [e for e in w.server_log if e[0] == "data"]
    assert [e[1] for e in data] == [b"x" * 100, b"y"]
    assert data[0][2] == pytest.approx(sent_at + 0.1 + 0.01, abs=1e-6)
    assert data[1][2] >= data[0][2]


def test_jitter_never_reorders_a_connection() -> None:
    w = World(LinkModel(latency=0.01, jitter=0.05))
    w.listen()
    client = w.dial()
    for i in range(200):
        client.transport.write(b"%03d" % i)
    w.sched.run_until(w.sched.now + 2.0)
    got = b"".join(e[1] for e in w.server_log if e[0] == "data")
    assert got == b"".join(b"%03d" % i for i in range(200))


def test_no_listener_is_refused_and_a_cut_link_times_out() -> None:
    w = World()
    assert "ConnectionRefusedError" in repr(w.dial())
    w.listen()
    w.net.partition({"10.0.0.1"}, {"10.0.0.2"})
    ep = endpoints.TCP4ClientEndpoint(w.a, "10.0.0.2", 7000, timeout=2)
    got: list[Any] = []
    ep.connect(Factory.forProtocol(Protocol)).addBoth(got.append)
    w.sched.run_until(w.sched.now + 1.9)
    assert got == []
    w.sched.run_until(w.sched.now + 0.2)
    assert "TimeoutError" in repr(got[0])


def test_a_stalled_connection_delivers_everything_at_the_heal() -> None:
    w = World()
    w.listen()
    client = w.dial()
    w.net.partition({"10.0.0.1"}, {"10.0.0.2"}, reset_share=0.0)     # stall every connection across
    client.transport.write(b"during")
    w.sched.run_until(w.sched.now + 5.0)
    assert not [e for e in w.server_log if e[0] == "data"]
    w.net.heal()
    client.transport.write(b"after")
    w.sched.run_until(w.sched.now + 1.0)
    assert b"".join(e[1] for e in w.server_log if e[0] == "data") == b"duringafter"


def test_a_reset_connection_is_lost_at_both_ends() -> None:
    w = World()
    w.listen()
    w.dial()
    w.net.partition({"10.0.0.1"}, {"10.0.0.2"}, reset_share=1.0)
    w.sched.run_until(w.sched.now + 0.1)
    assert ("lost", "ConnectionLost") in w.server_log and ("lost", "ConnectionLost") in w.client_log


def test_lose_connection_delivers_pending_bytes_before_the_close() -> None:
    w = World()
    w.listen()
    client = w.dial()
    client.transport.write(b"last words")
    client.transport.loseConnection()
    w.sched.run_until(w.sched.now + 1.0)
    kinds = [e[0] for e in w.server_log]
    assert kinds == ["made", "data", "lost"] and w.server_log[1][1] == b"last words"


def test_a_killed_node_runs_no_timer_and_its_peers_see_a_reset() -> None:
    w = World()
    w.listen()
    w.dial()
    fired: list[int] = []
    w.b.callLater(0.5, fired.append, 1)
    w.b.kill()
    w.sched.run_until(w.sched.now + 1.0)
    assert fired == []
    assert ("lost", "ConnectionLost") in w.client_log


def test_a_paused_node_runs_nothing_until_resumed_then_everything_in_order() -> None:
    w = World()
    w.listen()
    client = w.dial()
    fired: list[float] = []
    w.b.callLater(0.1, lambda: fired.append(w.b.seconds()))
    w.b.pause()
    client.transport.write(b"while stopped")
    w.sched.run_until(w.sched.now + 2.0)
    assert fired == [] and not [e for e in w.server_log if e[0] == "data"]
    w.b.resume()
    w.sched.run_until(w.sched.now + 0.01)
    assert len(fired) == 1 and [e[1] for e in w.server_log if e[0] == "data"] == [b"while stopped"]


# -- whole nodes ---------------------------------------------------------------------------------------
@pytest.fixture
def cluster() -> Iterator[Cluster]:
    errors: list[tuple[str, BaseException]] = []
    c = Cluster(4, seed=5, on_error=lambda where, exc: errors.append((where, exc)))
    try:
        yield c
    finally:
        c.close()
    assert errors == []


def test_four_whole_nodes_connect_over_the_identity_channel_and_finalize(cluster: Cluster) -> None:
    cluster.start_all()
    cluster.run_for(2.0)
    hs = cluster.heights()
    assert min(hs) > 10, hs
    for sn in cluster.nodes:
        assert sn.node is not None
        assert sorted(sn.node.p2p.connections) == sorted(o.peer_id for o in cluster.nodes if o is not sn)
    top = min(hs)
    hashes = {sn.node.store.block_hash_at(top) for sn in cluster.nodes if sn.node and sn.node.store}
    assert len(hashes) == 1


def test_the_channel_refuses_a_peer_that_is_not_the_dialed_key(cluster: Cluster) -> None:
    """As TLS's verify callback does: dialing b's address for c's PeerID ends before the handshake completes."""
    cluster.start_all()
    cluster.run_for(1.5)
    a, b, c = cluster.nodes[0], cluster.nodes[1], cluster.nodes[2]
    assert a.node is not None and a.reactor is not None

    def dial(expected: str) -> list[str]:
        log: list[str] = []

        class Probe(Protocol):
            def handshakeCompleted(self) -> None:  # noqa: N802
                log.append("handshake")

            def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
                log.append("lost")

        assert a.reactor is not None and a.node is not None
        channel = a.reactor.secure_channel(a.node.p2p.identity)
        tcp = endpoints.TCP4ClientEndpoint(a.reactor, b.ip, 26_656, timeout=2)
        channel.client_endpoint(tcp, expected).connect(Factory.forProtocol(Probe))
        cluster.run_for(0.3)
        return log

    assert dial(c.peer_id) == ["lost"]
    assert dial(b.peer_id)[:1] == ["handshake"]      # the control: the right key gets through


def test_a_crashed_node_restarts_on_its_own_store_and_catches_up(cluster: Cluster) -> None:
    cluster.start_all()
    cluster.run_for(2.0)
    victim = cluster.nodes[2]
    at_crash = victim.height()
    cluster.crash(victim)
    assert victim.state == "crashed" and victim.height() == -1
    cluster.run_for(2.0)
    cluster.start(victim)
    assert victim.height() >= at_crash              # LMDB kept what it had committed
    cluster.run_for(4.0)
    hs = cluster.heights()
    assert hs[2] >= max(hs) - 2 > at_crash, hs


def test_the_same_seed_replays_the_same_run_and_another_seed_does_not() -> None:
    def run(seed: int) -> tuple[list[int], int, bytes | None]:
        c = Cluster(4, seed=seed, link=LinkModel(latency=0.004, jitter=0.006))
        try:
            c.start_all()
            c.run_for(2.0)
            c.crash(c.nodes[1])
            c.run_for(0.7)
            c.start(c.nodes[1])
            c.run_for(1.3)
            top = min(c.heights())
            node = c.nodes[0].node
            assert node is not None and node.store is not None
            return c.heights(), c.network.stats.bytes, node.store.block_hash_at(top)
        finally:
            c.close()

    first, again, other = run(11), run(11), run(12)
    assert first == again
    assert other != first
