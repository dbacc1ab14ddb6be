"""What ``timecoin status`` reports, read from the store in read-only mode while the node runs."""
from __future__ import annotations

import json
import os
import time
from typing import Any

from timecoin import crypto
from timecoin.config import NodeConfig
from timecoin.errors import DecodeError, StoreError
from timecoin.store import Store

STATUS_FILE = "sync-status.json"       # = timecoin.sync.coordinator.STATUS_FILE (no import: status stays light)
HALT_FILE = "HALTED"                   # = timecoin.consensus.service.HALT_FILE
CONFLICT_FILE = "CONFLICTING-CERTIFICATES.json"   # = timecoin.sync.forks.CONFLICT_FILE
STALE_INTERVALS = 3                    # a status file older than this many sync intervals is stale
STALE_MIN_SECONDS = 10.0               # ... and never fresher than this (fast test networks)


def chain_path(config: NodeConfig) -> str:
    return os.path.join(config.datadir, "chain")


def read_status(config: NodeConfig, at: int | None = None) -> dict[str, Any]:
    """Height, tip hash, finalized height, chain id, validator-set size and our PeerID.

    Every stored block is final (it is stored with its commit certificate), so the finalized height
    equals the height. ``at`` asks for the block hash at one height instead of the tip's.
    """
    store = Store.open_readonly(chain_path(config))
    try:
        height = store.tip_height()
        info: dict[str, Any] = {
            "height": height,
            "hash": store.tip_hash().hex(),
            "finalized_height": height,
            "chain_id": store.chain_id(),
            "genesis_hash": store.genesis_hash().hex(),
            "validators": len(store.validator_set(height + 1) or ()),
        }
        if at is not None:
            block_hash = store.block_hash_at(at)
            if block_hash is None:
                raise StoreError(f"no block at height {at} (tip is {height})")
            info["height"] = at
            info["hash"] = block_hash.hex()
        block = store.get_block(info["height"]) if info["height"] else None
        info["time"] = block.header.timestamp if block else None
        info["round"] = block.header.round if block else None
    finally:
        store.close()
    try:
        info["peer_id"] = crypto.PrivateKey.load(config.key_path).peer_id
    except (OSError, DecodeError):
        info["peer_id"] = None
    info["sync"] = read_sync_status(config)
    info["halted"] = read_halt(config)
    info["conflicts"] = read_conflicts(config)
    return info


def read_sync_status(config: NodeConfig, now: float | None = None) -> dict[str, Any] | None:
    """The running node's last sync progress (``sync-status.json``, written by the SyncCoordinator).

    The node rewrites the file after every applied batch and every sync cycle; one not updated for
    ``STALE_INTERVALS`` sync intervals is from a node that stopped (or hangs): it is marked
    ``stale`` (with its ``age_s``) and never reported as syncing.
    """
    try:
        with open(os.path.join(config.datadir, STATUS_FILE), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    now = time.time() if now is None else now
    updated = data.get("updated")
    interval = data.get("interval", config.sync_interval)
    if not isinstance(interval, int | float) or interval <= 0:
        interval = config.sync_interval
    limit = max(STALE_INTERVALS * interval, STALE_MIN_SECONDS)
    age = now - updated if isinstance(updated, int | float) else None
    data["stale"] = age is None or age > limit
    data["age_s"] = None if age is None else round(age, 1)
    if data["stale"]:
        data["syncing"] = False
    return data


def read_conflicts(config: NodeConfig) -> int:
    """How many conflicting-certificate records the node has written (``CONFLICT_FILE``)."""
    try:
        with open(os.path.join(config.datadir, CONFLICT_FILE), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return 0
    return len(data) if isinstance(data, list) else 0


def read_halt(config: NodeConfig) -> str | None:
    try:
        with open(os.path.join(config.datadir, HALT_FILE), encoding="utf-8", errors="replace") as f:
            return f.read().strip() or "halted"
    except OSError:
        return None


def format_status(info: dict[str, Any]) -> str:
    lines = [
        f"chain       {info['chain_id']}",
        f"height      {info['height']}",
        f"hash        {info['hash']}",
        f"finalized   {info['finalized_height']}",
        f"validators  {info['validators']}",
        f"peer id     {info['peer_id'] or '-'}",
    ]
    sync = info.get("sync")
    if sync and sync.get("stale"):
        age = sync.get("age_s")
        lines.append(f"sync        stale: status last written {'?' if age is None else f'{age:.0f} s'} ago "
                     "(is the node running?)")
    elif sync and sync.get("syncing"):
        eta = sync.get("eta_s")
        lines.append(f"sync        {sync.get('height')}/{sync.get('target')} at {sync.get('blocks_per_s')} blocks/s, "
                     f"ETA {'-' if eta is None else f'{eta:.0f} s'}")
    if sync and sync.get("genesis_alert"):
        lines.append(f"ALERT       {sync['genesis_alert']}")
    if sync and sync.get("state_alert"):
        lines.append(f"STATE ALERT {sync['state_alert']}")
    if info.get("conflicts"):
        lines.append(f"EVIDENCE    {info['conflicts']} conflicting-certificate record(s) in {CONFLICT_FILE}")
    if info.get("halted"):
        lines.append(f"HALTED      {info['halted']}")
    return "\n".join(lines)
