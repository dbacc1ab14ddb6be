"""A seeded fault plan for a real-process testnet: what to break, when, and when to heal it.

``plan(seed, nodes, duration)`` draws only from ``random.Random(seed)``, so the same arguments give the
same plan (the runner prints it before it starts). Every fault is an *episode* against one victim node:

* link faults on the links between the victim and some other nodes, both directions (a connection
  between two nodes may have been dialed either way): ``delay`` (seconds per chunk), ``stall``,
  ``partition`` (each ended by a ``heal``) and ``reset`` (instant: the nodes redial);
* process faults: ``kill`` (SIGKILL) ended by ``restart``, ``stop`` (SIGSTOP) ended by ``cont`` (SIGCONT).

A victim counts as faulty from its fault until :data:`RECOVER` seconds after the heal (a restarted node
must catch up). Episodes run in ``f = (n - 1) // 3`` lanes, one episode at a time per lane, and
concurrent episodes pick distinct victims, so never more than ``f`` validators are faulty at once and a
quorum of honest, connected validators always remains: the chain must keep going. Every episode ends by
``duration``. The first episodes take the kinds in a shuffled order, so a plan long enough to hold one of
each tries every kind.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

WARMUP = 3.0          # seconds before the first fault: the nodes connect and finalize a few blocks
RECOVER = 2.0         # seconds a healed victim still counts as faulty (redial, restart, catch up)
MIN_NODES = 4         # f = (n - 1) // 3 >= 1: at least one validator may be faulty
LINK_KINDS = ("delay", "stall", "reset", "partition")
PROCESS_KINDS = ("kill", "stop")
KINDS = LINK_KINDS + PROCESS_KINDS
HEAL_OF = {"delay": "heal", "stall": "heal", "partition": "heal", "kill": "restart", "stop": "cont"}
SPAN = {"delay": (2.0, 5.0), "stall": (1.5, 4.0), "reset": (0.0, 0.0), "partition": (2.0, 5.0),
        "kill": (2.0, 4.0), "stop": (2.0, 4.0)}
MAX_DELAY = 0.8       # seconds added per chunk by a delay fault (drawn from 0.05 .. MAX_DELAY)
MAX_EPISODES = 1000   # a bound on the drawing loop, whatever the duration


@dataclass(frozen=True)
class FaultEvent:
    """One action at ``at`` seconds after the start: a fault, or the heal that ends one."""

    at: float
    action: str                       # one of KINDS, or heal / restart / cont
    node: int                         # the victim
    peers: tuple[int, ...] = ()       # link actions: the other ends of the victim's links
    value: float = 0.0                # delay: seconds per chunk

    def links(self) -> list[tuple[int, int]]:
        """The directed links (dialer, dialed) this action applies to: both ways between node and peers."""
        out: list[tuple[int, int]] = []
        for p in self.peers:
            out += [(self.node, p), (p, self.node)]
        return out

    def describe(self) -> str:
        """One line, as the runner prints it."""
        what = {"delay": f"delay {self.value:.3f} s on", "stall": "stall", "reset": "reset",
                "partition": "partition", "heal": "heal", "kill": "SIGKILL", "restart": "restart",
                "stop": "SIGSTOP", "cont": "SIGCONT"}[self.action]
        if self.peers:
            return f"t={self.at:6.2f}s {what} node{self.node}<->" + ",".join(f"node{p}" for p in self.peers)
        return f"t={self.at:6.2f}s {what} node{self.node}"


def max_faulty(nodes: int) -> int:
    """f: the most validators of ``nodes`` (equal stake) that may be faulty while the rest finalize."""
    return (nodes - 1) // 3


def plan(seed: int, nodes: int, duration: float) -> list[FaultEvent]:
    """The fault plan for ``nodes`` validators over ``duration`` seconds, sorted by time (see module doc)."""
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < MIN_NODES:
        raise ValueError(f"a chaos run needs at least {MIN_NODES} validators (so that f = (n-1)//3 >= 1), "
                         f"not {nodes!r}")
    if not duration >= WARMUP + 5.0:
        raise ValueError(f"a chaos run needs a duration of at least {WARMUP + 5.0:g} s, not {duration!r}")
    rng = random.Random(seed)
    f = max_faulty(nodes)
    bag: list[str] = []
    busy: list[tuple[float, float, int]] = []        # (start, end + RECOVER, victim)
    events: list[FaultEvent] = []
    episodes = 0
    for _lane in range(f):
        t = WARMUP + rng.uniform(0.0, 1.0)
        while episodes < MAX_EPISODES:
            if not bag:
                bag = list(KINDS)
                rng.shuffle(bag)
            kind = bag[-1]
            lo, hi = SPAN[kind]
            end = t + rng.uniform(lo, hi)
            if end > duration:
                break
            free = [v for v in range(nodes) if not any(s < end + RECOVER and t < e and v == w for s, e, w in busy)]
            if not free:                               # every possible victim is busy in another lane
                t = end + RECOVER
                continue
            bag.pop()
            episodes += 1
            victim = rng.choice(free)
            busy.append((t, end + RECOVER, victim))
            others = [p for p in range(nodes) if p != victim]
            peers = tuple(sorted(rng.sample(others, rng.randint(1, len(others))))) if kind in LINK_KINDS else ()
            value = round(rng.uniform(0.05, MAX_DELAY), 3) if kind == "delay" else 0.0
            events.append(FaultEvent(round(t, 2), kind, victim, peers, value))
            if kind in HEAL_OF:
                events.append(FaultEvent(round(end, 2), HEAL_OF[kind], victim, peers))
            t = end + RECOVER + rng.uniform(0.0, 1.5)
    return sorted(events, key=lambda e: (e.at, e.action not in HEAL_OF.values()))


def format_plan(seed: int, nodes: int, duration: float, events: list[FaultEvent]) -> str:
    """The plan as printed before a run: one line per event."""
    head = (f"chaos plan: seed {seed}, {nodes} validators (f = {max_faulty(nodes)}), {duration:g} s, "
            f"{len(events)} events")
    return "\n".join([head, *(f"  {e.describe()}" for e in events)])
