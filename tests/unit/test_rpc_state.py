"""State and consensus RPC methods on a real node (LMDB prefilled with a certified chain, real services).

The node is validator 0 of 4 and runs alone, so its tip stays where the chain builder left it: every
answer can be checked against the store. Long polls are checked on that stuck node (timeout, the store
poll, cancellation) and on a single-validator network that commits blocks (the commit callback).
"""
from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.chaingen import ChainBuilder, ChainSpec, make_genesis
from tests.p2pnet import Net, node_config, sleep, wait_for
from timecoin import crypto
from timecoin.consensus.app import ChainApp
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.node import Node, build_node
from timecoin.rpc import state
from timecoin.rpc.context import RPCContext
from timecoin.rpc.errors import IN_WARMUP, INVALID_ADDRESS_OR_KEY, INVALID_PARAMETER, INVALID_PARAMS, RPCError
from timecoin.rpc.methods import TABLE
from timecoin.rpc.render import amount as format_amount
from timecoin.rpc.state import MAX_WAIT_MS
from timecoin.sim.loopnet import reactor
from timecoin.store import Store

TIP = 6


def call(node: Any, name: str, params: Any = None) -> Any:
    return TABLE.call(RPCContext(node, reactor, 0.0), name, params if params is not None else [])


def error(node: Any, name: str, params: Any) -> RPCError:
    with pytest.raises(RPCError) as info:
        call(node, name, params)
    return info.value


@pytest.fixture
def spec() -> ChainSpec:
    return make_genesis(validators=4, funded=2, chain_id="timecoin-rpc-state")


@pytest_twisted.async_yield_fixture
async def node(tmp_path: Path, spec: ChainSpec) -> AsyncIterator[Node]:
    config = node_config(tmp_path, "n0")
    store = Store(os.path.join(config.datadir, "chain"))
    ChainBuilder(store, spec).build(TIP, txs_per_block=2)
    store.close()
    n = build_node(config, spec.validators[0], spec.genesis, reactor)
    n.startService()
    try:
        yield n
    finally:
        await defer.maybeDeferred(n.stopService)


def addr(key: crypto.PrivateKey, network: str = "testnet") -> str:
    return crypto.encode_address(key.address, network)


def test_format_amount_is_time_with_8_decimals() -> None:
    assert format_amount(0) == "0.00000000"
    assert format_amount(1) == "0.00000001"
    assert format_amount(1_250_000_000) == "12.50000000"
    assert format_amount(-5 * crypto.UNITS_PER_TIME) == "-5.00000000"
    assert format_amount((1 << 64) - 1) == "184467440737.09551615"


@pytest_twisted.ensureDeferred
async def test_getaccount_and_getbalance_read_the_tip_state(node: Node, spec: ChainSpec) -> None:
    sender = spec.funded[0]
    acct = node.store.get_account(sender.address)
    out = call(node, "getaccount", [addr(sender)])
    assert out == {"address": addr(sender), "exists": True, "height": TIP, "balance": format_amount(acct.balance),
                   "nonce": acct.nonce, "next_nonce": acct.nonce, "stake": "0.00000000", "unbonding": [],
                   "jailed": False, "pubkey": sender.public_key.hex()}
    assert acct.nonce > 0                                       # the builder's transfers were signed by it
    assert call(node, "getbalance", {"address": addr(sender)}) == out["balance"]
    validator = call(node, "getaccount", [addr(spec.validators[1])])
    assert validator["stake"] == format_amount(node.store.get_account(spec.validators[1].address).stake)
    assert validator["stake"] != "0.00000000"
    # A valid address never used: an empty account, not an error (a wallet asks for fresh addresses).
    fresh = crypto.PrivateKey.generate()
    assert call(node, "getaccount", [addr(fresh)])["exists"] is False
    assert call(node, "getbalance", [addr(fresh)]) == "0.00000000"


