"""Core RPC methods (bitcoind names): help, uptime, stop, the chain tip, getblockchaininfo, and health.

``health`` (and ``GET /health``) answers what operators ask of a BFT node: is it synced and finalizing?
A node is healthy when its store is open, consensus is not halted, it is not catching up, it has a peer
(unless it is the only validator), and its last block was finalized recently. "Recently" is derived
from its own timing (:func:`stall_bound`): twice the block interval, plus ``ROUNDS`` (5) consensus rounds with
their growing timeouts, plus the message delay and clock precision, plus 1 s of scheduling slack.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any

from timecoin.rpc.context import RPCContext
from timecoin.rpc.errors import INVALID_PARAMETER, MISC_ERROR, RPCError
from timecoin.rpc.registry import TABLE, Param

ROUNDS = 5                  # consensus rounds a healthy network may need for one height
SLACK_S = 1.0               # scheduling and clock slack on top of the derived bound
MEDIAN_SPAN = 11            # bitcoind's mediantime: the median of the last 11 block times
HALT_FILE = "HALTED"        # = timecoin.consensus.service.HALT_FILE


# -- control ---------------------------------------------------------------------------------------
@TABLE.method("help", Param("command", "str", "a method to describe", required=False),
              summary="List every method, or describe one (its arguments, result and errors).",
              result="text", group="Control")
def help_(ctx: RPCContext, command: str | None) -> str:
    if command and command not in TABLE.methods:
        return f"help: unknown command: {command[:100]}"      # bitcoind answers this as a result
    return TABLE.help(command)


@TABLE.method("uptime", summary="Seconds since the RPC server started.", result="integer seconds",
              group="Control")
def uptime(ctx: RPCContext) -> int:
    return max(0, int(ctx.now() - ctx.started_at))


@TABLE.method("stop", summary="Stop the node cleanly (the reply is sent first).",
              result='"Timecoin server stopping"', group="Control",
              errors=("-1: the node has no RPC service to stop it",))
def stop(ctx: RPCContext) -> str:
    rpc = getattr(ctx.node, "rpc", None)
    if rpc is None:
        raise RPCError(MISC_ERROR, "this node has no RPC service")
    rpc.request_stop(ctx.client)
    return "Timecoin server stopping"


# -- the chain -------------------------------------------------------------------------------------
@TABLE.method("getblockcount", summary="Height of the last finalized block (0: only genesis).",
              result="integer height", group="Blockchain", errors=("-28: the node is starting",))
def getblockcount(ctx: RPCContext) -> int:
    return int(ctx.store.tip_height())


@TABLE.method("getbestblockhash", summary="Hash of the last finalized block (the genesis hash at height 0).",
              result="hex block hash", group="Blockchain", errors=("-28: the node is starting",))
def getbestblockhash(ctx: RPCContext) -> str:
    return str(ctx.store.tip_hash().hex())


@TABLE.method("getblockhash", Param("height", "int", "a height from 0 (genesis) to the tip", minimum=0),
              summary="Hash of the block at a height.", result="hex block hash", group="Blockchain",
              errors=("-8: height above the tip (Block height out of range)", "-28: the node is starting"))
def getblockhash(ctx: RPCContext, height: int) -> str:
    store = ctx.store
    block_hash = store.block_hash_at(height) if height <= store.tip_height() else None
    if block_hash is None:
        raise RPCError(INVALID_PARAMETER, "Block height out of range")
    return str(block_hash.hex())


def block_time_ms(node: Any, height: int) -> int:
    """A finalized block's timestamp (ms since the epoch); the genesis time at height 0."""
    if height <= 0:
        return int(node.genesis.genesis_time)
    block = node.store.get_block(height)
    return int(block.header.timestamp) if block is not None else int(node.genesis.genesis_time)


def _headers(node: Any, tip: int) -> int:
    sync = getattr(node, "sync", None)
    progress = getattr(getattr(sync, "manager", None), "progress", None)
    return max(tip, int(getattr(progress, "target", 0) or 0))


def _syncing(node: Any, tip: int) -> bool:
    sync = getattr(node, "sync", None)
    progress = getattr(getattr(sync, "manager", None), "progress", None)
    return bool(progress is not None and progress.running and progress.target > tip)


def _size_on_disk(path: str) -> int:
    try:
        return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
    except OSError:
        return 0


def _warnings(node: Any) -> list[str]:
    out = []
    halted = halted_reason(node)
    if halted:
        out.append(f"consensus halted: {halted}")
    sync = getattr(node, "sync", None)
    for alert in (getattr(sync, "genesis_alert", None), getattr(sync, "state_alert", None)):
        if alert:
            out.append(str(alert))
    return out


