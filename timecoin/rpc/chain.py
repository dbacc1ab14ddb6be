"""Blockchain RPC methods: getblock, getblockheader, getrawtransaction, decoderawtransaction (bitcoind names).

Every block in the store is final (there are no stale branches), so a block's ``confirmations`` is simply
``tip height - height + 1``. The genesis is not a block (no header, no certificate): its hash resolves to
height 0 and JSON forms describe it; its hex forms are refused (-8), as there are no bytes to show.
JSON conventions (amounts as "12.50000000" strings, addresses, times): :mod:`timecoin.rpc.render`.
"""
from __future__ import annotations

from typing import Any

from timecoin.errors import DecodeError
from timecoin.ledger.block import Block
from timecoin.ledger.tx import Transaction
from timecoin.rpc import render
from timecoin.rpc.context import RPCContext
from timecoin.rpc.errors import (
    DESERIALIZATION_ERROR,
    INVALID_ADDRESS_OR_KEY,
    INVALID_PARAMETER,
    INVALID_PARAMS,
    RPCError,
)
from timecoin.rpc.registry import TABLE, Param

GROUP = "Blockchain"


def hash_param(name: str, doc: str, required: bool = True) -> Param:
    """A 32-byte hash or txid in hex (64 digits)."""
    return Param(name, "hex", doc, required=required, hex_bytes=32)


def network(ctx: RPCContext) -> str:
    return str(ctx.node.config.network)


def decode_tx(hexstring: str, which: str = "") -> Transaction:
    """A tx from hex, or RPCError(-22) saying why it does not decode (the parameter is already hex).

    ``which`` names the tx in the message when a call carries several (" (rawtxs[3])").
    """
    try:
        return Transaction.decode(bytes.fromhex(hexstring))
    except DecodeError as exc:
        raise RPCError(DESERIALIZATION_ERROR, f"TX decode failed{which}: {exc}") from None


def _height_of(ctx: RPCContext, blockhash: str) -> int:
    height = ctx.store.height_of(bytes.fromhex(blockhash))
    if height is None:
        raise RPCError(INVALID_ADDRESS_OR_KEY, "Block not found")
    return int(height)


def _block_at(ctx: RPCContext, height: int) -> Block:
    block = ctx.store.get_block(height)
    if block is None:                          # rolled back between the two reads: gone
        raise RPCError(INVALID_ADDRESS_OR_KEY, "Block not found")
    return block


def _genesis_json(ctx: RPCContext, tip: int) -> dict[str, Any]:
    genesis = ctx.node.genesis
    out: dict[str, Any] = {"hash": genesis.hash.hex(), "confirmations": render.confirmations(0, tip), "height": 0,
                           "time": genesis.genesis_time // 1000, "time_ms": genesis.genesis_time, "nTx": 0,
                           "tx": [], "chain_id": genesis.chain_id, "genesis": True}
    nxt = ctx.store.block_hash_at(1)
    if nxt is not None:
        out["nextblockhash"] = nxt.hex()
    return out


def _no_genesis_bytes() -> RPCError:
    return RPCError(INVALID_PARAMETER, "The genesis is not a block: it has no encoding (use verbose JSON or "
                                       "the genesis.json file)")


@TABLE.method(
    "getblock",
    hash_param("blockhash", "the block's hash"),
    Param("verbosity", "int", "0: hex of the encoded block, 1: JSON with txids, 2: JSON with decoded txs",
          required=False, default=1, minimum=0, maximum=2),
    summary="A block by hash: its encoding in hex, or JSON with its txs, proposer, round, state root and commit "
            "certificate.",
    result="verbosity 0: hex string; 1/2: {hash, confirmations, height, version, merkleroot, time, time_ms, nTx, "
           "previousblockhash, nextblockhash (absent at the tip), proposer, round, state_root, validators_hash, "
           "evidence_root, size, tx (txids, or decoded txs at verbosity 2), evidence, commit {height, round, "
           "block_hash, signatures [{validator, validator_hex, signature}]}}",
    group=GROUP,
    errors=("-5: Block not found", "-8: verbosity 0 for the genesis (it has no block encoding)"),
)
def getblock(ctx: RPCContext, blockhash: str, verbosity: int) -> Any:
    height = _height_of(ctx, blockhash)
    if height == 0:
        if verbosity == 0:
            raise _no_genesis_bytes()
        return _genesis_json(ctx, ctx.store.tip_height())
    if verbosity == 0:
        raw = ctx.store.get_block_bytes(height)
        if raw is None:
            raise RPCError(INVALID_ADDRESS_OR_KEY, "Block not found")
        return bytes(raw).hex()
    view = ctx.store.block_view(height)        # block, certificate, tip and next hash from one snapshot
    if view is None:                           # rolled back between the two reads: gone
        raise RPCError(INVALID_ADDRESS_OR_KEY, "Block not found")
    block, cert, tip, next_hash = view
    return render.block_json(block, cert, network(ctx), tip=tip, next_hash=next_hash, verbosity=verbosity)


