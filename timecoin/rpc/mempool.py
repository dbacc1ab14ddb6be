"""Mempool RPC methods: getrawmempool, getmempoolinfo, getmempoolentry, sendrawtransaction, testmempoolaccept.

Rejections carry the mempool's reason (``timecoin.errors.Reason``, lower-cased, then the detail), with
bitcoind's codes split by kind:

* **-26** (policy: this node's limits, the same tx may pass later or elsewhere): ``fee_too_low``,
  ``mempool_full``, ``replacement_underpriced``, ``rate_limited``.
* **-25** (the chain's rules: the tx is wrong as it stands): ``bad_nonce``, ``insufficient_funds``,
  ``bad_signature``, ``bad_amount``, ``wrong_chain``, ``malformed`` and the rest.
* **-27**: the txid is already in the tx index (committed).
* A tx already in the mempool is *not* an error for sendrawtransaction: as bitcoind does, it returns the
  txid and relays it again (a wallet resending after a timeout must not see a failure).

Fees in getmempoolinfo are absolute per-tx amounts (Timecoin has a minimum fee, not a fee rate).
"""
from __future__ import annotations

import copy
from typing import Any

from timecoin.errors import Reason, ValidationError
from timecoin.ledger.tx import Transaction
from timecoin.mempool import Mempool
from timecoin.rpc import render
from timecoin.rpc.chain import decode_tx, hash_param, network
from timecoin.rpc.context import RPCContext
from timecoin.rpc.errors import (
    IN_WARMUP,
    INVALID_ADDRESS_OR_KEY,
    INVALID_PARAMS,
    VERIFY_ALREADY_IN_CHAIN,
    VERIFY_ERROR,
    VERIFY_REJECTED,
    RPCError,
)
from timecoin.rpc.registry import TABLE, Param

GROUP = "Mempool"
POLICY_REASONS = frozenset({Reason.FEE_TOO_LOW, Reason.MEMPOOL_FULL, Reason.REPLACEMENT_UNDERPRICED,
                            Reason.RATE_LIMITED})
MAX_TEST_TXS = 25              # bitcoind's package limit for testmempoolaccept


def reject_code(reason: Reason) -> int:
    """-26 for this node's policy, -25 for a tx that breaks the chain's rules (module docstring)."""
    return VERIFY_REJECTED if reason in POLICY_REASONS else VERIFY_ERROR


def _pool(ctx: RPCContext) -> Mempool:
    ctx.store                                   # noqa: B018 - raises -28 while the node starts or stops
    pool = ctx.node.mempool
    if pool is None:
        raise RPCError(IN_WARMUP, "Node is starting or stopping: the mempool is not ready")
    return pool


class _Chains:
    """Per sender: the pending nonces (one pass over the pool), for ancestor/descendant counts."""

    def __init__(self, pool: Mempool) -> None:
        self.by_nonce: dict[tuple[bytes, int], bytes] = {}
        self.span: dict[bytes, tuple[int, int]] = {}
        for txid in pool.txids():
            tx = pool.get(txid)
            if tx is None:
                continue
            addr = tx.sender_address
            self.by_nonce[(addr, tx.nonce)] = txid
            low, high = self.span.get(addr, (tx.nonce, tx.nonce))
            self.span[addr] = (min(low, tx.nonce), max(high, tx.nonce))

    def entry(self, tx: Transaction, net: str) -> dict[str, Any]:
        addr = tx.sender_address
        low, high = self.span.get(addr, (tx.nonce, tx.nonce))
        parent = self.by_nonce.get((addr, tx.nonce - 1))
        return {"size": tx.size, "vsize": tx.size, "fee": render.amount(tx.fee),
                "fees": {"base": render.amount(tx.fee)}, "kind": tx.kind.name.lower(),
                "from": render.address(tx.sender_address, net), "nonce": tx.nonce,
                "amount": render.amount(tx.amount), "to": render.recipient(tx, net),
                "ancestorcount": tx.nonce - low + 1, "descendantcount": high - tx.nonce + 1,
                "depends": [parent.hex()] if parent is not None else []}


@TABLE.method(
    "getrawmempool",
    Param("verbose", "bool", "true: an object of entries by txid; false: a list of txids", required=False,
          default=False),
    summary="Every txid in the mempool, in arrival order (or their entries).",
    result="[txid, ...], or {txid: entry} with entry as getmempoolentry's",
    group=GROUP,
)
def getrawmempool(ctx: RPCContext, verbose: bool) -> Any:
    pool = _pool(ctx)
    if not verbose:
        return [t.hex() for t in pool.txids()]
    chains, net = _Chains(pool), network(ctx)
    out: dict[str, Any] = {}
    for txid in pool.txids():
        tx = pool.get(txid)
        if tx is not None:
            out[txid.hex()] = chains.entry(tx, net)
    return out


