"""Real bugs the whole-node simulator found, each pinned by the seed and fault that showed it.

Found by running ``timecoin.sim.cluster`` with node-level faults (docs/simulation.md, "Findings").
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.logger import LogLevel, globalLogPublisher

from timecoin.sim.cluster.cluster import Cluster


@pytest.fixture
def logged() -> Iterator[list[dict]]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def test_a_full_disk_stops_the_node_cleanly_and_it_catches_up_after_a_restart(logged: list[dict]) -> None:
    """Seed 2, disk full on n1 (4 nodes): the node went on half-working -- every write raising StoreError
    into its handlers -- and never finalized again, even once the disk had room. It must stop cleanly with
    one clear line, and a restart with room again must catch up."""
    errors: list[tuple[str, BaseException]] = []
    c = Cluster(4, seed=2, on_error=lambda where, exc: errors.append((where, exc)))
    try:
        c.start_all()
        c.run_for(2.0)
        sick = c.nodes[1]
        c.fill_disk(sick)
        c.run_for(1.0)
        assert sick.state == "stopped", sick.state
        assert sick.node is not None and not sick.node.running
        lines = [e for e in logged if e.get("log_level") == LogLevel.critical
                 and "Stopping the node" in str(e.get("log_format", "")) and "No space left" in str(e.get("reason"))]
        assert lines, "no critical line says why the node stopped"
        assert errors == []
        c.fill_disk(sick, False)
        c.start(sick)
        c.run_for(3.0)
        heights = c.heights()
        assert heights[1] >= max(heights) - 2 and heights[1] > 0, heights
    finally:
        c.close()
