"""Run a local testnet through fault-injecting proxies, play a seeded fault plan, then check the chains.

Topology: for every node i and every validator j != i there is one :class:`FaultProxy` ``node{i}->node{j}``
on 127.0.0.1 that forwards to node j's P2P port; node i runs from ``timecoin.chaos.conf`` (written beside
its ``timecoin.conf``, which stays untouched) whose bootstrap list names those proxies instead of the
nodes. The children are the ordinary ``twistd -n timecoin`` processes of :mod:`timecoin.testnet`.

The plan (:mod:`timecoin.chaos.schedule`) is played on the reactor's clock: link faults on the proxies,
SIGKILL/restart and SIGSTOP/SIGCONT on the processes, one printed line per fault. Meanwhile every node's
tip is read over JSON-RPC twice a second (in threads, so a stopped node never blocks the proxies): each
answer is a :class:`Sighting` of a finalized block. At the end everything is healed, the run waits
(bounded) until every node is past every height seen, reads every node's whole chain and hands it to
:func:`timecoin.chaos.check.check_chains`.

A node also learns its peers' own listen addresses from their hellos and may dial those directly after a
proxied dial failed; such connections bypass the proxies. The run counts them at the end and says so.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from twisted.internet import defer, task, threads

from timecoin.chaos.check import Sighting, check_chains, verdict
from timecoin.chaos.proxy import FaultProxy
from timecoin.chaos.schedule import FaultEvent, format_plan, plan
from timecoin.config import build_config
from timecoin.errors import ConfigError
from timecoin.rpc import clicall
from timecoin.testnet import CONFIG_FILE, Child, Layout, NodeInfo, Supervisor, TestnetError, multiaddr, node_command

CHAOS_CONFIG = "timecoin.chaos.conf"
DEFAULT_DURATION = 60.0
SAMPLE_EVERY = 0.5       # seconds between tip readings
RPC_TIMEOUT = 2.0        # seconds per call: a stopped node must not hold a reading for long
SETTLE = 60.0            # at most this many seconds after the last heal for every node to pass every height seen
STARTUP = 30.0           # seconds for every node to answer RPC before the plan starts
MAX_CHECK_HEIGHT = 100_000


class ChaosError(TestnetError):
    """A chaos run that cannot be set up; one line for the operator."""


def parse_seed(text: str | int) -> int:
    try:
        value = int(str(text).replace("_", ""), 10)
    except ValueError:
        raise ChaosError(f"--chaos: {text!r} is not an integer seed") from None
    if value < 0:
        raise ChaosError(f"--chaos: the seed must be >= 0, not {value}")
    return value


def parse_duration(text: str | float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ChaosError(f"--chaos-duration: {text!r} is not a number of seconds") from None
    if not 8.0 <= value <= 86_400.0:
        raise ChaosError(f"--chaos-duration must be between 8 and 86400 seconds, not {text}")
    return value


def rewrite_config(text: str, routes: dict[str, str]) -> str:
    """``text`` with every multiaddr key of ``routes`` replaced by its value; ChaosError if one is absent."""
    for real, proxied in routes.items():
        if real not in text:
            raise ChaosError(f"{real} is not in the config's bootstrap list: was the layout edited by hand?")
        text = text.replace(real, proxied)
    return text


class ChaosRun:
    """One run: proxies, children, the plan, the readings and the final check (see the module doc)."""

    def __init__(self, layout: Layout, seed: int, duration: float, reactor: Any, out: IO[str] | None = None,
                 err: IO[str] | None = None, argv: Callable[[NodeInfo], Sequence[str]] | None = None,
                 settle: float = SETTLE) -> None:
        self.layout = layout
        self.validators = [n for n in layout.nodes if n.role == "validator"]
        self.seed = seed
        self.duration = duration
        self.reactor = reactor
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.argv = argv or (lambda node: [c if c != CONFIG_FILE else CHAOS_CONFIG for c in node_command()])
        self.settle = settle
        try:
            self.events = plan(seed, len(self.validators), duration)
        except ValueError as exc:
            raise ChaosError(str(exc)) from None
        self.proxies: dict[tuple[int, int], FaultProxy] = {}
        self.sup = Supervisor(self.out, self.err)
        self.children: dict[int, Child] = {}
        self.killed: set[int] = set()
        self.stopped: set[int] = set()
        self.sightings: list[Sighting] = []
        self.tips: dict[int, int] = {}
        self.problems: list[str] = []
        self.t0 = 0.0
        self.code: int | None = None

    # -- output -----------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def elapsed(self) -> float:
        return self.reactor.seconds() - self.t0

    # -- setup --------------------------------------------------------------------------------------
    def start_proxies(self) -> None:
        for node in self.layout.nodes:
            for peer in self.validators:
                if peer.index != node.index:
                    proxy = FaultProxy(self.reactor, "127.0.0.1", peer.p2p_port, name=f"{node.name}->{peer.name}")
                    proxy.listen(0, "127.0.0.1")
                    self.proxies[(node.index, peer.index)] = proxy

    def write_configs(self) -> None:
        """``timecoin.chaos.conf`` per node: its bootstrap through the proxies; checked by loading it."""
        for node in self.layout.nodes:
            routes = {multiaddr(peer.p2p_port, peer.peer_id):
                      multiaddr(self.proxies[(node.index, peer.index)].listening_port, peer.peer_id)
                      for peer in self.validators if peer.index != node.index}
            try:
                with open(node.config_file, encoding="utf-8") as f:
                    text = rewrite_config(f.read(), routes)
                path = os.path.join(node.dir, CHAOS_CONFIG)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(f"# Written by `timecoin testnet --chaos {self.seed}`: bootstrap through fault proxies.\n"
                            + text)
            except OSError as exc:
                raise ChaosError(f"cannot write the chaos config of {node.name}: {exc.strerror or exc}") from None
            try:
                loaded = set(build_config(config_file=path).bootstrap)
            except ConfigError as exc:
                raise ChaosError(f"{path}: {exc}") from None
            if loaded != set(routes.values()):
                raise ChaosError(f"{path}: bootstrap is {sorted(loaded)}, "
                                 f"expected the proxies {sorted(routes.values())}")

    # -- processes ----------------------------------------------------------------------------------
    def start_node(self, node: NodeInfo) -> None:
        self.children[node.index] = self.sup.start(node.name, node.dir, self.argv(node))

    def signal_node(self, index: int, sig: int) -> None:
        child = self.children[index]
        if sig == signal.SIGKILL:
            child.reported = True                 # an exit we caused is not a crash
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            self.problems.append(f"node{index} (pid {child.pid}) was already gone when sent {signal.Signals(sig).name}")
        if sig == signal.SIGKILL:
            child.proc.wait(timeout=10)           # SIGKILL: the kernel reaps promptly

    # -- the plan ---------------------------------------------------------------------------------
    @defer.inlineCallbacks
    def apply(self, event: FaultEvent) -> Any:
        """Play one event; print it (with what it touched) once done."""
        node = self.validators[event.node]
        detail = ""
        if event.action in ("delay", "stall", "reset", "partition", "heal"):
            links = [(self.validators[a].index, self.validators[b].index) for a, b in event.links()]
            proxies = [self.proxies[link] for link in links]
            touched = sum(len(proxy.pipes) for proxy in proxies)
            for proxy in proxies:
                if event.action == "delay":
                    proxy.set_delay(event.value)
                elif event.action == "stall":
                    proxy.stall()
                elif event.action == "reset":
                    proxy.reset()
                elif event.action == "partition":
                    proxy.partition()
                else:
                    proxy.heal()
            if event.action != "heal":
                closed = yield threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                                         self.reroute, links)
                detail = f" ({touched} proxied connection(s), {closed} direct one(s) closed)"
        elif event.action == "kill":
            self.signal_node(node.index, signal.SIGKILL)
            self.killed.add(node.index)
        elif event.action == "restart":
            self.killed.discard(node.index)
            self.start_node(node)
            detail = f" (pid {self.children[node.index].pid})"
        elif event.action == "stop":
            self.signal_node(node.index, signal.SIGSTOP)
            self.stopped.add(node.index)
        elif event.action == "cont":
            self.signal_node(node.index, signal.SIGCONT)
            self.stopped.discard(node.index)
        self.say(f"chaos [{self.elapsed():6.2f}s] {event.describe()}{detail}")

    def reroute(self, links: list[tuple[int, int]]) -> int:
        """Put the faulted links back on their proxies; the number of direct connections closed.

        A node moves a peer's own listen address (from its hello) to the front of its dial list, so after
        one reconnection two nodes talk directly and a proxy fault would touch nothing. Through the node's
        RPC: forget the peer and add it back with only its proxy address (``addnode remove``/``add``),
        then close any connection between the two that was dialed directly (``disconnectnode``). The
        redial goes through the faulted proxy.
        """
        by_index = {n.index: n for n in self.layout.nodes}
        running = {n.index for n in self.reachable()}
        closed = 0
        for a, b in links:
            if a not in running:
                continue
            dialer, dialed = by_index[a], by_index[b]
            proxied = multiaddr(self.proxies[(a, b)].listening_port, dialed.peer_id)
            for command in ("remove", "add"):     # an error here (not added / already added) is as wanted
                with contextlib.suppress(clicall.CallError, clicall.RPCCallError):
                    self._call(dialer, "addnode", proxied, command)
            try:
                peers = self._call(dialer, "getpeerinfo")
                for peer in peers:
                    if peer.get("id") == dialed.peer_id and not peer.get("inbound") and \
                            not self._is_proxied(str(peer.get("multiaddr") or "")):
                        self._call(dialer, "disconnectnode", dialed.peer_id)
                        closed += 1
            except (clicall.CallError, clicall.RPCCallError):
                pass                              # the node is busy or gone: the next fault tries again
        return closed

    def _is_proxied(self, addr: str) -> bool:
        parts = addr.split("/")
        return len(parts) > 4 and parts[4].isdigit() and int(parts[4]) in self.proxy_ports

    @property
    def proxy_ports(self) -> set[int]:
        return {p.listening_port for p in self.proxies.values()}

    def heal_all(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()
        for index in sorted(self.stopped):
            self.signal_node(index, signal.SIGCONT)
        self.stopped.clear()
        for index in sorted(self.killed):
            self.start_node(next(n for n in self.layout.nodes if n.index == index))
        self.killed.clear()
        self.say(f"chaos [{self.elapsed():6.2f}s] heal everything: proxies healed, every node running")

    # -- reading the nodes ------------------------------------------------------------------------
    def _endpoint(self, node: NodeInfo) -> clicall.Endpoint:
        user, password = clicall.read_cookie(node.datadir)
        return clicall.Endpoint("127.0.0.1", node.rpc_port, user, password)

    def _call(self, node: NodeInfo, method: str, *params: Any) -> Any:
        return clicall.call(self._endpoint(node), method, list(params), timeout=RPC_TIMEOUT)

    def _tip(self, node: NodeInfo) -> tuple[int, str] | None:
        """(height, hash) of the node's last finalized block, or None if it does not answer now."""
        try:
            height = int(self._call(node, "getblockcount"))
            return height, str(self._call(node, "getblockhash", height))
        except (clicall.CallError, clicall.RPCCallError, ValueError, TypeError):
            return None

    def reachable(self) -> list[NodeInfo]:
        return [n for n in self.layout.nodes if n.index not in self.killed and n.index not in self.stopped]

    @defer.inlineCallbacks
    def sample(self) -> Any:
        """Read every running node's tip in threads; record each as a sighting."""
        nodes = self.reachable()
        at = self.elapsed()
        results = yield defer.gatherResults([threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                                                       self._tip, n) for n in nodes])
        for node, tip in zip(nodes, results, strict=True):
            if tip is not None and tip[0] > 0:
                self.tips[node.index] = tip[0]
                self.sightings.append(Sighting(round(at, 2), node.name, tip[0], tip[1]))

    def _chain(self, node: NodeInfo) -> dict[int, str]:
        tip = min(int(self._call(node, "getblockcount")), MAX_CHECK_HEIGHT)
        return {h: str(self._call(node, "getblockhash", h)) for h in range(1, tip + 1)}

    def _bypass(self, node: NodeInfo) -> tuple[int, int]:
        """(outbound connections, those not dialed through a proxy) of one node."""
        outbound = [p for p in self._call(node, "getpeerinfo") if not p.get("inbound")]
        return len(outbound), sum(1 for p in outbound if not self._is_proxied(str(p.get("multiaddr") or "")))

    # -- the run ------------------------------------------------------------------------------------
    @defer.inlineCallbacks
    def wait_until(self, cond: Callable[[], bool], seconds: float) -> Any:
        """Sample until ``cond()`` holds or ``seconds`` pass (bounded in count and time); True if it held."""
        deadline = time.monotonic() + seconds
        for _ in range(int(seconds / SAMPLE_EVERY) + 2):
            yield self.sample()
            if cond():
                return True
            if time.monotonic() > deadline:
                break
            yield task.deferLater(self.reactor, SAMPLE_EVERY, lambda: None)
        return False

    @defer.inlineCallbacks
    def play(self) -> Any:
        """Start, play the plan, heal, settle, check; sets ``self.code``."""
        self.say(format_plan(self.seed, len(self.validators), self.duration, self.events))
        self.start_proxies()
        self.write_configs()
        self.say(f"chaos: {len(self.proxies)} proxies, one per directed link (node i -> validator j)")
        for node in self.layout.nodes:
            self.start_node(node)
        everyone = {n.index for n in self.layout.nodes}
        up = yield self.wait_until(lambda: set(self.tips) == everyone, STARTUP)
        if not up:
            missing = sorted(everyone - set(self.tips))
            self.problems.append(f"node(s) {missing} did not finalize a block within {STARTUP:g} s of starting")
            return self.finish([])
        self.sightings.clear()                      # the run's clock starts now
        self.t0 = self.reactor.seconds()
        self.say(f"chaos: every node is finalizing; playing {len(self.events)} events over {self.duration:g} s")
        calls = [self.reactor.callLater(e.at, self._apply_logged, e) for e in self.events]
        sampler = task.LoopingCall(self._sample_quietly)
        sampler.clock = self.reactor
        watcher = task.LoopingCall(self._watch)
        watcher.clock = self.reactor
        sampler.start(SAMPLE_EVERY)
        watcher.start(1.0)
        yield task.deferLater(self.reactor, self.duration, lambda: None)
        sampler.stop()
        watcher.stop()
        for call in calls:
            if call.active():                       # cannot happen: every event is within the duration
                call.cancel()
        self.heal_all()
        target = max((s.height for s in self.sightings), default=0) + 1
        self.say(f"chaos [{self.elapsed():6.2f}s] waiting up to {self.settle:g} s for every node to pass height "
                 f"{target}")
        reached = yield self.wait_until(lambda: len(self.tips) == len(everyone)
                                        and min(self.tips.values()) >= target, self.settle)
        if not reached:
            self.problems.append(f"not every node passed height {target} within {self.settle:g} s of the last "
                                 f"heal (tips: {dict(sorted(self.tips.items()))})")
        self._watch()
        nodes = list(self.layout.nodes)
        chains = yield defer.gatherResults([threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                                                      self._chain, n) for n in nodes],
                                           consumeErrors=True)
        try:
            links = yield defer.gatherResults([threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), self._bypass, n) for n in nodes], consumeErrors=True)
            outbound, direct = sum(o for o, _ in links), sum(d for _, d in links)
            self.say(f"chaos: {outbound} outbound connection(s) at the end, {direct} of them dialed a node's own "
                     "address (learned from its hello) instead of a proxy")
        except defer.FirstError as exc:
            self.say(f"chaos: could not read getpeerinfo: {exc.subFailure.getErrorMessage()}")
        self.finish([(n.name, c) for n, c in zip(nodes, chains, strict=True)])

    def _apply_logged(self, event: FaultEvent) -> None:
        d = self.apply(event)
        d.addErrback(lambda f: self.problems.append(f"{event.describe()} failed: {f.getTraceback()}"))

    def _sample_quietly(self) -> Any:
        d = self.sample()
        d.addErrback(lambda f: self.say(f"chaos: reading tips failed: {f.getErrorMessage()}"))
        return d

    def _watch(self) -> None:
        for child in self.sup.check():              # reports each unexpected exit once
            self.problems.append(f"{child.name} exited unexpectedly (see {os.path.join(child.dir, 'node.log')})")

    def finish(self, chains: list[tuple[str, dict[int, str]]]) -> None:
        problems = list(self.problems)
        common = min((max(c, default=0) for _, c in chains), default=0)
        if chains:
            problems += check_chains(dict(chains), self.sightings)
        self.code = verdict(problems, common, len(chains), len(self.sightings), self.out)

    def close(self) -> None:
        """Stop every child (SIGCONT first: a stopped process cannot handle SIGTERM) and every proxy."""
        for index in list(self.stopped):
            self.signal_node(index, signal.SIGCONT)
        self.stopped.clear()
        self.sup.stop(grace=10.0)
        for proxy in self.proxies.values():
            proxy.stop()


def settle_for(duration: float) -> float:
    """Seconds allowed after the last heal: as long as the plan, within 20 .. SETTLE."""
    return min(SETTLE, max(20.0, duration))


def run_chaos(layout: Layout, seed: int, duration: float, out: IO[str] | None = None,
              err: IO[str] | None = None, settle: float | None = None) -> int:
    """``timecoin testnet --start --chaos SEED``: run, check, return the exit status (0 pass, 1 fail)."""
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    run = ChaosRun(layout, seed, duration, reactor, out, err,
                   settle=settle if settle is not None else settle_for(duration))
    failure: list[str] = []

    def go() -> None:
        d = run.play()

        def failed(f: Any) -> None:
            failure.append(f.getErrorMessage() if f.check(ChaosError) else f.getTraceback())

        d.addErrback(failed)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    try:
        reactor.run()
    finally:
        run.close()
    if failure:
        (err or sys.stderr).write(f"timecoin testnet: chaos run failed: {failure[0]}\n")
        return 1
    if run.code is None:
        (err or sys.stderr).write("timecoin testnet: chaos run interrupted before the check\n")
        return 1
    return run.code
