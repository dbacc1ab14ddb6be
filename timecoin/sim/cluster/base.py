"""The seams of the whole-node simulator: the trace, violations, invariants and Byzantine behaviours.

* :class:`Trace`: every event of a run (faults, commits, violations, behaviours' lies) with its world
  time, counted by kind and, with ``--trace FILE``, written as JSON lines so a failure reads step by step.
* :class:`Invariant`: a property checked continuously (``check`` is called every ``CHECK_EVERY`` simulated
  seconds and once at the end with ``final=True``); ``attach`` installs its observers on the cluster
  (``Cluster.on_build`` runs for every node incarnation, so observers survive restarts).
* :class:`Behaviour`: one Byzantine behaviour swapped into a real node; ``install`` runs on every
  incarnation of a Byzantine node, after ``build_node`` and before ``startService``.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import random

    from timecoin.sim.cluster.cluster import Cluster, SimNode


@dataclass(frozen=True)
class Violation:
    """An invariant broke: which, when (world time), at which node, and what was seen."""

    invariant: str
    time: float
    node: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"invariant": self.invariant, "time": round(self.time, 6), "node": self.node, "detail": self.detail}


class Trace:
    """Events of a run: counted always, written as JSON lines when given a file."""

    def __init__(self, out: IO[str] | None = None, start: float = 0.0) -> None:
        self.out = out
        self.start = start
        self.counts: Counter[str] = Counter()

    def emit(self, now: float, kind: str, **fields: Any) -> None:
        self.counts[kind] += 1
        if self.out is not None:
            record = {"t": round(now - self.start, 6), "kind": kind, **fields}
            self.out.write(json.dumps(record, sort_keys=True, default=str) + "\n")


class Invariant(Protocol):
    name: str

    def attach(self, cluster: Cluster, trace: Trace) -> None:
        """Install observers (e.g. on ``cluster.on_build``) before the nodes start."""

    def check(self, cluster: Cluster, final: bool) -> list[Violation]:
        """New violations since the last call (never the same one twice)."""


class Behaviour(Protocol):
    name: ClassVar[str]
    provable: ClassVar[bool]    # its offence can be proven to others (evidence or a ban is expected)

    def install(self, sn: SimNode, cluster: Cluster, rng: random.Random, trace: Trace) -> None:
        """Swap the behaviour into this incarnation of ``sn.node`` (built, not started)."""
