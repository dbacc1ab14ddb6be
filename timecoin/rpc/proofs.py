"""RPC ``getfinalityproof``: a block's or a tx's finality as a proof anyone checks offline (``timecoin verify``).

The proof format and the trust walk are in :mod:`timecoin.ledger.proof`; this module only finds the
block the caller means (a height, a block hash, or a txid through the txindex) and maps failures to
bitcoind codes.
"""
from __future__ import annotations

import string
from typing import Any

from timecoin.ledger.proof import ProofBuildError, build_proof
from timecoin.rpc.errors import INVALID_ADDRESS_OR_KEY, INVALID_PARAMETER, INVALID_PARAMS, RPCError
from timecoin.rpc.registry import MAX_INT, TABLE, Param

_HEX = frozenset(string.hexdigits)


def _locate(store: Any, target: Any) -> tuple[int, bytes | None]:
    """(height, txid or None) of what ``target`` names; RPCError -32602 (malformed) or -5 (not found)."""
    if isinstance(target, int) and not isinstance(target, bool):
        if not 1 <= target <= MAX_INT:
            raise RPCError(INVALID_PARAMS, f"target out of range: height {target} (blocks start at height 1)")
        if target > store.tip_height():
            raise RPCError(INVALID_ADDRESS_OR_KEY, f"Block not found: no block at height {target} "
                                                   f"(the tip is {store.tip_height()})")
        return target, None
    if not isinstance(target, str) or len(target) != 64 or not _HEX.issuperset(target):
        raise RPCError(INVALID_PARAMS, "target must be a block height, or a block hash or txid (64 hex digits)")
    key = bytes.fromhex(target)
    height = store.height_of(key)
    if height is not None and height >= 1:
        return height, None
    where = store.tx_location(key)
    if where is not None:
        return where[0], key
    raise RPCError(INVALID_ADDRESS_OR_KEY, f"No block or transaction with hash {target}")


@TABLE.method(
    "getfinalityproof",
    Param("target", "any", "a block height (int), or a block hash or txid (64 hex digits; a block hash is tried "
                           "first)"),
    Param("trusted_height", "int", "height the verifier trusts: 0 = genesis, or a block height whose hash it "
                                   "holds (<= the block's height)", required=False, default=0),
    summary="A self-contained proof that a block (or a tx in it) is final, for `timecoin verify` or "
            "timecoin.ledger.proof.verify_proof.",
    result="object: {type, version, chain_id, genesis_hash, trusted, set_changes[], block{hash, header, "
           "certificate, validators[]}, tx{txid, raw, index, count, path[]} (for a txid)}",
    group="Blockchain",
    errors=("-5: no block at that height, no block or tx with that hash",
            "-8: trusted_height below 0 or above the block's height, or a set change no proof can cross"))
def getfinalityproof(ctx: Any, target: Any, trusted_height: int) -> dict[str, Any]:
    store = ctx.store
    height, txid = _locate(store, target)
    if not 0 <= trusted_height <= height:
        raise RPCError(INVALID_PARAMETER, f"trusted_height must be between 0 and the block's height {height}, "
                                          f"not {trusted_height}")
    try:
        return build_proof(store, height, txid, trusted_height)
    except ProofBuildError as exc:
        raise RPCError(INVALID_PARAMETER, str(exc)) from None
