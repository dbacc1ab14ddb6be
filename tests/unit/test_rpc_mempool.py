"""Mempool RPC methods over a real node (certified chain in LMDB, the node's own Mempool), through TABLE.

Checked: the mempool views (getrawmempool, getmempoolinfo, getmempoolentry), sendrawtransaction's codes
per reject reason (-22 undecodable, -25 rule, -26 policy, -27 in the chain; a resend is not an error) and
its relay to peers, and testmempoolaccept judging txs in order on a copy: the real pool never changes,
even when the verdict involves evicting.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_rpc_chain import World, make_world, undecodable
from timecoin import crypto
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.mempool import Mempool
from timecoin.rpc.errors import (
    DESERIALIZATION_ERROR,
    IN_WARMUP,
    INVALID_ADDRESS_OR_KEY,
    INVALID_PARAMS,
    VERIFY_ALREADY_IN_CHAIN,
    VERIFY_ERROR,
    VERIFY_REJECTED,
)
from timecoin.rpc.mempool import MAX_TEST_TXS

FUNDED = 4                       # spec.keys[4], [5]: funded accounts that are not validators


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path, blocks=3, txs_per_block=2)
    try:
        yield w
    finally:
        w.node.getServiceNamed("store").stopService()


@pytest.fixture
def small(tmp_path: Path) -> Iterator[World]:
    """A node whose mempool holds at most 2 txs (eviction and MEMPOOL_FULL)."""
    w = make_world(tmp_path, blocks=2, txs_per_block=1, mempool_max_txs="2")
    try:
        yield w
    finally:
        w.node.getServiceNamed("store").stopService()


def pool_of(w: World) -> Mempool:
    assert w.node.mempool is not None
    return w.node.mempool


def send(w: World, tx: Transaction) -> Any:
    return w.call("sendrawtransaction", [tx.encoded.hex()])


class Relay:
    """Stands in for a running P2PService: records what RPC asks it to broadcast."""

    running = True

    def __init__(self) -> None:
        self.sent: list[Transaction] = []

    def broadcast(self, msg: Transaction) -> None:
        self.sent.append(msg)


def snapshot(pool: Mempool) -> tuple[list[bytes], int, int, list[bytes]]:
    return pool.txids(), len(pool), pool.size_bytes, [t.id for t in pool.iter_selected()]


# -- views ----------------------------------------------------------------------------------------------
def test_an_empty_mempool(world: World) -> None:
    assert world.call("getrawmempool") == [] and world.call("getrawmempool", [True]) == {}
    info = world.call("getmempoolinfo")
    assert info["size"] == 0 and info["bytes"] == 0 and info["total_fee"] == "0.00000000"
    assert info["loaded"] is True and info["mempoolminfee"] == "0.00001000" and info["maxtxs"] == 50_000


def test_views_show_pending_chains_in_arrival_order(world: World) -> None:
    chain = [world.transfer(FUNDED, i, fee=1_000 + i) for i in range(3)]
    other = world.transfer(FUNDED + 1, 0, amount=10**8)
    for tx in [chain[0], other, chain[1], chain[2]]:
        send(world, tx)
    order = [chain[0], other, chain[1], chain[2]]
    assert world.call("getrawmempool") == [t.id.hex() for t in order]
    verbose = world.call("getrawmempool", {"verbose": True})
    assert list(verbose) == [t.id.hex() for t in order]
    middle = verbose[chain[1].id.hex()]
    assert middle == world.call("getmempoolentry", [chain[1].id.hex()])
    assert middle["ancestorcount"] == 2 and middle["descendantcount"] == 2
    assert middle["depends"] == [chain[0].id.hex()] and middle["fee"] == "0.00001001"
    assert middle["from"] == crypto.encode_address(world.spec.keys[FUNDED].address, "devnet")
    assert middle["size"] == chain[1].size and middle["nonce"] == chain[1].nonce
    single = verbose[other.id.hex()]
    assert single["ancestorcount"] == 1 and single["descendantcount"] == 1 and single["depends"] == []
    assert single["amount"] == "1.00000000"
    info = world.call("getmempoolinfo")
    assert info["size"] == 4 and info["bytes"] == sum(t.size for t in order)
    assert info["total_fee"] == "0.00004003"


@pytest.mark.parametrize(("params", "code", "says"), [
    (["ab" * 32], INVALID_ADDRESS_OR_KEY, "Transaction not in mempool"),
    (["ab"], INVALID_PARAMS, "must be 32 bytes"),
    (["q" * 64], INVALID_PARAMS, "must be hex"),
    ([1], INVALID_PARAMS, "must be a string"),
    ([], INVALID_PARAMS, "missing parameter txid"),
])
def test_getmempoolentry_bad_params(world: World, params: list[Any], code: int, says: str) -> None:
    err = world.error("getmempoolentry", params)
    assert err.code == code and says in err.message, err.message


@pytest.mark.parametrize(("method", "params", "says"), [
    ("getrawmempool", [1], "verbose must be true or false"),
    ("getrawmempool", ["true"], "verbose must be true or false"),
    ("getrawmempool", [True, 1], "at most 1 parameters"),
    ("getmempoolinfo", [1], "at most 0 parameters"),
])
def test_view_bad_params(world: World, method: str, params: list[Any], says: str) -> None:
    err = world.error(method, params)
    assert err.code == INVALID_PARAMS and says in err.message, err.message


def test_views_while_the_store_is_closed_are_warming_up(world: World) -> None:
    world.node.getServiceNamed("store").stopService()
    for method, params in [("getrawmempool", []), ("getmempoolinfo", []), ("getmempoolentry", ["ab" * 32])]:
        assert world.error(method, params).code == IN_WARMUP


# -- sendrawtransaction ---------------------------------------------------------------------------------
def test_sendrawtransaction_admits_and_relays(world: World) -> None:
    relay = Relay()
    world.node.p2p = relay
    tx = world.transfer(FUNDED)
    assert send(world, tx) == tx.id.hex()
    assert tx.id in pool_of(world) and [t.id for t in relay.sent] == [tx.id]
    # A resend is not an error (bitcoind): the same txid, relayed again, the pool unchanged.
    assert send(world, tx) == tx.id.hex()
    assert len(pool_of(world)) == 1 and len(relay.sent) == 2


def test_sendrawtransaction_without_running_p2p_only_admits(world: World) -> None:
    assert world.node.p2p is not None and not world.node.p2p.running     # the real service, not started
    tx = world.transfer(FUNDED)
    assert send(world, tx) == tx.id.hex() and tx.id in pool_of(world)


def test_sendrawtransaction_of_a_committed_tx_is_already_in_the_chain(world: World) -> None:
    block = world.store.get_block(2)
    assert block is not None
    relay = Relay()
    world.node.p2p = relay
    err = world.error("sendrawtransaction", [block.txs[0].encoded.hex()])
    assert err.code == VERIFY_ALREADY_IN_CHAIN and err.message == "Transaction already in block chain"
    assert len(pool_of(world)) == 0 and relay.sent == []


def rejected(w: World) -> list[tuple[Transaction, int, str]]:
    """(tx, code, reason) for each way a decodable tx is refused on an empty pool."""
    key = w.spec.keys[FUNDED]
    chain_id = w.spec.genesis.chain_id
    good = w.transfer(FUNDED)
    return [
        (w.transfer(FUNDED, 1), VERIFY_ERROR, "bad_nonce"),                        # a gap
        (w.transfer(FUNDED, fee=999), VERIFY_REJECTED, "fee_too_low"),
        (w.transfer(FUNDED, amount=10**20 // 10**4), VERIFY_ERROR, "insufficient_funds"),
        (w.transfer(FUNDED, amount=0), VERIFY_ERROR, "bad_amount"),
        (replace(good, signature=bytes(64)), VERIFY_ERROR, "bad_signature"),
        (replace(good, fee=good.fee + 1), VERIFY_ERROR, "bad_signature"),          # signed fields changed
        (Transaction.create(key, TxKind.TRANSFER, "another-chain", good.nonce, 1000, 5, good.recipient),
         VERIFY_ERROR, "wrong_chain"),
        (Transaction.create(key, TxKind.UNSTAKE, chain_id, good.nonce, 1000, 5), VERIFY_ERROR,
         "insufficient_stake"),
    ]


def test_sendrawtransaction_codes_per_reason(world: World) -> None:
    relay = Relay()
    world.node.p2p = relay
    for tx, code, reason in rejected(world):
        err = world.error("sendrawtransaction", [tx.encoded.hex()])
        assert err.code == code and err.message.startswith(reason), (reason, err.message)
    assert len(pool_of(world)) == 0 and relay.sent == []


def test_sendrawtransaction_replacement_and_old_nonce(world: World) -> None:
    first = world.transfer(FUNDED)
    send(world, first)
    cheap = world.transfer(FUNDED, amount=6)                  # same nonce, same fee
    err = world.error("sendrawtransaction", [cheap.encoded.hex()])
    assert err.code == VERIFY_REJECTED and err.message.startswith("replacement_underpriced")
    dearer = world.transfer(FUNDED, amount=6, fee=2_000)
    assert send(world, dearer) == dearer.id.hex()
    assert pool_of(world).txids() == [dearer.id]
    validator = world.spec.keys[0]                            # has sent txs in the chain: nonce > 0
    stale = Transaction.create(validator, TxKind.TRANSFER, world.spec.genesis.chain_id, 0, 1000, 7,
                               world.spec.keys[1].address)
    err = world.error("sendrawtransaction", [stale.encoded.hex()])
    assert err.code == VERIFY_ERROR and err.message.startswith("bad_nonce")


def test_sendrawtransaction_to_a_full_pool_is_policy(small: World) -> None:
    send(small, small.transfer(FUNDED))
    send(small, small.transfer(FUNDED + 1))
    err = small.error("sendrawtransaction", [small.transfer(0).encoded.hex()])   # same fee rate: no eviction
    assert err.code == VERIFY_REJECTED and err.message.startswith("mempool_full")
    rich = small.transfer(0, fee=50_000)
    assert send(small, rich) == rich.id.hex() and rich.id in pool_of(small) and len(pool_of(small)) == 2


def test_sendrawtransaction_of_junk(world: World) -> None:
    for raw in undecodable(world):
        err = world.error("sendrawtransaction", [raw])
        assert err.code == DESERIALIZATION_ERROR and err.message.startswith("TX decode failed"), raw
    for params, says in [(["abc"], "must be hex"), ([None], "missing parameter"), ([12], "must be a string"),
                         ([{"hex": "00"}], "must be a string"), (["00", 1], "at most 1 parameters")]:
        err = world.error("sendrawtransaction", params)
        assert err.code == INVALID_PARAMS and says in err.message, err.message


def test_sendrawtransaction_while_the_store_is_closed_is_warming_up(world: World) -> None:
    tx = world.transfer(FUNDED)
    world.node.getServiceNamed("store").stopService()
    assert world.error("sendrawtransaction", [tx.encoded.hex()]).code == IN_WARMUP
    assert world.error("testmempoolaccept", [[tx.encoded.hex()]]).code == IN_WARMUP


# -- testmempoolaccept ----------------------------------------------------------------------------------
def test_testmempoolaccept_judges_in_order_and_inserts_nothing(world: World) -> None:
    relay = Relay()
    world.node.p2p = relay
    held = world.transfer(FUNDED + 1)
    send(world, held)
    before = snapshot(pool_of(world))
    chain = [world.transfer(FUNDED, i) for i in range(3)]
    block = world.store.get_block(1)
    assert block is not None
    txs = [*chain, held, block.txs[0], world.transfer(FUNDED, 5), chain[0]]
    out = world.call("testmempoolaccept", [[t.encoded.hex() for t in txs]])
    assert [r["txid"] for r in out] == [t.id.hex() for t in txs]
    assert [r["allowed"] for r in out] == [True, True, True, False, False, False, False]
    assert out[0]["vsize"] == chain[0].size and out[0]["fees"] == {"base": "0.00001000"}
    assert [r.get("reject-reason") for r in out[3:]] == ["duplicate", "already_in_chain", "bad_nonce", "duplicate"]
    assert all(r["reject-details"] for r in out[3:])
    assert snapshot(pool_of(world)) == before and len(relay.sent) == 1
    # The verdicts were right: the same txs, sent for real, do what testmempoolaccept said.
    for tx in chain:
        send(world, tx)
    assert len(pool_of(world)) == 4


def test_testmempoolaccept_reasons_match_sendrawtransaction(world: World) -> None:
    cases = rejected(world)
    out = world.call("testmempoolaccept", {"rawtxs": [t.encoded.hex() for t, _, _ in cases]})
    assert [r["reject-reason"] for r in out] == [reason for _, _, reason in cases]
    assert not any(r["allowed"] for r in out) and len(pool_of(world)) == 0


def test_testmempoolaccept_on_a_full_pool_evicts_only_in_its_copy(small: World) -> None:
    send(small, small.transfer(FUNDED))
    send(small, small.transfer(FUNDED + 1))
    before = snapshot(pool_of(small))
    same_rate, rich = small.transfer(0), small.transfer(1, fee=50_000)
    out = small.call("testmempoolaccept", [[same_rate.encoded.hex(), rich.encoded.hex()]])
    assert out[0]["allowed"] is False and out[0]["reject-reason"] == "mempool_full"
    assert out[1]["allowed"] is True
    assert snapshot(pool_of(small)) == before
    assert send(small, rich) == rich.id.hex() and len(pool_of(small)) == 2


@pytest.mark.parametrize(("params", "code", "says"), [
    ([[]], INVALID_PARAMS, "rawtxs must hold 1 to 25 transactions, not 0"),
    ([["00"] * (MAX_TEST_TXS + 1)], INVALID_PARAMS, "not 26"),
    ([["zz"]], INVALID_PARAMS, "rawtxs[0] must be hex"),
    ([["GOOD", 5]], INVALID_PARAMS, "rawtxs[1] must be a string"),
    ([["GOOD", None]], INVALID_PARAMS, "rawtxs[1] must be a string"),
    ([["GOOD", "00"]], DESERIALIZATION_ERROR, "TX decode failed (rawtxs[1]): "),
    (["GOOD"], INVALID_PARAMS, "rawtxs must be an array, not a string"),
    ([{"a": 1}], INVALID_PARAMS, "rawtxs must be an array, not an object"),
    ([], INVALID_PARAMS, "missing parameter rawtxs"),
])
def test_testmempoolaccept_bad_params(world: World, params: list[Any], code: int, says: str) -> None:
    good = world.transfer(FUNDED).encoded.hex()
    params = [[good if x == "GOOD" else x for x in p] if isinstance(p, list) else p for p in params]
    err = world.error("testmempoolaccept", params)
    assert err.code == code and says in err.message, err.message
    assert len(pool_of(world)) == 0