@TABLE.method(
    "getmempoolinfo",
    summary="The mempool's size, bytes, total fees, caps and fee floor.",
    result="{loaded, size, bytes, usage, total_fee, maxmempool (bytes), maxtxs, mempoolminfee (the lowest fee "
           "accepted now), minrelaytxfee (this node's relay minimum)} -- fees are per-tx amounts, not rates",
    group=GROUP,
)
def getmempoolinfo(ctx: RPCContext) -> dict[str, Any]:
    pool = _pool(ctx)
    total = 0
    for txid in pool.txids():
        tx = pool.get(txid)
        total += tx.fee if tx is not None else 0
    return {"loaded": True, "size": len(pool), "bytes": pool.size_bytes, "usage": pool.size_bytes,
            "total_fee": render.amount(total), "maxmempool": pool.max_bytes, "maxtxs": pool.max_txs,
            "mempoolminfee": render.amount(pool.fee_floor), "minrelaytxfee": render.amount(pool.min_relay_fee)}


@TABLE.method(
    "getmempoolentry",
    hash_param("txid", "the transaction id"),
    summary="One mempool transaction's entry.",
    result="{size, vsize, fee, fees {base}, kind, from, nonce, amount, to, ancestorcount, descendantcount "
           "(pending txs of the same sender before/after it, itself included), depends [txid of the sender's "
           "previous pending tx]}",
    group=GROUP,
    errors=("-5: Transaction not in mempool",),
)
def getmempoolentry(ctx: RPCContext, txid: str) -> dict[str, Any]:
    pool = _pool(ctx)
    tx = pool.get(bytes.fromhex(txid))
    if tx is None:
        raise RPCError(INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
    return _Chains(pool).entry(tx, network(ctx))


@TABLE.method(
    "sendrawtransaction",
    Param("hexstring", "hex", "the signed, encoded transaction"),
    summary="Submit a transaction to the mempool and relay it to peers.",
    result="the txid (hex); also for a tx already in the mempool, which is relayed again",
    group=GROUP,
    errors=("-22: TX decode failed", "-25: rejected by the chain's rules (reason: detail)",
            "-26: rejected by this node's policy (reason: detail)", "-27: Transaction already in block chain"),
)
def sendrawtransaction(ctx: RPCContext, hexstring: str) -> str:
    tx = decode_tx(hexstring)
    pool = _pool(ctx)
    if ctx.store.tx_location(tx.id) is not None:
        raise RPCError(VERIFY_ALREADY_IN_CHAIN, "Transaction already in block chain")
    try:
        pool.add(tx)
    except ValidationError as exc:
        if exc.reason != Reason.DUPLICATE:
            raise RPCError(reject_code(exc.reason), str(exc)) from None
    p2p = ctx.node.p2p
    if p2p is not None and p2p.running:
        p2p.broadcast(tx)
    return tx.id.hex()


def scratch_copy(pool: Mempool) -> Mempool:
    """A copy of ``pool`` to try admissions on: its containers are copied (one level), the state shared.

    Admission only replaces entries and rebinds counters, so a copy of every dict (with list values
    copied) and list is enough for the original to stay as it was whatever the copy admits or evicts.
    """
    clone = copy.copy(pool)
    for name, value in vars(pool).items():
        if isinstance(value, dict):
            setattr(clone, name, {k: list(v) if isinstance(v, list) else v for k, v in value.items()})
        elif isinstance(value, list):
            setattr(clone, name, list(value))
    return clone


@TABLE.method(
    "testmempoolaccept",
    Param("rawtxs", "array", f"hex strings of encoded txs (1 to {MAX_TEST_TXS}), judged in order, each seeing "
                             "the ones accepted before it (a sender's consecutive nonces)"),
    summary="Would the mempool accept these transactions? Nothing is inserted or relayed.",
    result="[{txid, wtxid, allowed: true, vsize, fees {base}} or {txid, wtxid, allowed: false, reject-reason "
           "(the reason's name, e.g. bad_nonce, or duplicate / already_in_chain), reject-details}]",
    group=GROUP,
    errors=("-22: TX decode failed (any of them)",),
)
def testmempoolaccept(ctx: RPCContext, rawtxs: list[Any]) -> list[dict[str, Any]]:
    if not 1 <= len(rawtxs) <= MAX_TEST_TXS:
        raise RPCError(INVALID_PARAMS, f"rawtxs must hold 1 to {MAX_TEST_TXS} transactions, not {len(rawtxs)}")
    txs: list[Transaction] = []
    for i, item in enumerate(rawtxs):
        Param(f"rawtxs[{i}]", "hex", "a tx").check(item)
        txs.append(decode_tx(item, f" (rawtxs[{i}])"))
    pool, store = _pool(ctx), ctx.store
    trial = scratch_copy(pool)
    out: list[dict[str, Any]] = []
    for tx in txs:
        row: dict[str, Any] = {"txid": tx.id.hex(), "wtxid": tx.id.hex()}
        if store.tx_location(tx.id) is not None:
            row.update({"allowed": False, "reject-reason": "already_in_chain",
                        "reject-details": "Transaction already in block chain"})
        else:
            try:
                trial.add(tx)
            except ValidationError as exc:
                row.update({"allowed": False, "reject-reason": exc.reason.name.lower(), "reject-details": str(exc)})
            else:
                row.update({"allowed": True, "vsize": tx.size, "fees": {"base": render.amount(tx.fee)}})
        out.append(row)
    return out
