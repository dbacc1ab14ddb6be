"""What ``timecoin status`` reports, read from the store in read-only mode while the node runs."""
from __future__ import annotations

import os
from typing import Any

from timecoin import crypto
from timecoin.config import NodeConfig
from timecoin.errors import DecodeError, StoreError
from timecoin.store import Store


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
    return info


def format_status(info: dict[str, Any]) -> str:
    lines = [
        f"chain       {info['chain_id']}",
        f"height      {info['height']}",
        f"hash        {info['hash']}",
        f"finalized   {info['finalized_height']}",
        f"validators  {info['validators']}",
        f"peer id     {info['peer_id'] or '-'}",
    ]
    return "\n".join(lines)
