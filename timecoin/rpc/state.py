"""Chain-state and consensus RPC methods: accounts, validators, consensus round, sync, tx finality, long polls.

Amounts are decimal TIME strings with 8 decimals (``"12.50000000"``, never floats: :func:`timecoin.rpc.render.amount`);
voting power stays an integer in units, as CometBFT shows it. Addresses are what the CLI prints
(``TIME1…`` mainnet, ``TIME0…`` testnet/devnet); anything else is bitcoind's -5 "Invalid address".

``waitfornewblock`` / ``waitforblockheight`` are bitcoind's long polls: a Deferred that fires with the
tip as soon as a block is committed (consensus ``on_commit``, which sync also fires for the blocks it
applies) and, as a fallback for anything else that moves the tip (a fork rollback), a poll of the store
every :data:`POLL_INTERVAL`; at the timeout it fires with the current tip. Cancelling it (the HTTP client
went away) removes its listener and timers.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from timecoin import crypto
from timecoin.consensus import proposer as prio
from timecoin.consensus.app import PRIORITIES_DB, ChainApp
from timecoin.errors import DecodeError, ValidationError
from timecoin.ledger.account import EMPTY_ACCOUNT
from timecoin.ledger.block import NIL_HASH, VoteType
from timecoin.rpc import render
from timecoin.rpc.context import RPCContext
from timecoin.rpc.errors import IN_WARMUP, INVALID_ADDRESS_OR_KEY, INVALID_PARAMETER, RPCError
from timecoin.rpc.registry import MAX_INT, TABLE, Param

POLL_INTERVAL = 0.5                # s between store polls of a long poll (commit callbacks answer sooner)
PRIORITY_WALK = 1_000             # heights getvalidators walks back to stored priorities (else it shows null)
MAX_WAIT_MS = 3_600_000            # a long poll's longest wait: timeout 0 ("none") and larger ones are capped


def parse_address(ctx: RPCContext, text: str) -> bytes:
    """The 20-byte address of ``text`` as the CLI prints it; -5 for anything else or another network's."""
    try:
        raw = crypto.decode_address(text.strip())
    except DecodeError as exc:
        raise RPCError(INVALID_ADDRESS_OR_KEY, f"Invalid address: {exc}") from None
    ours = "mainnet" if ctx.node.config.network == "mainnet" else "testnet"
    if crypto.address_network(text.strip()) != ours:
        raise RPCError(INVALID_ADDRESS_OR_KEY, f"Invalid address: a {crypto.address_network(text.strip())} "
                                               f"address, this node is on {ctx.node.config.network}")
    return raw


def _encode(ctx: RPCContext, address: bytes) -> str:
    return crypto.encode_address(address, ctx.node.config.network)


# -- accounts ------------------------------------------------------------------------------------------
@TABLE.method("getaccount", Param("address", "str", "an account address (TIME1… or TIME0…)"),
              summary="An account as the next block sees it: balance, nonces, stake and unbonding entries.",
              result="{address, exists, height, balance, nonce, next_nonce (counts this node's mempool), stake, "
                     "unbonding: [{amount, release_height}], jailed, pubkey (hex or null)}; amounts in TIME",
              group="State", errors=("-5: not an address of this network",))
def getaccount(ctx: RPCContext, address: str) -> dict[str, Any]:
    raw = parse_address(ctx, address)
    store = ctx.store
    tip = store.tip_height()
    stored = store.get_account(raw)
    acct = (stored or EMPTY_ACCOUNT).matured(tip + 1)
    mempool = ctx.node.mempool
    return {
        "address": _encode(ctx, raw),
        "exists": stored is not None,
        "height": tip,
        "balance": render.amount(acct.balance),
        "nonce": acct.nonce,
        "next_nonce": mempool.pending_nonce(raw) if mempool is not None else acct.nonce,
        "stake": render.amount(acct.stake),
        "unbonding": [{"amount": render.amount(a), "release_height": h} for a, h in acct.unbonding],
        "jailed": acct.jailed,
        "pubkey": acct.pubkey.hex() if acct.pubkey else None,
    }


@TABLE.method("getbalance", Param("address", "str", "an account address (TIME1… or TIME0…)"),
              summary="The spendable balance of an address (0 for an address never used).",
              result="amount in TIME (string, 8 decimals)", group="State",
              errors=("-5: not an address of this network",))
def getbalance(ctx: RPCContext, address: str) -> str:
    raw = parse_address(ctx, address)
    store = ctx.store
    acct = (store.get_account(raw) or EMPTY_ACCOUNT).matured(store.tip_height() + 1)
    return render.amount(acct.balance)


# -- validators and consensus --------------------------------------------------------------------------
def _app(ctx: RPCContext) -> Any:
    """The consensus ChainApp (its priority cache), or one over the store when consensus is not running."""
    consensus = getattr(ctx.node, "consensus", None)
    app = getattr(consensus, "app", None)
    if app is not None:
        return app
    genesis = ctx.node.genesis
    return ChainApp(ctx.store, genesis.params, None, genesis.genesis_time)


