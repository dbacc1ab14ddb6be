"""Real bugs the whole-node simulator found, each pinned by the seed and fault that showed it.

Both were found by running ``timecoin.sim.cluster`` with node-level faults (docs/simulation.md, "Findings").
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


def failures(events: list[dict], text: str) -> list[dict]:
    return [e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)
            and text in str(e.get("log_format", "")) + repr(e.get("log_failure", ""))]


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
        lines = [e for e in logged if e.get("log_level") == LogLevel.critical and "full" in str(e.get("log_format", ""))
                 + str(e.get("reason", ""))]
        assert lines, "no critical line says why the node stopped"
        assert errors == []
        c.fill_disk(sick, False)
        c.start(sick)
        c.run_for(3.0)
        heights = c.heights()
        assert heights[1] >= max(heights) - 2 and heights[1] > 0, heights
    finally:
        c.close()


def test_a_sync_cycle_in_flight_when_the_node_stops_ends_quietly(logged: list[dict]) -> None:
    """Seed 2 again: a node stopped while its sync cycle waited on peers logged 'Sync cycle failed' with an
    AttributeError (the store was already closed). A stop must end the cycle without a failure."""
    c = Cluster(4, seed=2)
    try:
        c.start_all()
        c.run_for(1.5)
        late = c.nodes[3]
        c.crash(late)
        c.run_for(2.0)
        c.start(late)
        c.run_for(0.3)           # it is now syncing the heights it missed
        c.stop_all()
    finally:
        c.close()
    assert failures(logged, "Sync cycle failed") == []
