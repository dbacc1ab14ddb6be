"""How fast the whole-node simulator runs: simulated heights per real second for N honest nodes.

``python -m timecoin.sim.cluster.scale 4 10 31 100 [--seconds S] [--seed K]`` builds an honest cluster
of each size (no faults, equal stakes), runs it until every node holds height 1 (the warm-up: dialing,
the first height), then ``S`` simulated seconds, and prints one line per size. The benchmark suite's
``sim`` part (``python -m benchmarks --only sim``) reports the same figures against the 4-node one.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

from timecoin.sim.cluster.cluster import Cluster

WARMUP_LIMIT = 120.0          # simulated seconds allowed for every node to reach height 1


@dataclass(frozen=True)
class ScaleResult:
    nodes: int
    heights: int              # finalized by every node during the measured window
    sim_seconds: float
    real_seconds: float
    warmup_real_seconds: float

    @property
    def heights_per_real_second(self) -> float:
        return self.heights / self.real_seconds if self.real_seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{self.nodes} nodes: {self.heights} heights in {self.sim_seconds:.1f} simulated s, "
                f"{self.real_seconds:.1f} real s: {self.heights_per_real_second:.3f} simulated heights per real "
                f"second (warm-up {self.warmup_real_seconds:.1f} real s)")


def measure(nodes: int, seconds: float = 2.0, seed: int = 1) -> ScaleResult:
    cluster = Cluster(nodes, seed=seed)
    try:
        started = time.perf_counter()
        cluster.start_all()
        cluster.scheduler.run_until(cluster.now() + WARMUP_LIMIT, stop=lambda: min(cluster.heights()) >= 1)
        warm = time.perf_counter()
        low = min(cluster.heights())
        if low < 1:
            raise RuntimeError(f"{nodes} nodes did not all reach height 1 in {WARMUP_LIMIT} simulated s")
        t0 = cluster.now()
        cluster.run_for(seconds)
        done = time.perf_counter()
        return ScaleResult(nodes, min(cluster.heights()) - low, cluster.now() - t0, done - warm, warm - started)
    finally:
        cluster.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m timecoin.sim.cluster.scale", description=__doc__.splitlines()[0])
    p.add_argument("nodes", nargs="+", type=int, help="cluster sizes")
    p.add_argument("--seconds", type=float, default=2.0, help="simulated seconds measured after the warm-up")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if any(n < 1 for n in args.nodes) or args.seconds <= 0:
        p.error("sizes must be >= 1 and --seconds > 0")
    for n in args.nodes:
        print(measure(n, args.seconds, args.seed).line(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