@pytest.mark.parametrize(("params", "code", "says"), [
    (["TIME0notbase58!!"], INVALID_ADDRESS_OR_KEY, "Invalid address"),
    (["1BitcoinAddressxxxxxxxxxxxxxxxxxx"], INVALID_ADDRESS_OR_KEY, "Invalid address"),
    ([""], INVALID_ADDRESS_OR_KEY, "Invalid address"),
    ([17], INVALID_PARAMS, "address must be a string"),
    ([], INVALID_PARAMS, "missing parameter address"),
])
@pytest_twisted.ensureDeferred
async def test_bad_addresses_are_refused(node: Node, params: list[Any], code: int, says: str) -> None:
    for method in ("getaccount", "getbalance"):
        err = error(node, method, params)
        assert err.code == code and says in err.message, err.message


@pytest_twisted.ensureDeferred
async def test_an_address_with_a_flipped_checksum_or_of_mainnet_is_refused(node: Node, spec: ChainSpec) -> None:
    good = addr(spec.funded[0])
    flipped = good[:-1] + ("2" if good[-1] != "2" else "3")
    assert error(node, "getbalance", [flipped]).code == INVALID_ADDRESS_OR_KEY
    err = error(node, "getbalance", [addr(spec.funded[0], "mainnet")])
    assert err.code == INVALID_ADDRESS_OR_KEY and "mainnet address" in err.message


@pytest_twisted.ensureDeferred
async def test_getvalidators_shows_the_set_with_peer_ids_power_and_priorities(node: Node, spec: ChainSpec) -> None:
    out = call(node, "getvalidators")
    assert out["height"] == TIP + 1
    vs = node.store.validator_set(TIP + 1)
    assert out["total_power"] == vs.total_power
    by_peer = {crypto.peer_id_of(k.public_key): k for k in spec.validators}
    assert sorted(v["peer_id"] for v in out["validators"]) == sorted(by_peer)
    app = ChainApp(node.store, spec.genesis.params, None, spec.genesis.genesis_time)
    prios = app.priorities(TIP + 1)
    for v in out["validators"]:
        key = by_peer[v["peer_id"]]
        assert v["address"] == addr(key) and v["pubkey"] == key.public_key.hex()
        assert v["power"] == vs.power_of(key.address) and v["stake"] == format_amount(v["power"])
        assert v["proposer_priority"] == prios[key.address] and v["jailed"] is False
    assert out["proposer"] == addr(next(k for k in spec.validators if k.address == app.proposer(TIP + 1, 0)))
    for h in (1, TIP, TIP + 2):
        assert call(node, "getvalidators", [h])["height"] == h


@pytest.mark.parametrize(("params", "code"), [
    ([0], INVALID_PARAMS), ([-1], INVALID_PARAMS), (["1"], INVALID_PARAMS), ([1 << 70], INVALID_PARAMS),
    ([TIP + 3], INVALID_PARAMETER), ([(1 << 63) - 1], INVALID_PARAMETER),
])
@pytest_twisted.ensureDeferred
async def test_getvalidators_out_of_range(node: Node, params: list[Any], code: int) -> None:
    assert error(node, "getvalidators", params).code == code


@pytest_twisted.ensureDeferred
async def test_getconsensusinfo_reports_the_engine(node: Node, spec: ChainSpec) -> None:
    await wait_for(lambda: node.consensus.engine.height == TIP + 1, 5.0, "engine at the next height")
    out = call(node, "getconsensusinfo")
    engine = node.consensus.engine
    assert out["height"] == TIP + 1 and out["round"] >= 0
    assert out["step"] in ("propose", "prevote", "precommit")
    assert out["validators"] == 4 and out["quorum_power"] * 3 > 2 * out["total_power"]
    assert out["is_validator"] is True and out["halted"] is None
    assert out["locked_round"] == engine.locked_round and out["valid_round"] == engine.valid_round
    proposer = node.consensus.app.proposer(engine.height, engine.round)
    key = next(k for k in spec.validators if k.address == proposer)
    # The round may move on between the two reads: compare with the proposer of the round reported.
    if out["round"] == engine.round:
        assert out["proposer"] == addr(key) and out["proposer_peer_id"] == key.peer_id
    # Our own prevote (alone: never a quorum) shows up with the power behind it.
    await wait_for(lambda: any(v["type"] == "prevote" for v in call(node, "getconsensusinfo")["votes"]), 10.0,
                   "our prevote")
    votes = call(node, "getconsensusinfo")["votes"]
    prevote = next(v for v in votes if v["type"] == "prevote")
    assert prevote["validators"] >= 1 and prevote["power"] == sum(prevote["by_block"].values())
    assert prevote["quorum"] is False
    assert error(node, "getconsensusinfo", [1]).code == INVALID_PARAMS


