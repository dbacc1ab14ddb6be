"""`timecoin status` shows what the running node last wrote: sync progress, genesis alerts, a halt."""
from __future__ import annotations

import json
import time
from pathlib import Path

from timecoin.config import build_config
from timecoin.status import (
    CONFLICT_FILE,
    HALT_FILE,
    STATUS_FILE,
    format_status,
    read_conflicts,
    read_halt,
    read_sync_status,
)

BASE = {"chain_id": "c", "height": 7, "hash": "ab" * 32, "finalized_height": 7, "validators": 4, "peer_id": None}


def test_sync_progress_alert_and_halt_are_read_and_shown(tmp_path: Path) -> None:
    cfg = build_config({"datadir": str(tmp_path)})
    assert read_sync_status(cfg) is None and read_halt(cfg) is None
    assert "sync" not in format_status(BASE)
    progress = {"syncing": True, "height": 120, "target": 5000, "blocks_per_s": 297.4, "eta_s": 16.4,
                "genesis_alert": "only 1 of 3 responding peers share our genesis", "updated": time.time()}
    (tmp_path / STATUS_FILE).write_text(json.dumps(progress))
    (tmp_path / HALT_FILE).write_text("conflicting commit certificates at height 9\n")
    info = BASE | {"sync": read_sync_status(cfg), "halted": read_halt(cfg)}
    text = format_status(info)
    assert "sync        120/5000 at 297.4 blocks/s, ETA 16 s" in text
    assert "ALERT       only 1 of 3" in text
    assert "HALTED      conflicting commit certificates at height 9" in text


def test_a_corrupt_status_file_is_ignored(tmp_path: Path) -> None:
    cfg = build_config({"datadir": str(tmp_path)})
    (tmp_path / STATUS_FILE).write_text("{not json")
    assert read_sync_status(cfg) is None
    (tmp_path / STATUS_FILE).write_text("[1, 2]")
    assert read_sync_status(cfg) is None


def test_a_status_file_not_updated_for_a_few_intervals_is_stale_not_syncing(tmp_path: Path) -> None:
    cfg = build_config({"datadir": str(tmp_path), "sync_interval": "30"})
    now = 1_800_000_000.0
    progress = {"syncing": True, "height": 120, "target": 5000, "blocks_per_s": 297.4, "eta_s": 16.4,
                "updated": now - 60, "interval": 30}
    (tmp_path / STATUS_FILE).write_text(json.dumps(progress))
    fresh = read_sync_status(cfg, now=now)                  # two intervals old: still the running node's
    assert fresh is not None and fresh["syncing"] and not fresh["stale"]
    assert "sync        120/5000" in format_status(BASE | {"sync": fresh})
    # A node killed mid-sync left syncing: true behind; four intervals later it is shown as stale.
    stale = read_sync_status(cfg, now=now + 60)
    assert stale is not None and stale["stale"] and not stale["syncing"] and stale["age_s"] == 120
    text = format_status(BASE | {"sync": stale})
    assert "sync        stale: status last written 120 s ago (is the node running?)" in text
    assert "120/5000" not in text
    # A file without a time (an older node) is stale too.
    (tmp_path / STATUS_FILE).write_text(json.dumps({"syncing": True, "height": 1, "target": 2}))
    old = read_sync_status(cfg, now=now)
    assert old is not None and old["stale"] and not old["syncing"]


def test_state_alert_and_conflict_records_are_shown(tmp_path: Path) -> None:
    cfg = build_config({"datadir": str(tmp_path)})
    assert read_conflicts(cfg) == 0
    (tmp_path / CONFLICT_FILE).write_text(json.dumps([{"height": 9}, {"height": 9}]))
    (tmp_path / STATUS_FILE).write_text(json.dumps({"syncing": False, "updated": time.time(),
                                                    "state_alert": "our state root at height 38 differs"}))
    text = format_status(BASE | {"sync": read_sync_status(cfg), "conflicts": read_conflicts(cfg)})
    assert "STATE ALERT our state root at height 38 differs" in text
    assert f"EVIDENCE    2 conflicting-certificate record(s) in {CONFLICT_FILE}" in text
