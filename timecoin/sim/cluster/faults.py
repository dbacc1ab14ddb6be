"""The fault plan of a run: network and node faults drawn from the seed, each healed before a stated time.

Kinds (``FAULT_KINDS``): ``crash`` (kill -9, restart on the same LMDB and WAL), ``pause`` (SIGSTOP,
SIGCONT), ``partition`` (the links between two sides cut: each connection stalls or is reset; healed),
``slow`` (one node's links get 40-150 ms latency and jitter, then their old model back), ``diskfull``
(the node's disk fills: it must stop itself cleanly; space is freed and it is started again) and
``skew`` (every node's clock is offset by a draw within +-40 % of ``precision``, for the whole run: any two
honest clocks then stay within ``precision`` of each other, the timeliness rule's assumption (SPEC §4); a
wider spread makes an honest proposer's blocks untimely for some peers by design, which is not a fault
the protocol promises to survive).

Node faults never overlap in time (one node down at a time, so a faulty minority stays a minority
among the honest), and all of them end by ``window_end``: from then on the network is synchronous and
liveness is owed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from timecoin.sim.cluster.cluster import Cluster
from timecoin.sim.cluster.network import LinkModel

FAULT_KINDS = ("crash", "pause", "partition", "slow", "diskfull", "skew")
TIMED_KINDS = ("crash", "pause", "partition", "slow", "diskfull")
SKEW_SHARE = 0.4


@dataclass(frozen=True)
class Fault:
    """One fault: ``kind`` on ``nodes`` (a partition: one side) from ``start`` to ``end`` (world seconds from
    the run's start)."""

    kind: str
    start: float
    end: float
    nodes: tuple[int, ...]

    def describe(self) -> str:
        who = ",".join(f"n{i}" for i in self.nodes)
        if self.kind == "partition":
            who = "{" + who + "} | rest"
        return f"{self.kind} {who} {self.start:.2f}-{self.end:.2f}s"


def plan_faults(rng: random.Random, kinds: list[str], nodes: int, honest: list[int], window: tuple[float, float],
                count: int) -> list[Fault]:
    """``count`` timed faults of the given kinds, one after another inside ``window`` (no two overlap)."""
    timed = [k for k in kinds if k in TIMED_KINDS]
    if not timed or count <= 0 or not honest:
        return []
    start, end = window
    slot = (end - start) / count
    out: list[Fault] = []
    for i in range(count):
        kind = rng.choice(timed)
        t0 = start + i * slot + rng.uniform(0.0, slot * 0.3)
        t1 = t0 + rng.uniform(slot * 0.3, slot * 0.6)
        if kind == "partition":
            side_size = rng.randint(1, max(1, nodes // 2))
            side = tuple(sorted(rng.sample(range(nodes), side_size)))
            out.append(Fault(kind, t0, t1, side))
        else:
            out.append(Fault(kind, t0, t1, (rng.choice(honest),)))
    return out


def draw_skews(rng: random.Random, nodes: int, precision: float) -> list[float]:
    return [round(rng.uniform(-SKEW_SHARE, SKEW_SHARE) * precision, 6) for _ in range(nodes)]


class FaultDriver:
    """Puts a plan on the cluster's scheduler: each fault begins and ends as world events, traced."""

    def __init__(self, cluster: Cluster, faults: list[Fault], emit: object) -> None:
        self.cluster = cluster
        self.faults = faults
        self.emit = emit
        self._saved_models: dict[int, list[tuple[str, str, LinkModel]]] = {}

    def schedule(self, t0: float) -> None:
        sched = self.cluster.scheduler
        for fault in self.faults:
            sched.at(t0 + fault.start, None, self._begin, fault)
            sched.at(t0 + fault.end, None, self._end, fault)

    def _trace(self, what: str, fault: Fault) -> None:
        emit = self.emit
        if callable(emit):
            emit(what, fault=fault.kind, nodes=[f"n{i}" for i in fault.nodes])

    def _begin(self, fault: Fault) -> None:
        c = self.cluster
        self._trace("fault", fault)
        if fault.kind == "partition":
            side = {c.nodes[i].ip for i in fault.nodes}
            c.network.partition(side, {n.ip for n in c.nodes} - side)
            return
        sn = c.nodes[fault.nodes[0]]
        if fault.kind == "crash":
            c.crash(sn)
        elif fault.kind == "pause":
            c.pause(sn)
        elif fault.kind == "diskfull":
            c.fill_disk(sn)
        elif fault.kind == "slow":
            saved = []
            for other in c.nodes:
                if other is not sn:
                    saved.append((sn.ip, other.ip, c.network.model(sn.ip, other.ip)))
                    lat = c.rng.uniform(0.04, 0.15)
                    c.network.set_model(sn.ip, other.ip, LinkModel(latency=lat, jitter=lat / 2, bandwidth=1_250_000.0))
            self._saved_models[id(fault)] = saved

    def _end(self, fault: Fault) -> None:
        c = self.cluster
        self._trace("heal", fault)
        if fault.kind == "partition":
            c.network.heal()
            return
        sn = c.nodes[fault.nodes[0]]
        if fault.kind == "crash":
            if sn.state == "crashed":
                c.start(sn)
        elif fault.kind == "pause":
            c.resume(sn)
        elif fault.kind == "diskfull":
            c.fill_disk(sn, False)
            if sn.state in ("stopped", "crashed"):
                c.start(sn)                 # the operator frees space and starts it again
        elif fault.kind == "slow":
            for a, b, model in self._saved_models.pop(id(fault), []):
                c.network.set_model(a, b, model)
