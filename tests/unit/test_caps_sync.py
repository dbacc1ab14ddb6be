"""Caps on the sync coordinator's fork suspicions (issue 16, resource bounds).

A NEW_BLOCK announcement naming another hash at a height we hold is a fork suspicion, kept until the next
check; while a long sync cycle runs, checks wait. An attacker that churns identities (one handshake each)
during that time must not grow the suspicion tables without bound: at ``MAX_SUSPECTS`` the suspicions of
peers no longer connected go (the check would skip them anyway), and a connected peer's suspicion is kept;
the per-peer suspicion times are forgotten outside their window beyond ``MAX_SUSPECT_TIMES``.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet import task

from timecoin.config import build_config
from timecoin.sync import coordinator
from timecoin.sync.coordinator import FORK_SUSPECT_INTERVAL, SyncCoordinator

CAP = 4
OURS = b"\x01" * 32
THEIRS = b"\x02" * 32


def busy_coordinator(tmp_path: Path, connected: list[str]) -> tuple[SyncCoordinator, task.Clock]:
    """A running coordinator in the middle of a cycle (so suspicions wait), over a store holding 100 blocks."""
    clock = task.Clock()
    store = SimpleNamespace(tip_height=lambda: 100, block_hash_at=lambda h: OURS)
    node = SimpleNamespace(config=build_config({"datadir": str(tmp_path)}), genesis=SimpleNamespace(hash=OURS),
                           store=store, p2p=None)
    peers = [SimpleNamespace(peer_id=p) for p in connected]
    coord = SyncCoordinator(node, clock, peers=lambda: peers)   # type: ignore[arg-type, return-value]
    coord.running = True
    coord._busy = True
    return coord, clock


def test_churned_identities_cannot_grow_the_waiting_suspicions_and_a_connected_ones_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coordinator, "MAX_SUSPECTS", CAP)
    coord, clock = busy_coordinator(tmp_path, ["honest", "late"])
    coord.fork_suspected("honest", 50, THEIRS)
    for i in range(20 * CAP):
        coord.fork_suspected(f"churned{i}", 50, THEIRS)
        assert len(coord._suspects) <= CAP
    assert coord._suspects["honest"] == (50, THEIRS)
    coord.fork_suspected("late", 60, THEIRS)          # a connected peer after the flood still gets its check
    assert coord._suspects["late"] == (60, THEIRS) and len(coord._suspects) <= CAP


def test_suspicion_times_are_forgotten_outside_their_window_at_the_cap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coordinator, "MAX_SUSPECT_TIMES", CAP)
    coord, clock = busy_coordinator(tmp_path, [])
    for i in range(20 * CAP):
        clock.advance(FORK_SUSPECT_INTERVAL / 2)    # two new identities per window
        coord.fork_suspected(f"churned{i}", 50, THEIRS)
        assert len(coord._suspected_at) <= CAP