@TABLE.method("getblockchaininfo",
              summary="The chain's state: network, height, tip, times, sync progress, size on disk, warnings.",
              result="{chain, chain_id, blocks, headers, bestblockhash, time, mediantime, verificationprogress, "
                     "initialblockdownload, size_on_disk, warnings: [text]} (times in seconds since the epoch)",
              group="Blockchain", errors=("-28: the node is starting",))
def getblockchaininfo(ctx: RPCContext) -> dict[str, Any]:
    store, node = ctx.store, ctx.node
    tip = int(store.tip_height())
    headers = _headers(node, tip)
    times = [block_time_ms(node, h) for h in range(max(0, tip - MEDIAN_SPAN + 1), tip + 1)]
    return {
        "chain": node.config.network,
        "chain_id": node.genesis.chain_id,
        "blocks": tip,
        "headers": headers,
        "bestblockhash": store.tip_hash().hex(),
        "time": times[-1] // 1000,
        "mediantime": int(statistics.median_low(times)) // 1000,
        "verificationprogress": 1.0 if headers <= 0 else round(min(1.0, tip / headers), 8),
        "initialblockdownload": _syncing(node, tip),
        "size_on_disk": _size_on_disk(os.path.join(node.config.datadir, "chain")),
        "warnings": _warnings(node),
    }


# -- health ----------------------------------------------------------------------------------------
def stall_bound(config: Any) -> float:
    """Seconds without a finalized block after which a node is stalled (see the module docstring)."""
    steps = ((config.timeout_propose, config.timeout_propose_delta),
             (config.timeout_prevote, config.timeout_prevote_delta),
             (config.timeout_precommit, config.timeout_precommit_delta))
    rounds = sum(base + r * delta for r in range(ROUNDS) for base, delta in steps)
    return float(2 * config.block_interval + rounds + config.message_delay + config.precision + SLACK_S)


def halted_reason(node: Any) -> str | None:
    """Why consensus stopped finalizing (the service's state, or the HALTED file it leaves), or None."""
    reason = getattr(getattr(node, "consensus", None), "halted", None)
    if reason:
        return str(reason)
    path = os.path.join(node.config.datadir, HALT_FILE)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read(500).strip() or "halted (HALTED file present)"
        except OSError:
            return "halted (HALTED file present)"
    return None


def _ready_peers(node: Any) -> int:
    p2p = getattr(node, "p2p", None)
    conns = getattr(p2p, "connections", None) or {}
    return sum(1 for c in list(conns.values()) if getattr(c, "state", "ready") == "ready")


def health_report(node: Any, now: float | None = None) -> dict[str, Any]:
    """``{"healthy": bool, "reasons": [...], ...}``: what ``GET /health`` and ``health`` answer."""
    now = time.time() if now is None else now
    store = node.store
    if store is None:
        return {"healthy": False, "status": "starting", "reasons": ["starting: the store is not open"]}
    tip = int(store.tip_height())
    last_ms = block_time_ms(node, tip)
    age = max(0.0, now - last_ms / 1000)
    bound = stall_bound(node.config)
    vs = store.validator_set(tip + 1)
    solo = vs is not None and len(vs) == 1 and node.key.address in vs
    peers = _ready_peers(node)
    syncing = _syncing(node, tip)
    reasons: list[str] = []
    halted = halted_reason(node)
    if halted:
        reasons.append(f"halted: {halted}")
    if syncing:
        reasons.append(f"syncing: at height {tip} of {_headers(node, tip)}")
    if age > bound:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last_ms / 1000))
        reasons.append(f"stalled since height {tip} at {at} ({age:.1f} s ago, bound {bound:.1f} s)")
    if peers == 0 and not solo:
        reasons.append("no peers")
    return {
        "healthy": not reasons,
        "status": "ok" if not reasons else "unhealthy",
        "reasons": reasons,
        "height": tip,
        "bestblockhash": store.tip_hash().hex(),
        "last_block_time": last_ms / 1000,
        "last_block_age_s": round(age, 3),
        "stall_bound_s": round(bound, 3),
        "syncing": syncing,
        "halted": halted,
        "peers": peers,
        "single_validator": solo,
    }


@TABLE.method("health",
              summary="Is the node synced and finalizing? The same report as GET /health (HTTP 200 or 503).",
              result="{healthy, status: ok|unhealthy|starting, reasons: [text], height, bestblockhash, "
                     "last_block_time, last_block_age_s, stall_bound_s, syncing, halted, peers, single_validator}",
              group="Control")
def health(ctx: RPCContext) -> dict[str, Any]:
    return health_report(ctx.node)