@TABLE.method(
    "getblockheader",
    hash_param("blockhash", "the block's hash"),
    Param("verbose", "bool", "true: JSON, false: hex of the encoded header", required=False, default=True),
    summary="A block's header by hash: JSON, or its encoding in hex (the block hash is its SHA-256).",
    result="verbose: {hash, confirmations, height, version, merkleroot, time, time_ms, nTx, previousblockhash, "
           "nextblockhash (absent at the tip), proposer, round, state_root, validators_hash, evidence_root}; "
           "else a hex string",
    group=GROUP,
    errors=("-5: Block not found", "-8: verbose=false for the genesis (it has no header encoding)"),
)
def getblockheader(ctx: RPCContext, blockhash: str, verbose: bool) -> Any:
    height = _height_of(ctx, blockhash)
    store = ctx.store
    if height == 0:
        if not verbose:
            raise _no_genesis_bytes()
        out = _genesis_json(ctx, store.tip_height())
        del out["tx"]
        return out
    block = _block_at(ctx, height)
    if not verbose:
        return block.header.encoded.hex()
    return render.header_json(block.header, network(ctx), tip=store.tip_height(), n_tx=len(block.txs),
                              next_hash=store.block_hash_at(height + 1))


def _verbose_flag(value: Any) -> bool:
    """bitcoind takes true/false or a verbosity number; 2 adds nothing here (fees are always shown)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1, 2):
        return value != 0
    raise RPCError(INVALID_PARAMS, "verbose must be true, false, 0, 1 or 2")


@TABLE.method(
    "getrawtransaction",
    hash_param("txid", "the transaction id"),
    Param("verbose", "any", "false/0: hex; true/1/2: JSON", required=False, default=False),
    hash_param("blockhash", "look only in this block", required=False),
    summary="A transaction from the mempool or, through the tx index, from the chain.",
    result="verbose false: hex string; true: decoderawtransaction's JSON plus hex and, for a committed tx, "
           "blockhash, height, confirmations, time, blocktime (a mempool tx has none of these)",
    group=GROUP,
    errors=("-5: No such mempool or blockchain transaction", "-5: Block hash not found",
            "-5: No such transaction found in the provided block"),
)
def getrawtransaction(ctx: RPCContext, txid: str, verbose: Any, blockhash: str | None) -> Any:
    as_json = _verbose_flag(verbose)
    store, key = ctx.store, bytes.fromhex(txid)
    if blockhash is not None:
        wanted = _height_of(ctx, blockhash)
        where = store.tx_location(key)
        if where is None or where[0] != wanted:
            raise RPCError(INVALID_ADDRESS_OR_KEY, "No such transaction found in the provided block")
    else:
        pool = ctx.node.mempool
        tx = pool.get(key) if pool is not None else None
        if tx is not None:
            return _tx_reply(ctx, tx, as_json)
        where = store.tx_location(key)
        if where is None:
            raise RPCError(INVALID_ADDRESS_OR_KEY, "No such mempool or blockchain transaction")
    height, index = where
    block = _block_at(ctx, height)
    if index >= len(block.txs) or block.txs[index].id != key:
        raise RPCError(INVALID_ADDRESS_OR_KEY, "No such mempool or blockchain transaction")
    tx = block.txs[index]
    out = _tx_reply(ctx, tx, as_json)
    if as_json:
        out.update(render.tx_position(height, block.hash, block.header.timestamp, store.tip_height()))
    return out


def _tx_reply(ctx: RPCContext, tx: Transaction, as_json: bool) -> Any:
    if not as_json:
        return tx.encoded.hex()
    out = render.tx_json(tx, network(ctx))
    out["hex"] = tx.encoded.hex()
    return out


@TABLE.method(
    "decoderawtransaction",
    Param("hexstring", "hex", "the encoded transaction"),
    summary="Decode a transaction without checking it against the chain or its signature.",
    result="{txid, hash, size, kind (transfer|stake|unstake), chain_id, from, sender_pubkey, nonce, fee, amount, "
           "to (null unless a transfer), signature}",
    group=GROUP,
    errors=("-22: TX decode failed",),
)
def decoderawtransaction(ctx: RPCContext, hexstring: str) -> dict[str, Any]:
    return render.tx_json(decode_tx(hexstring), network(ctx))

