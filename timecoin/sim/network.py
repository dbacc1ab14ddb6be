"""The in-memory network: asynchronous and lossy before GST, synchronous (delay <= delta) after.

Before the global stabilization time every copy gets a random delay (so messages reorder), may be
dropped or duplicated, and is lost if it crosses an active partition. From GST on, every copy
arrives within ``delta`` and nothing is lost: the partial-synchrony model the paper proves liveness
in. Messages lost before GST come back through the world's gossip, which re-offers them after GST.
"""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Partition:
    """From ``start`` to ``end`` (before GST) copies between ``side`` and the rest are lost."""

    start: float
    end: float
    side: frozenset[int]

    def cuts(self, now: float, a: int, b: int) -> bool:
        return self.start <= now < self.end and ((a in self.side) != (b in self.side))


@dataclass(frozen=True)
class NetConfig:
    gst: float                      # simulated seconds
    delta: float                    # post-GST delay bound
    min_delay: float = 0.0005
    max_delay: float = 0.03         # pre-GST delays are uniform in [min_delay, max_delay]
    drop: float = 0.0               # pre-GST loss probability per copy
    duplicate: float = 0.0          # pre-GST duplication probability per copy
    partitions: tuple[Partition, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"gst": round(self.gst, 6), "delta": self.delta, "max_delay": round(self.max_delay, 6),
                "drop": round(self.drop, 6), "duplicate": round(self.duplicate, 6),
                "partitions": [[round(p.start, 6), round(p.end, 6), sorted(p.side)] for p in self.partitions]}


@dataclass
class Network:
    config: NetConfig
    rng: random.Random
    at: Callable[[float, Callable[[], None]], None]      # the clock's scheduler
    now: Callable[[], float]
    stats: Counter[str] = field(default_factory=Counter)

    def after_gst(self) -> bool:
        return self.now() >= self.config.gst

    def delay(self) -> float:
        """One copy's delay now: bounded by delta after GST."""
        if self.after_gst():
            return self.rng.uniform(self.config.min_delay, self.config.delta)
        return self.rng.uniform(self.config.min_delay, self.config.max_delay)

    def send(self, src: int, dst: int, deliver: Callable[[], None], lossless: bool = False) -> float | None:
        """Schedule ``deliver`` as one copy from ``src`` to ``dst``; returns its delay (None if lost).

        ``lossless``: the adversary's own targeted copies (it controls its links, and pre-GST loss
        would only blur its schedule)."""
        self.stats["sent"] += 1
        d = self.delay()
        if not self.after_gst() and not lossless:
            now = self.now()
            if any(p.cuts(now, src, dst) for p in self.config.partitions):
                self.stats["partitioned"] += 1
                return None
            if self.config.drop and self.rng.random() < self.config.drop:
                self.stats["dropped"] += 1
                return None
            if self.config.duplicate and self.rng.random() < self.config.duplicate:
                self.stats["duplicated"] += 1
                self.at(self.delay(), deliver)
        self.at(d, deliver)
        return d
