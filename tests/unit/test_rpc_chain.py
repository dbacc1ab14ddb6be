"""Blockchain RPC methods over a real node: a certified chain with txs in LMDB, handlers called through TABLE.

Checked: getblock at every verbosity (the commit certificate in its JSON re-verifies), getblockheader,
getrawtransaction through the tx index and the mempool, decoderawtransaction; and every bad call (unknown
hash, malformed or wrong-length hex, out-of-range verbosity, undecodable tx) gets its code, never -32603.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor

from tests.chaingen import ChainBuilder, ChainSpec, make_genesis
from timecoin import crypto
from timecoin.config import build_config
from timecoin.ledger.block import Block, CommitCertificate, Header, verify_certificate
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.node import Node, build_node
from timecoin.rpc import render
from timecoin.rpc.context import RPCContext
from timecoin.rpc.errors import (
    DESERIALIZATION_ERROR,
    IN_WARMUP,
    INVALID_ADDRESS_OR_KEY,
    INVALID_PARAMETER,
    INVALID_PARAMS,
    RPCError,
)
from timecoin.rpc.methods import TABLE
from timecoin.store import Store

BLOCKS = 6
TXS_PER_BLOCK = 3


@dataclass
class World:
    """A node on a pre-built certified chain, its store open (no consensus or P2P running)."""

    node: Node
    spec: ChainSpec
    ctx: RPCContext

    @property
    def store(self) -> Store:
        assert self.node.store is not None
        return self.node.store

    def call(self, name: str, params: Any = None) -> Any:
        return TABLE.call(self.ctx, name, params)

    def error(self, name: str, params: Any) -> RPCError:
        with pytest.raises(RPCError) as info:
            self.call(name, params)
        return info.value

    def transfer(self, sender: int = 0, nonce_offset: int = 0, fee: int | None = None, amount: int = 5,
                 to: int = 1) -> Transaction:
        """A signed transfer from funded key ``sender`` at its committed nonce + ``nonce_offset``."""
        key, dest = self.spec.keys[sender], self.spec.keys[to]
        account = self.store.get_account(key.address)
        nonce = (account.nonce if account else 0) + nonce_offset
        return Transaction.create(key, TxKind.TRANSFER, self.spec.genesis.chain_id, nonce,
                                  self.spec.genesis.params.min_fee if fee is None else fee, amount, dest.address)


def make_world(base: Path, blocks: int = BLOCKS, txs_per_block: int = TXS_PER_BLOCK, **config: str) -> World:
    spec = make_genesis(validators=4, funded=2)
    cfg = build_config({"datadir": str(base / "node"), **config})
    builder = ChainBuilder(Store(str(base / "node" / "chain")), spec)
    builder.build(blocks, txs_per_block)
    builder.store.close()
    node = build_node(cfg, spec.validators[0], spec.genesis, reactor)
    node.getServiceNamed("store").startService()
    return World(node, spec, RPCContext(node, reactor, 0.0))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path)
    try:
        yield w
    finally:
        w.node.getServiceNamed("store").stopService()


def hash_at(w: World, height: int) -> str:
    h = w.store.block_hash_at(height)
    assert h is not None
    return h.hex()


# -- getblock -------------------------------------------------------------------------------------------
def test_getblock_verbosity_0_is_the_stored_encoding(world: World) -> None:
    raw = world.call("getblock", [hash_at(world, 3), 0])
    block = Block.decode(bytes.fromhex(raw))
    assert block.height == 3 and block.hash.hex() == hash_at(world, 3) and len(block.txs) == TXS_PER_BLOCK


def test_getblock_json_has_bitcoind_fields_and_ours_and_a_commit_that_verifies(world: World) -> None:
    out = world.call("getblock", [hash_at(world, 2)])            # default verbosity 1
    block = world.store.get_block(2)
    assert block is not None
    assert out["hash"] == block.hash.hex() and out["height"] == 2
    assert out["confirmations"] == BLOCKS - 2 + 1
    assert out["time"] == block.header.timestamp // 1000 and out["time_ms"] == block.header.timestamp
    assert out["previousblockhash"] == hash_at(world, 1) and out["nextblockhash"] == hash_at(world, 3)
    assert out["tx"] == [t.id.hex() for t in block.txs] and out["nTx"] == TXS_PER_BLOCK
    assert out["size"] == block.size and out["round"] == 0 and out["version"] == block.header.version
    assert out["state_root"] == block.header.state_root.hex() and out["merkleroot"] == block.header.tx_root.hex()
    assert out["proposer"] == crypto.encode_address(block.header.proposer, "devnet")
    assert out["proposer"].startswith("TIME0") and out["evidence"] == []
    commit = out["commit"]
    assert commit["round"] == 0 and commit["block_hash"] == block.hash.hex() and commit["height"] == 2
    validators = {crypto.encode_address(k.address, "devnet") for k in world.spec.validators}
    assert {s["validator"] for s in commit["signatures"]} == validators
    # A third party can rebuild the certificate from the JSON alone and check it.
    cert = CommitCertificate(commit["height"], commit["round"], bytes.fromhex(commit["block_hash"]),
                             tuple((crypto.decode_address(s["validator"]), bytes.fromhex(s["signature"]))
                                   for s in commit["signatures"]))
    vs = world.store.validator_set(2)
    assert vs is not None
    verify_certificate(block, cert, vs, world.spec.genesis.chain_id)


def test_getblock_verbosity_2_decodes_txs_with_amounts_as_time_strings(world: World) -> None:
    out = world.call("getblock", {"blockhash": hash_at(world, 4), "verbosity": 2})
    block = world.store.get_block(4)
    assert block is not None
    assert [t["txid"] for t in out["tx"]] == [t.id.hex() for t in block.txs]
    first, tx = out["tx"][0], block.txs[0]
    assert first["kind"] == "transfer" and first["nonce"] == tx.nonce
    assert first["amount"] == "0.00000001" and first["fee"] == "0.00001000"
    assert first["from"] == crypto.encode_address(tx.sender_address, "devnet")
    assert first["to"] == crypto.encode_address(tx.recipient, "devnet")


def test_getblock_at_the_tip_has_one_confirmation_and_no_next_hash(world: World) -> None:
    out = world.call("getblock", [hash_at(world, BLOCKS)])
    assert out["confirmations"] == 1 and "nextblockhash" not in out
    assert world.call("getblock", [hash_at(world, BLOCKS).upper()]) == out      # hex digits in either case


def test_getblock_of_the_genesis_describes_it_but_has_no_hex(world: World) -> None:
    genesis = world.spec.genesis
    out = world.call("getblock", [genesis.hash.hex()])
    assert out["height"] == 0 and out["genesis"] is True and out["tx"] == []
    assert out["confirmations"] == BLOCKS + 1 and out["nextblockhash"] == hash_at(world, 1)
    assert out["time"] == genesis.genesis_time // 1000 and "previousblockhash" not in out
    assert world.error("getblock", [genesis.hash.hex(), 0]).code == INVALID_PARAMETER
    assert world.error("getblockheader", [genesis.hash.hex(), False]).code == INVALID_PARAMETER
    header = world.call("getblockheader", [genesis.hash.hex()])
    assert header["height"] == 0 and "tx" not in header


@pytest.mark.parametrize(("params", "code", "says"), [
    (["ab" * 32], INVALID_ADDRESS_OR_KEY, "Block not found"),
    (["ab" * 31], INVALID_PARAMS, "must be 32 bytes"),
    (["ab" * 33], INVALID_PARAMS, "must be 32 bytes"),
    (["zz" * 32], INVALID_PARAMS, "must be hex"),
    (["a" * 63], INVALID_PARAMS, "must be hex"),
    ([""], INVALID_PARAMS, "must be 32 bytes"),
    ([12], INVALID_PARAMS, "must be a string"),
    ([None], INVALID_PARAMS, "missing parameter blockhash"),
    ([], INVALID_PARAMS, "missing parameter blockhash"),
    (["TIP", 3], INVALID_PARAMS, "verbosity out of range"),
    (["TIP", -1], INVALID_PARAMS, "verbosity out of range"),
    (["TIP", 1 << 80], INVALID_PARAMS, "verbosity out of range"),
    (["TIP", "1"], INVALID_PARAMS, "verbosity must be an integer"),
    (["TIP", True], INVALID_PARAMS, "verbosity must be an integer"),
    (["TIP", 1.5], INVALID_PARAMS, "verbosity must be an integer"),
    (["TIP", 1, 2], INVALID_PARAMS, "at most 2 parameters"),
])
def test_getblock_bad_params(world: World, params: list[Any], code: int, says: str) -> None:
    params = [hash_at(world, BLOCKS) if p == "TIP" else p for p in params]
    err = world.error("getblock", params)
    assert err.code == code and says in err.message, err.message


def test_getblock_while_the_store_is_closed_is_warming_up(tmp_path: Path) -> None:
    w = make_world(tmp_path, blocks=1, txs_per_block=0)
    tip = hash_at(w, 1)
    w.node.getServiceNamed("store").stopService()
    assert w.error("getblock", [tip]).code == IN_WARMUP
    assert w.error("getrawtransaction", [tip]).code == IN_WARMUP


# -- getblockheader -------------------------------------------------------------------------------------
def test_getblockheader_json_matches_getblock_without_the_body(world: World) -> None:
    block = world.call("getblock", [hash_at(world, 3)])
    header = world.call("getblockheader", [hash_at(world, 3)])
    assert header == {k: v for k, v in block.items() if k not in ("size", "tx", "evidence", "commit")}


def test_getblockheader_hex_hashes_to_the_block_hash(world: World) -> None:
    raw = bytes.fromhex(world.call("getblockheader", [hash_at(world, 5), False]))
    assert hashlib.sha256(raw).hexdigest() == hash_at(world, 5)
    stored = world.store.get_block(5)
    assert stored is not None and raw == stored.header.encoded
    assert isinstance(stored.header, Header)


@pytest.mark.parametrize(("params", "code", "says"), [
    (["cd" * 32], INVALID_ADDRESS_OR_KEY, "Block not found"),
    (["cd" * 16], INVALID_PARAMS, "must be 32 bytes"),
    (["TIP", 0], INVALID_PARAMS, "verbose must be true or false"),
    (["TIP", "false"], INVALID_PARAMS, "verbose must be true or false"),
    ([{"h": 1}], INVALID_PARAMS, "must be a string"),
])
def test_getblockheader_bad_params(world: World, params: list[Any], code: int, says: str) -> None:
    params = [hash_at(world, BLOCKS) if p == "TIP" else p for p in params]
    err = world.error("getblockheader", params)
    assert err.code == code and says in err.message, err.message


# -- getrawtransaction ----------------------------------------------------------------------------------
def test_getrawtransaction_finds_committed_txs_through_the_txindex(world: World) -> None:
    block = world.store.get_block(4)
    assert block is not None
    for tx in block.txs:
        assert world.call("getrawtransaction", [tx.id.hex()]) == tx.encoded.hex()
    tx = block.txs[1]
    out = world.call("getrawtransaction", [tx.id.hex(), True])
    assert out["txid"] == tx.id.hex() and out["hex"] == tx.encoded.hex() and out["nonce"] == tx.nonce
    assert out["blockhash"] == block.hash.hex() and out["height"] == 4
    assert out["confirmations"] == BLOCKS - 4 + 1 and out["blocktime"] == block.header.timestamp // 1000
    assert world.call("getrawtransaction", [tx.id.hex(), 2]) == out
    assert world.call("getrawtransaction", [tx.id.hex(), 0]) == tx.encoded.hex()
    assert world.call("getrawtransaction", [tx.id.hex(), 1, block.hash.hex()]) == out


def test_getrawtransaction_finds_mempool_txs_without_a_block_position(world: World) -> None:
    tx = world.transfer()
    assert world.node.mempool is not None
    world.node.mempool.add(tx)
    assert world.call("getrawtransaction", [tx.id.hex()]) == tx.encoded.hex()
    out = world.call("getrawtransaction", {"txid": tx.id.hex(), "verbose": True})
    assert out["txid"] == tx.id.hex() and out["amount"] == "0.00000005"
    assert "blockhash" not in out and "confirmations" not in out


def test_getrawtransaction_with_a_block_looks_only_there(world: World) -> None:
    block = world.store.get_block(2)
    assert block is not None
    tx = block.txs[0]
    err = world.error("getrawtransaction", [tx.id.hex(), False, hash_at(world, 3)])
    assert err.code == INVALID_ADDRESS_OR_KEY and "provided block" in err.message
    err = world.error("getrawtransaction", [tx.id.hex(), False, "ef" * 32])
    assert err.code == INVALID_ADDRESS_OR_KEY and "Block not found" in err.message


@pytest.mark.parametrize(("params", "code", "says"), [
    (["ab" * 32], INVALID_ADDRESS_OR_KEY, "No such mempool or blockchain transaction"),
    (["ab" * 32, True], INVALID_ADDRESS_OR_KEY, "No such mempool or blockchain transaction"),
    (["ab" * 20], INVALID_PARAMS, "must be 32 bytes"),
    (["xy" * 32], INVALID_PARAMS, "must be hex"),
    ([7], INVALID_PARAMS, "must be a string"),
    (["ab" * 32, 3], INVALID_PARAMS, "verbose must be true, false, 0, 1 or 2"),
    (["ab" * 32, -1], INVALID_PARAMS, "verbose must be true, false, 0, 1 or 2"),
    (["ab" * 32, 1 << 70], INVALID_PARAMS, "verbose must be true, false, 0, 1 or 2"),
    (["ab" * 32, "yes"], INVALID_PARAMS, "verbose must be true, false, 0, 1 or 2"),
    (["ab" * 32, 1.0], INVALID_PARAMS, "verbose must be true, false, 0, 1 or 2"),
    (["ab" * 32, True, "ab"], INVALID_PARAMS, "must be 32 bytes"),
])
def test_getrawtransaction_bad_params(world: World, params: list[Any], code: int, says: str) -> None:
    err = world.error("getrawtransaction", params)
    assert err.code == code and says in err.message, err.message


# -- decoderawtransaction -------------------------------------------------------------------------------
def test_decoderawtransaction_shows_every_field(world: World) -> None:
    tx = world.transfer(fee=2_500, amount=1_250_000_000)
    out = world.call("decoderawtransaction", [tx.encoded.hex()])
    assert out == render.tx_json(tx, "devnet")
    assert out["amount"] == "12.50000000" and out["fee"] == "0.00002500" and out["size"] == tx.size
    assert out["sender_pubkey"] == world.spec.keys[0].public_key.hex() and out["signature"] == tx.signature.hex()
    stake = Transaction.create(world.spec.keys[0], TxKind.STAKE, "timecoin-chaingen", 0, 1000, 10)
    decoded = world.call("decoderawtransaction", [stake.encoded.hex()])
    assert decoded["kind"] == "stake" and decoded["to"] is None


def test_decoderawtransaction_does_not_check_the_signature(world: World) -> None:
    tx = world.transfer()
    forged = replace(tx, signature=bytes(64))
    assert world.call("decoderawtransaction", [forged.encoded.hex()])["txid"] == forged.id.hex()


def undecodable(w: World) -> list[str]:
    good = w.transfer().encoded
    bad_kind = bytearray(good)
    bad_kind[0] = 9                                   # no such tx kind
    return ["", "00", good[:-1].hex(), (good + b"\x00").hex(), bytes(bad_kind).hex(), "ff" * 300]


def test_decoderawtransaction_of_junk_is_a_deserialization_error(world: World) -> None:
    for raw in undecodable(world):
        err = world.error("decoderawtransaction", [raw])
        assert err.code == DESERIALIZATION_ERROR and err.message.startswith("TX decode failed"), raw


@pytest.mark.parametrize(("params", "says"), [
    (["abc"], "must be hex"), (["0g"], "must be hex"), ([5], "must be a string"), ([["00"]], "must be a string"),
    ([], "missing parameter hexstring"),
])
def test_decoderawtransaction_bad_params(world: World, params: list[Any], says: str) -> None:
    err = world.error("decoderawtransaction", params)
    assert err.code == INVALID_PARAMS and says in err.message, err.message


# -- render ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("units", "text"), [
    (0, "0.00000000"), (1, "0.00000001"), (1_250_000_000, "12.50000000"), (10**8, "1.00000000"),
    (2**64 - 1, "184467440737.09551615"), (-5, "-0.00000005"),
])
def test_amounts_are_time_strings_with_eight_decimals(units: int, text: str) -> None:
    assert render.amount(units) == text
    if units >= 0:
        assert render.parse_amount(text) == units


@pytest.mark.parametrize("text", ["", "1.000000001", "-1", "+1", "1e3", "abc", " 1", "NaN", "Infinity", "1..0"])
def test_parse_amount_refuses_what_is_not_an_exact_amount(text: str) -> None:
    with pytest.raises(ValueError):
        render.parse_amount(text)