def _priorities_near(store: Any, height: int) -> bool:
    """Are priorities stored within PRIORITY_WALK heights below ``height``? After a long sync only the last
    synced height has them; recomputing an old height's from far back would hold the reactor for seconds."""
    for h in range(height, max(height - PRIORITY_WALK, 1), -1):
        if store.get(PRIORITIES_DB, h.to_bytes(8, "big")) is not None:
            return True
    return height - PRIORITY_WALK <= 1


@TABLE.method("getvalidators", Param("height", "int", "the height whose signers to show (default: the next block)",
                                     required=False, minimum=1),
              summary="The validator set of a height: address, PeerID, power, proposer priority, jailed.",
              result="{height, total_power, proposer (of round 0), validators: [{address, peer_id, pubkey, power "
                     "(units), stake (TIME), proposer_priority, jailed}]}",
              group="State", errors=("-8: a height with no known set (beyond the tip + 2)",))
def getvalidators(ctx: RPCContext, height: int | None) -> dict[str, Any]:
    store = ctx.store
    tip = store.tip_height()
    if height is None:
        height = tip + 1
    vs = store.validator_set(height) if height <= tip + 2 else None
    if vs is None:
        raise RPCError(INVALID_PARAMETER, f"Block height out of range: validator sets are known for 1..{tip + 2}")
    priorities: dict[bytes, int] = {}
    proposer: bytes | None = None
    if _priorities_near(store, height):
        with contextlib.suppress(ValidationError, ValueError):
            priorities = _app(ctx).priorities(height)
            proposer = prio.proposer_for(vs, priorities, 0)
    out = []
    for v in vs.validators:
        acct = store.get_account(v.address)
        out.append({"address": _encode(ctx, v.address), "peer_id": crypto.peer_id_of(v.pubkey),
                    "pubkey": v.pubkey.hex(), "power": v.power, "stake": render.amount(v.power),
                    "proposer_priority": priorities.get(v.address),
                    "jailed": bool(acct is not None and acct.jailed)})
    return {"height": height, "total_power": vs.total_power,
            "proposer": None if proposer is None else _encode(ctx, proposer), "validators": out}


def _vote_sets(ctx: RPCContext, engine: Any) -> list[dict[str, Any]]:
    votes = getattr(engine, "votes", None)
    if votes is None:
        return []
    out = []
    for (round_, vtype), vset in sorted(votes.sets.items()):
        by_block = {("nil" if h == NIL_HASH else h.hex()): p for h, p in vset.power_by_hash.items()}
        out.append({"round": round_, "type": VoteType(vtype).name.lower(), "validators": len(vset.votes),
                    "power": vset.power, "by_block": by_block, "quorum": vset.quorum_any()})
    return out


@TABLE.method("getconsensusinfo", summary="Where consensus is: height, round, step, proposer, votes seen, locks.",
              result="{height, round, step, proposer, proposer_peer_id, is_validator, total_power, quorum_power, "
                     "locked_round, locked_block, valid_round, valid_block, proposal_rounds, votes: [{round, type, "
                     "validators, power, by_block: {hash|nil: power}, quorum}], halted, committed_heights}",
              group="Consensus", errors=("-28: consensus not started",))
def getconsensusinfo(ctx: RPCContext) -> dict[str, Any]:
    consensus: Any = getattr(ctx.node, "consensus", None)
    engine = getattr(consensus, "engine", None)
    if engine is None or engine.height < 1:
        raise RPCError(IN_WARMUP, "Consensus is not running yet")
    height, round_ = engine.height, engine.round
    proposer: bytes | None = None
    with contextlib.suppress(ValidationError, ValueError):
        proposer = consensus.app.proposer(height, round_)
    vs = engine.validators
    locked = getattr(engine, "locked_value", None)
    valid = getattr(engine, "valid_value", None)
    return {
        "height": height, "round": round_, "step": engine.step.name.lower(),
        "proposer": None if proposer is None else _encode(ctx, proposer),
        "proposer_peer_id": (crypto.peer_id_of(vs.by_address[proposer].pubkey)
                             if proposer is not None and proposer in vs else None),
        "is_validator": engine.is_validator, "validators": len(vs), "total_power": vs.total_power,
        "quorum_power": vs.total_power * 2 // 3 + 1,
        "locked_round": getattr(engine, "locked_round", -1),
        "locked_block": None if locked is None else locked.hash.hex(),
        "valid_round": getattr(engine, "valid_round", -1),
        "valid_block": None if valid is None else valid.hash.hex(),
        "proposal_rounds": sorted(getattr(engine, "proposals", {})),
        "votes": _vote_sets(ctx, engine),
        "halted": consensus.halted, "committed_heights": consensus.committed_heights,
    }


@TABLE.method("getsyncstatus", summary="Block sync progress: syncing or not, height, target, rate, ETA, alerts.",
              result="{syncing, height, target, start_height, blocks, blocks_per_s, eta_s, peers, genesis_alert, "
                     "state_alert, halted, tip, last_result}",
              group="Consensus")