def test_getconsensusinfo_and_getsyncstatus_while_starting() -> None:
    starting = SimpleNamespace(consensus=SimpleNamespace(engine=None), sync=None, store=None,
                               config=SimpleNamespace(network="testnet"))
    assert error(starting, "getconsensusinfo", []).code == IN_WARMUP
    assert error(starting, "getsyncstatus", []).code == IN_WARMUP
    assert error(starting, "getbalance", [addr(crypto.PrivateKey.generate())]).code == IN_WARMUP
    assert error(starting, "waitfornewblock", []).code == IN_WARMUP


@pytest_twisted.ensureDeferred
async def test_getsyncstatus(node: Node) -> None:
    out = call(node, "getsyncstatus")
    assert out["tip"] == TIP and out["syncing"] is False and out["halted"] is None
    assert {"height", "target", "blocks_per_s", "eta_s", "peers", "genesis_alert", "last_result"} <= set(out)
    assert error(node, "getsyncstatus", ["x"]).code == INVALID_PARAMS


@pytest_twisted.ensureDeferred
async def test_gettransactionfinality_final_mempool_unknown(node: Node, spec: ChainSpec) -> None:
    block = node.store.get_block(3)
    tx = block.txs[1]
    out = call(node, "gettransactionfinality", [tx.id.hex()])
    assert out == {"txid": tx.id.hex(), "final": True, "height": 3, "blockhash": block.hash.hex(), "index": 1,
                   "confirmations": TIP - 3 + 1}
    sender = spec.funded[1]
    nonce = call(node, "getaccount", [addr(sender)])["next_nonce"]
    pending = Transaction.create(sender, TxKind.TRANSFER, spec.genesis.chain_id, nonce, node.mempool.fee_floor,
                                 5, spec.funded[0].address)
    node.mempool.add(pending)
    assert call(node, "gettransactionfinality", [pending.id.hex()]) == {
        "txid": pending.id.hex(), "final": False, "where": "mempool"}
    assert call(node, "getaccount", [addr(sender)])["next_nonce"] == nonce + 1
    assert call(node, "gettransactionfinality", ["ab" * 32])["where"] == "unknown"
    for bad in (["zz" * 32], ["ab" * 31], [5], []):
        assert error(node, "gettransactionfinality", bad).code == INVALID_PARAMS


# -- long polls ------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_waitforblockheight_at_or_below_the_tip_answers_at_once(node: Node) -> None:
    d = call(node, "waitforblockheight", [TIP])
    assert d.called
    out = await d
    assert out == {"hash": node.store.tip_hash().hex(), "height": TIP}
    assert (await call(node, "waitforblockheight", {"height": 0, "timeout": 5}))["height"] == TIP


@pytest_twisted.ensureDeferred
async def test_waits_return_the_tip_at_timeout_and_leave_nothing_behind(node: Node) -> None:
    listeners = len(node.consensus.on_commit)
    start = reactor.seconds()
    out = await call(node, "waitfornewblock", [200])
    assert out == {"hash": node.store.tip_hash().hex(), "height": TIP}
    assert 0.15 <= reactor.seconds() - start < 5.0
    out = await call(node, "waitforblockheight", [TIP + 100, 150])
    assert out["height"] == TIP
    assert len(node.consensus.on_commit) == listeners


@pytest.mark.parametrize(("name", "params"), [
    ("waitfornewblock", [-1]), ("waitfornewblock", ["10"]), ("waitfornewblock", [1.5]),
    ("waitforblockheight", []), ("waitforblockheight", [-1]), ("waitforblockheight", [5, -1]),
    ("waitforblockheight", [1 << 70]),
])
@pytest_twisted.ensureDeferred
async def test_wait_bad_params(node: Node, name: str, params: list[Any]) -> None:
    assert error(node, name, params).code == INVALID_PARAMS


