"""`timecoin status` shows what the running node last wrote: sync progress, genesis alerts, a halt."""
from __future__ import annotations

import json
from pathlib import Path

from timecoin.config import build_config
from timecoin.status import HALT_FILE, STATUS_FILE, format_status, read_halt, read_sync_status

BASE = {"chain_id": "c", "height": 7, "hash": "ab" * 32, "finalized_height": 7, "validators": 4, "peer_id": None}


def test_sync_progress_alert_and_halt_are_read_and_shown(tmp_path: Path) -> None:
    cfg = build_config({"datadir": str(tmp_path)})
    assert read_sync_status(cfg) is None and read_halt(cfg) is None
    assert "sync" not in format_status(BASE)
    progress = {"syncing": True, "height": 120, "target": 5000, "blocks_per_s": 297.4, "eta_s": 16.4,
                "genesis_alert": "only 1 of 3 responding peers share our genesis"}
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