def getsyncstatus(ctx: RPCContext) -> dict[str, Any]:
    store = ctx.store
    sync = getattr(ctx.node, "sync", None)
    if sync is None:
        raise RPCError(IN_WARMUP, "Sync is not running")
    out = dict(sync.progress)
    out["tip"] = store.tip_height()
    last = sync.last_result
    out["last_result"] = None if last is None else {
        "start_height": last.start_height, "end_height": last.end_height, "target": last.target,
        "seconds": round(last.seconds, 3), "failed_ranges": last.failed_ranges,
        "fork_suspected": last.fork_suspected}
    return out


# -- transactions --------------------------------------------------------------------------------------
@TABLE.method("gettransactionfinality", Param("txid", "hex", "the transaction id", hex_bytes=32),
              summary="Is a transaction final? Its block if so, else whether this node's mempool holds it.",
              result="{txid, final: true, height, blockhash, index, confirmations} or {txid, final: false, "
                     "where: mempool|unknown}",
              group="State")
def gettransactionfinality(ctx: RPCContext, txid: str) -> dict[str, Any]:
    store = ctx.store
    raw = bytes.fromhex(txid)
    loc = store.tx_location(raw)
    if loc is not None:
        height, index = loc
        block_hash = store.block_hash_at(height)
        return {"txid": raw.hex(), "final": True, "height": height,
                "blockhash": None if block_hash is None else bytes(block_hash).hex(), "index": index,
                "confirmations": store.tip_height() - height + 1}
    mempool = ctx.node.mempool
    where = "mempool" if mempool is not None and raw in mempool else "unknown"
    return {"txid": raw.hex(), "final": False, "where": where}


# -- long polls ----------------------------------------------------------------------------------------
class _TipWaiter:
    """One long poll: fires ``d`` with the tip once ``done(tip height)`` holds, or at the deadline."""

    def __init__(self, ctx: RPCContext, done: Callable[[int], bool], timeout_ms: int) -> None:
        self.ctx = ctx
        self.done = done
        self.d: defer.Deferred[dict[str, Any]] = defer.Deferred(self._cancelled)
        self.listeners = getattr(getattr(ctx.node, "consensus", None), "on_commit", None)
        wait_ms = MAX_WAIT_MS if timeout_ms == 0 else min(timeout_ms, MAX_WAIT_MS)
        self.deadline = ctx.reactor.callLater(wait_ms / 1000.0, self._finish)
        self.poll = ctx.reactor.callLater(POLL_INTERVAL, self._poll)
        self.soon: Any = None
        if self.listeners is not None:
            self.listeners.append(self._on_commit)

    def _on_commit(self, block: Any) -> None:
        # Called while consensus iterates its listener list: check on the next turn, never remove here.
        if self.soon is None and not self.d.called:
            self.soon = self.ctx.reactor.callLater(0, self._check)

    def _check(self) -> None:
        self.soon = None
        store = self.ctx.node.store
        if store is None or self.done(store.tip_height()):      # the node stopping ends the wait with -28
            self._finish()

    def _poll(self) -> None:
        self._check()
        if not self.d.called:
            self.poll = self.ctx.reactor.callLater(POLL_INTERVAL, self._poll)

    def _cleanup(self) -> None:
        for call in (self.deadline, self.poll, self.soon):
            if call is not None and call.active():
                call.cancel()
        self.soon = None
        if self.listeners is not None and self._on_commit in self.listeners:
            self.listeners.remove(self._on_commit)

    def _finish(self) -> None:
        self._cleanup()
        if self.d.called:
            return
        store = self.ctx.node.store
        if store is None:
            self.d.errback(RPCError(IN_WARMUP, "Node is stopping: the store is closed"))
        else:
            self.d.callback(_tip(store))

    def _cancelled(self, _: Any) -> None:
        self._cleanup()


def _tip(store: Any) -> dict[str, Any]:
    return {"hash": bytes(store.tip_hash()).hex(), "height": store.tip_height()}


def _wait(ctx: RPCContext, done: Callable[[int], bool], timeout_ms: int) -> Any:
    store = ctx.store
    if done(store.tip_height()):
        return defer.succeed(_tip(store))
    return _TipWaiter(ctx, done, timeout_ms).d


_TIMEOUT = Param("timeout", "int", "milliseconds to wait at most (0: no timeout; capped at one hour)",
                 required=False, default=0, minimum=0, maximum=MAX_INT)


@TABLE.method("waitfornewblock", _TIMEOUT,
              summary="Wait for the next block to be committed (or the timeout); return the tip.",
              result="{hash, height}", group="Blockchain")
def waitfornewblock(ctx: RPCContext, timeout: int) -> Any:
    start = ctx.store.tip_height()
    return _TipWaiter(ctx, lambda tip: tip != start, timeout).d


@TABLE.method("waitforblockheight", Param("height", "int", "the height to wait for", minimum=0), _TIMEOUT,
              summary="Wait until the tip reaches a height (or the timeout); return the tip.",
              result="{hash, height}", group="Blockchain")
def waitforblockheight(ctx: RPCContext, height: int, timeout: int) -> Any:
    return _wait(ctx, lambda tip: tip >= height, timeout)