@pytest_twisted.ensureDeferred
async def test_a_cancelled_wait_removes_its_listener_and_timers(node: Node) -> None:
    listeners = len(node.consensus.on_commit)
    before = {id(c) for c in reactor.getDelayedCalls()}
    d = call(node, "waitfornewblock", [0])                      # 0: no timeout (capped at an hour)
    mine = [c for c in reactor.getDelayedCalls() if id(c) not in before and c.active()]
    assert any(abs(c.getTime() - reactor.seconds() - MAX_WAIT_MS / 1000) < 5 for c in mine)
    assert len(node.consensus.on_commit) == listeners + 1
    d.cancel()
    with pytest.raises(defer.CancelledError):
        await d
    assert len(node.consensus.on_commit) == listeners
    assert not any(c.active() for c in mine if abs(c.getTime() - reactor.seconds() - MAX_WAIT_MS / 1000) < 5)
    await sleep(0.6)                                            # past a poll interval: nothing fires
    assert d.called


@pytest_twisted.ensureDeferred
async def test_a_tip_moved_without_a_commit_callback_is_seen_by_the_poll(node: Node, spec: ChainSpec) -> None:
    d = call(node, "waitforblockheight", [TIP + 1, 10_000])
    # A block written straight to the store (as sync or a rollback could move the tip): no on_commit call.
    ChainBuilder(node.store, spec).next_block()
    out = await d
    assert out == {"hash": node.store.tip_hash().hex(), "height": TIP + 1}


@pytest_twisted.ensureDeferred
async def test_blocks_applied_by_sync_wake_a_wait_through_the_commit_callback(
        node: Node, spec: ChainSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "POLL_INTERVAL", 600.0)          # only the commit callback can answer in time
    d = call(node, "waitfornewblock", [60_000])
    block, _ = ChainBuilder(node.store, spec).next_block()
    node.consensus.blocks_synced([block])                       # what SyncCoordinator calls after applying
    await wait_for(lambda: d.called, 2.0, "the wait answered")
    assert (await d) == {"hash": block.hash.hex(), "height": TIP + 1}


def test_priorities_are_shown_only_when_stored_nearby() -> None:
    stored: dict[bytes, bytes] = {}
    fake = SimpleNamespace(get=lambda db, key: stored.get(key))
    assert state._priorities_near(fake, 5)                       # walks from genesis: short
    assert not state._priorities_near(fake, 5_000)               # nothing within PRIORITY_WALK: null
    stored[(4_500).to_bytes(8, "big")] = b""
    assert state._priorities_near(fake, 5_000)


@pytest_twisted.ensureDeferred
async def test_waitfornewblock_returns_when_a_block_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "POLL_INTERVAL", 600.0)          # answered by consensus on_commit, not the poll
    net = Net(tmp_path, 1, chain_id="timecoin-rpc-wait", block_interval="0.3")
    node = net.nodes[0]
    try:
        await net.start(connect=False)
        await wait_for(lambda: node.store.tip_height() >= 1, 10.0, "first block")
        start = node.store.tip_height()
        out = await call(node, "waitfornewblock", [20_000])
        assert out["height"] > start
        assert out["hash"] == node.store.block_hash_at(out["height"]).hex()
        target = out["height"] + 2
        out = await call(node, "waitforblockheight", [target, 20_000])
        assert out["height"] >= target
    finally:
        await net.stop()


@pytest_twisted.ensureDeferred
async def test_a_wait_ends_with_warming_up_when_the_node_stops(tmp_path: Path) -> None:
    net = Net(tmp_path, 1, chain_id="timecoin-rpc-stop", block_interval="60")
    node = net.nodes[0]
    try:
        await net.start(connect=False)
        d = call(node, "waitforblockheight", [10_000, 0])
        await net.stop()
        await wait_for(lambda: d.called, 3.0, "the wait answered")
        with pytest.raises(RPCError) as info:
            await d
        assert info.value.code == IN_WARMUP
    finally:
        await net.stop()
