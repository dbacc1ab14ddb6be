"""The whole-node simulator's speed: simulated heights per real second at 4, 10 and 31 nodes (issue 13).

Each size is an honest cluster (``timecoin.sim.cluster.scale.measure``: warm-up to height 1, then 2
simulated seconds). The baseline is the 4-node figure of the same run, so the ratio shows how the cost of
a height grows with the network (every vote is flooded to every peer: work ~ nodes x peers x votes).
``--quick`` measures 4 nodes only. 100 nodes take minutes: ``python -m timecoin.sim.cluster.scale 100``.
"""
from __future__ import annotations

from benchmarks.suite import Figure, ratio_figure
from timecoin.sim.cluster.scale import measure


async def run(quick: bool) -> list[Figure]:
    base = measure(4, 1.0 if quick else 2.0)
    figures = [Figure("sim 4 nodes", round(base.heights_per_real_second, 3), "simulated heights/real s")]
    for n in () if quick else (10, 31):
        got = measure(n, 2.0)
        figures.append(ratio_figure(f"sim {n} nodes", round(got.heights_per_real_second, 3),
                                    "simulated heights/real s", round(base.heights_per_real_second, 3),
                                    "simulated heights/real s at 4 nodes"))
    return figures
