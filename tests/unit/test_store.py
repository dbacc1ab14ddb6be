"""The LMDB store on real LMDB in tmp_path, with real blocks, signed certificates and executed state.

Chains come from ``store_crash_writer.ChainBuilder``: signed transfers and stakes, blocks built and
executed by ``ledger/state.py``, certificates signed by > 2/3 of the validators. Every refusal test
compares a byte-for-byte snapshot of all databases before and after, so "nothing written" is checked,
not assumed. Processes: LMDB allows one environment per path per process, so the concurrent reader
and the SIGKILLed writer run ``store_crash_writer.py`` in a child interpreter.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import lmdb
import pytest

from tests.unit.store_crash_writer import (
    GENESIS_TIME,
    WALLET_KEYS,
    ChainBuilder,
    genesis_state,
    initialize,
    make_genesis,
    replay_and_check,
    sign_certificate,
)
from timecoin import crypto
from timecoin.consensus.app import PRIORITIES_DB, ChainApp
from timecoin.errors import StoreError
from timecoin.ledger.block import CommitCertificate, verify_certificate
from timecoin.ledger.genesis import Genesis
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.store import (
    ACCOUNTS,
    DB_NAMES,
    K_SCHEMA,
    LTHASH_SIZE,
    MAX_DBS,
    META,
    PRIORITIES,
    SCHEMA_VERSION,
    UNDO_DB,
    Store,
)

WRITER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "store_crash_writer.py")
KIB = 1024
Snapshot = dict[str, list[tuple[bytes, bytes]]]


@pytest.fixture(scope="module")
def genesis() -> Genesis:
    return make_genesis()


@pytest.fixture(scope="module")
def builder(genesis: Genesis) -> ChainBuilder:
    return ChainBuilder(genesis)


@pytest.fixture
def path(tmp_path: os.PathLike[str]) -> str:
    return os.path.join(str(tmp_path), "chain")


@pytest.fixture
def store(path: str, genesis: Genesis) -> Iterator[Store]:
    s = Store(path)
    initialize(s, genesis)
    yield s
    s.close()


def snapshot(store: Store) -> Snapshot:
    """Every key and value of every database: compared whole to prove nothing (else) was written."""
    return {name: store.items(name) for name in DB_NAMES}


def _i(height: int) -> bytes:
    return height.to_bytes(8, "big")


# -- genesis, identity, schema ---------------------------------------------------------------------
def test_db_names_fit_and_include_the_consensus_priorities() -> None:
    assert PRIORITIES == PRIORITIES_DB
    assert PRIORITIES_DB in DB_NAMES
    assert len(set(DB_NAMES)) == len(DB_NAMES) <= MAX_DBS


def test_initialize_from_genesis(store: Store, genesis: Genesis) -> None:
    assert store.is_initialized
    assert store.tip_height() == 0
    assert store.tip_hash() == store.genesis_hash() == genesis.hash
    assert store.block_hash_at(0) == genesis.hash and store.height_of(genesis.hash) == 0
    assert store.chain_id() == genesis.chain_id
    assert store.lthash() == genesis.initial_lthash() and len(store.lthash()) == LTHASH_SIZE
    assert store.get(META, K_SCHEMA) == SCHEMA_VERSION.to_bytes(8, "big")
    accounts = genesis.initial_accounts()
    assert len(accounts) == 7
    for address, account in accounts.items():
        assert store.get_account(address) == account
    assert dict(store.items(ACCOUNTS)) == {a: acct.encoded for a, acct in accounts.items()}
    assert store.validator_set(1) == store.validator_set(2) == genesis.validators()
    assert len(genesis.validators()) == 4
    assert store.validator_set(3) is None and store.validator_set(-1) is None
    assert store.get_block(0) is None and store.get_block(1) is None and store.get_certificate(1) is None
    assert store.get_blocks(0, 10) == [] and store.block_hashes(0, 5) == [genesis.hash]
    vs = genesis.validators()
    with pytest.raises(StoreError, match="already initialized"):
        store.initialize(genesis.chain_id, genesis.hash, {}, vs, vs, genesis.initial_lthash())
    assert store.lthash() == genesis.initial_lthash()


def test_initialize_single_validator_genesis_and_reopen(path: str) -> None:
    key = crypto.PrivateKey(hashlib.sha256(b"single").digest())
    g = Genesis.single_validator(key, chain_id="timecoin-single", genesis_time=GENESIS_TIME)
    with Store(path) as s:
        assert not s.is_initialized
        with pytest.raises(StoreError, match="not initialized"):
            s.tip_height()
        initialize(s, g)
    with Store(path) as s:
        s.check_chain("timecoin-single", g.hash)
        assert s.validator_set(1) == g.validators() and len(g.validators()) == 1
        assert s.get_account(key.address) == g.initial_accounts()[key.address]
        assert s.lthash() == g.initial_lthash()


def test_uninitialized_store_rejects_bad_genesis_values(path: str, genesis: Genesis) -> None:
    vs = genesis.validators()
    with Store(path) as s:
        with pytest.raises(StoreError, match="32 bytes"):
            s.initialize(genesis.chain_id, b"short", {}, vs, vs, genesis.initial_lthash())
        with pytest.raises(StoreError, match="LtHash"):
            s.initialize(genesis.chain_id, genesis.hash, {}, vs, vs, b"x" * 10)
        with pytest.raises(StoreError, match="not 20 bytes"):
            s.initialize(genesis.chain_id, genesis.hash, {b"abc": genesis.initial_accounts()[WALLET_KEYS[0].address]},
                         vs, vs, genesis.initial_lthash())
        assert not s.is_initialized and s.items(ACCOUNTS) == []


def test_reopen_checks_chain_id_and_genesis(path: str, genesis: Genesis, builder: ChainBuilder) -> None:
    with Store(path) as s:
        initialize(s, genesis)
        builder.commit_next(s, 3)
        builder.commit_next(s, 3)
        before = snapshot(s)
    with Store(path) as s:
        initialize(s, genesis)                       # second start: no re-initialization
        assert snapshot(s) == before and s.tip_height() == 2
        other_chain = make_genesis("timecoin-other")
        with pytest.raises(StoreError, match="another chain"):
            initialize(s, other_chain)
        later = dataclasses.replace(genesis, genesis_time=GENESIS_TIME + 1)
        assert later.hash != genesis.hash
        with pytest.raises(StoreError, match="genesis hash"):
            s.check_chain(later.chain_id, later.hash)
        with pytest.raises(StoreError, match="chain id"):
            s.check_chain("timecoin-other", genesis.hash)
        assert snapshot(s) == before


def test_other_schema_version_is_refused(path: str, genesis: Genesis) -> None:
    with Store(path) as s:
        initialize(s, genesis)
        s.put(META, K_SCHEMA, (SCHEMA_VERSION + 1).to_bytes(8, "big"))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Store(path)
    with pytest.raises(StoreError, match="schema version"):
        Store.open_readonly(path)
    # Put the version back with raw LMDB: the same store then opens again.
    env = lmdb.open(path, max_dbs=MAX_DBS)
    with env.begin(write=True) as txn:
        txn.put(K_SCHEMA, SCHEMA_VERSION.to_bytes(8, "big"), db=env.open_db(META.encode(), txn=txn))
    env.close()
    with Store(path) as s:
        s.check_chain(genesis.chain_id, genesis.hash)


def test_second_open_in_one_process_is_a_store_error(store: Store, path: str) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        Store(path)
    assert store.tip_height() == 0


# -- commits and indexes ---------------------------------------------------------------------------
def test_commit_blocks_and_indexes(store: Store, genesis: Genesis, builder: ChainBuilder) -> None:
    committed = []
    for n_txs in (3, 0, 5):
        block, result, cert = builder.commit_next(store, n_txs)
        for address, account in result.changes.items():       # checked before a later block changes them
            assert store.get_account(address) == account
        assert len(result.changes) == n_txs + 1 + min(n_txs, 3) and store.lthash() == result.lthash
        committed.append((block, result, cert))
    assert store.tip_height() == 3
    hashes = [genesis.hash] + [b.hash for b, _, _ in committed]
    assert len(set(hashes)) == 4
    for height, (block, _result, cert) in enumerate(committed, start=1):
        assert store.get_block(height) == block and store.get_block_bytes(height) == block.encoded
        assert store.get_certificate(height) == cert
        verify_certificate(store.get_block(height), store.get_certificate(height), store.validator_set(height),
                           genesis.chain_id)
        assert store.block_hash_at(height) == block.hash and store.height_of(block.hash) == height
        for index, tx in enumerate(block.txs):
            assert store.tx_location(tx.id) == (height, index)
    assert [len(b.txs) for b, _, _ in committed] == [3, 0, 5]
    assert store.tip_hash() == committed[-1][0].hash
    assert store.lthash() == committed[-1][1].lthash
    assert store.block_hashes(0, 10) == hashes and store.block_hashes(2, 1) == hashes[2:3]
    assert store.block_hashes(-5, 2) == hashes[:2]
    assert store.get_blocks(1, 2) == [(b, c) for b, _, c in committed[:2]]
    assert store.get_blocks(0, 100) == [(b, c) for b, _, c in committed]
    assert store.get_blocks(4, 5) == [] and store.get_blocks(2, 0) == []
    assert store.validator_set(5) is not None and store.validator_set(6) is None
    assert store.tx_location(bytes(32)) is None and store.height_of(bytes(32)) is None
    assert store.get_block(-1) is None and store.block_hash_at(4) is None
    replay_and_check(store, genesis)


def test_stake_changes_the_validator_set_two_heights_on(store: Store, genesis: Genesis,
                                                        builder: ChainBuilder) -> None:
    stake = builder.stake(store, 0, genesis.params.min_stake)
    builder.commit_next(store, 0, extra=(stake,))
    assert len(store.validator_set(2)) == 4
    grown = store.validator_set(3)
    assert len(grown) == 5 and WALLET_KEYS[0].address in grown
    for _ in range(4):                    # certificates now need the new member's power too
        builder.commit_next(store, 2)
    assert store.validator_set(6) == grown
    unstake = builder.stake(store, 0, genesis.params.min_stake, TxKind.UNSTAKE)
    builder.commit_next(store, 0, extra=(unstake,))
    assert store.validator_set(7) == grown and store.validator_set(8) == genesis.validators()
    replay_and_check(store, genesis)


def test_refuses_a_block_that_does_not_extend_the_tip(store: Store, genesis: Genesis,
                                                      builder: ChainBuilder) -> None:
    block1, result1, cert1 = builder.block(store, 1, genesis.hash, builder.transfers(store, 1, 2))
    mem = genesis_state(genesis)
    mem.validators[3] = genesis.validators()
    skip, skip_result, skip_cert = builder.block(mem, 2, block1.hash, [])
    wrong_parent, wrong_result, wrong_cert = builder.block(store, 1, bytes(32), [])
    before = snapshot(store)
    with pytest.raises(StoreError, match="does not extend the tip at height 0"):
        store.commit_block(skip, skip_cert, skip_result)
    with pytest.raises(StoreError, match="builds on"):
        store.commit_block(wrong_parent, wrong_cert, wrong_result)
    assert snapshot(store) == before
    store.commit_block(block1, cert1, result1)
    after1 = snapshot(store)
    with pytest.raises(StoreError, match="does not extend the tip at height 1"):
        store.commit_block(block1, cert1, result1)            # the same block twice
    assert snapshot(store) == after1 and store.tip_height() == 1


def test_refuses_a_certificate_for_another_block(store: Store, genesis: Genesis, builder: ChainBuilder) -> None:
    block, result, cert = builder.block(store, 1, genesis.hash, [])
    other, _, other_cert = builder.block(store, 1, genesis.hash, [], timestamp=GENESIS_TIME + 5)
    assert other.hash != block.hash
    before = snapshot(store)
    with pytest.raises(StoreError, match="certificate is for block"):
        store.commit_block(block, other_cert, result)
    wrong_height = CommitCertificate(2, cert.round, cert.block_hash, cert.signatures)
    with pytest.raises(StoreError, match="certificate is for block"):
        store.commit_block(block, wrong_height, result)
    assert snapshot(store) == before
    store.commit_block(block, cert, result)
    assert store.tip_hash() == block.hash


def test_refuses_a_result_of_another_height_block_or_state(store: Store, genesis: Genesis,
                                                           builder: ChainBuilder) -> None:
    proposer = builder.proposer(store, 1)
    stale_state = genesis_state(genesis)
    stale_state.validators[3] = genesis.validators()
    block1, result1, cert1 = builder.block(store, 1, genesis.hash, [], proposer=proposer)
    with_tx, with_tx_result, with_tx_cert = builder.block(store, 1, genesis.hash, builder.transfers(store, 1, 1),
                                                          proposer=proposer)
    before = snapshot(store)
    with pytest.raises(StoreError, match="is for height 2"):
        store.commit_block(block1, cert1, dataclasses.replace(result1, height=2))
    # A result of a different block at this height (same proposer, so its undo values match the store).
    with pytest.raises(StoreError, match="another block"):
        store.commit_block(with_tx, with_tx_cert, result1)
    with pytest.raises(StoreError, match="LtHash"):
        store.commit_block(block1, cert1, dataclasses.replace(result1, lthash=b"\0" * 32))
    assert snapshot(store) == before
    store.commit_block(block1, cert1, result1)
    # Block 2 by the same proposer, executed on the state *before* block 1 (its reward not yet paid).
    block2, result2, cert2 = builder.block(store, 2, block1.hash, [], proposer=proposer)
    stale_block, stale_result, stale_cert = builder.block(stale_state, 2, block1.hash, [], proposer=proposer)
    assert stale_result.undo[proposer] != result2.undo[proposer]
    after1 = snapshot(store)
    with pytest.raises(StoreError, match="computed against another state"):
        store.commit_block(stale_block, stale_cert, stale_result)
    assert snapshot(store) == after1
    store.commit_block(block2, cert2, result2)
    replay_and_check(store, genesis)


# -- rollback --------------------------------------------------------------------------------------
def _commit_with_app(app: ChainApp, store: Store, builder: ChainBuilder, n_txs: int,
                     extra: tuple[Transaction, ...] = ()) -> None:
    """Commit through ChainApp (validate, commit, store the next proposer priorities), as the node does."""
    height = store.tip_height() + 1
    block, _result, cert = builder.block(store, height, store.tip_hash(),
                                         builder.transfers(store, height, n_txs) + list(extra))
    app.commit(block, cert)


def _app(store: Store, genesis: Genesis) -> ChainApp:
    return ChainApp(store, genesis.params, None, genesis.genesis_time)


def test_rollback_restores_everything_exactly(store: Store, genesis: Genesis, builder: ChainBuilder) -> None:
    app = _app(store, genesis)
    snaps = [snapshot(store)]
    blocks = []
    for height in range(1, 6):
        extra = (builder.stake(store, 1, genesis.params.min_stake),) if height == 3 else ()
        _commit_with_app(app, store, builder, height % 3 + 1, extra)
        blocks.append(store.get_block(height))
        snaps.append(snapshot(store))
    assert len(store.validator_set(5)) == 5 and len(store.validator_set(4)) == 4
    assert [k for k, _ in store.items(PRIORITIES)] == [_i(h) for h in range(2, 7)]
    removed = store.rollback_to(2)
    assert [b.hash for b in removed] == [b.hash for b in blocks[2:]]
    assert snapshot(store) == snaps[2]
    assert store.tip_height() == 2 and store.tip_hash() == blocks[1].hash
    assert store.lthash() == dict(snaps[2][META])[b"lthash"] != dict(snaps[5][META])[b"lthash"]
    for block in removed:
        assert store.height_of(block.hash) is None and store.get_block(block.height) is None
        assert all(store.tx_location(tx.id) is None for tx in block.txs)
    assert len(store.validator_set(4)) == 4 and store.validator_set(5) is None
    # The same blocks commit again to the very same bytes; then back to genesis.
    app = _app(store, genesis)
    for block in removed:
        app.commit(block, sign_certificate(block, store.validator_set(block.height), genesis.chain_id))
    assert snapshot(store) == snaps[5]
    assert [b.height for b in store.rollback_to(0)] == [1, 2, 3, 4, 5]
    assert snapshot(store) == snaps[0]
    assert store.lthash() == genesis.initial_lthash() and store.tip_hash() == genesis.hash
    # A different chain from genesis commits cleanly on the rolled-back store.
    fork = builder.commit_next(store, 4)[0]
    assert fork.hash != blocks[0].hash
    replay_and_check(store, genesis)


def test_rollback_restores_a_compared_state(store: Store, genesis: Genesis, builder: ChainBuilder) -> None:
    """Accounts touched, created and emptied are back to the values of the earlier state."""
    for _ in range(2):
        builder.commit_next(store, 3)
    mem_before = replay_and_check(store, genesis)
    accounts_before = dict(store.items(ACCOUNTS))
    created = set()
    for _ in range(3):
        _, result, _ = builder.commit_next(store, 6)
        created |= {a for a, old in result.undo.items() if old is None}
    assert len(created) == 18
    store.rollback_to(2)
    assert dict(store.items(ACCOUNTS)) == accounts_before
    assert all(store.get_account(a) is None for a in created)
    assert store.lthash() == mem_before.lthash()
    assert replay_and_check(store, genesis).accounts == mem_before.accounts


def test_rollback_refusals_change_nothing(path: str, genesis: Genesis, builder: ChainBuilder) -> None:
    with Store(path, undo_depth=2) as s:
        initialize(s, genesis)
        for _ in range(5):
            builder.commit_next(s, 1)
        assert [k for k, _ in s.items(UNDO_DB)] == [_i(4), _i(5)]      # older undo records pruned
        before = snapshot(s)
        with pytest.raises(StoreError, match="negative"):
            s.rollback_to(-1)
        with pytest.raises(StoreError, match="the tip is 5"):
            s.rollback_to(6)
        with pytest.raises(StoreError, match="deeper than the maximum of 1"):
            s.rollback_to(3, max_depth=1)
        with pytest.raises(StoreError, match="undo record is gone"):
            s.rollback_to(2)
        assert snapshot(s) == before
        assert s.rollback_to(5) == []
        assert snapshot(s) == before
        assert [b.height for b in s.rollback_to(3)] == [4, 5]
        assert s.tip_height() == 3 and s.items(UNDO_DB) == []
        replay_and_check(s, genesis)
    with pytest.raises(StoreError, match="undo_depth"):
        Store(path, undo_depth=0)


def test_rollback_depth_limit_is_inclusive(store: Store, builder: ChainBuilder) -> None:
    for _ in range(3):
        builder.commit_next(store, 0)
    before = snapshot(store)
    with pytest.raises(StoreError, match="deeper than the maximum of 2"):
        store.rollback_to(0, max_depth=2)
    assert snapshot(store) == before
    assert len(store.rollback_to(0, max_depth=3)) == 3


# -- generic helpers -------------------------------------------------------------------------------
def test_generic_get_put_delete_write_many_items(store: Store) -> None:
    assert store.get("peers", b"a") is None and store.items("peers") == []
    store.put("peers", b"b/2", b"two")
    store.put("peers", b"a/1", b"one")
    store.put("bans", b"a/1", b"banned")
    assert store.get("peers", b"a/1") == b"one" and store.get("bans", b"a/1") == b"banned"
    store.write_many("peers", {b"b/1": b"x", b"b/3": b"y", b"a/2": b"z", b"b/2": None, b"zz": b"last"})
    assert store.items("peers") == [(b"a/1", b"one"), (b"a/2", b"z"), (b"b/1", b"x"), (b"b/3", b"y"),
                                    (b"zz", b"last")]
    assert store.items("peers", b"b/") == [(b"b/1", b"x"), (b"b/3", b"y")]
    assert store.items("peers", b"c") == [] and store.items("peers", b"zzz") == []
    store.put("peers", b"a/1", b"uno")                     # overwrite
    assert store.get("peers", b"a/1") == b"uno"
    assert store.delete("peers", b"a/1") is True and store.delete("peers", b"a/1") is False
    assert store.get("peers", b"a/1") is None and store.get("bans", b"a/1") == b"banned"
    with pytest.raises(StoreError, match="no database named 'nope'"):
        store.put("nope", b"k", b"v")
    with pytest.raises(StoreError, match="cannot write"):
        store.put("peers", b"k" * 600, b"v")               # over LMDB's 511-byte key limit
    with pytest.raises(StoreError, match="cannot write"):
        store.write_many("peers", {b"ok": b"1", b"k" * 600: b"v"})
    assert store.get("peers", b"ok") is None               # the whole batch was aborted
    store.close()
    assert store.closed
    store.close()                                          # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.get("peers", b"a/2")


# -- map growth ------------------------------------------------------------------------------------
def test_tiny_map_grows_and_keeps_everything(path: str, genesis: Genesis, builder: ChainBuilder) -> None:
    with Store(path, map_size=64 * KIB) as s:
        initialize(s, genesis)
        assert s.map_size == 64 * KIB
        txids = []
        for _ in range(30):
            block, _, _ = builder.commit_next(s, 20)
            txids += [(tx.id, block.height, i) for i, tx in enumerate(block.txs)]
        assert s.map_size >= 8 * 64 * KIB             # doubled at least three times
        assert os.path.getsize(os.path.join(path, "data.mdb")) > 4 * 64 * KIB
        assert all(s.tx_location(txid) == (h, i) for txid, h, i in txids) and len(txids) == 600
        replay_and_check(s, genesis)
        grown = s.map_size
    # Reopening with the tiny size starts from the file's size, and keeps growing when needed.
    with Store(path, map_size=64 * KIB) as s:
        assert s.map_size >= os.path.getsize(os.path.join(path, "data.mdb"))
        for _ in range(30):
            builder.commit_next(s, 20)
        assert s.tip_height() == 60 and s.map_size > grown
        replay_and_check(s, genesis)


def test_map_cap_is_a_store_error_and_writes_nothing(path: str, genesis: Genesis, builder: ChainBuilder) -> None:
    with pytest.raises(StoreError, match="bad map sizes"):
        Store(path, map_size=128 * KIB, max_map_size=64 * KIB)
    told: list[str] = []
    with Store(path, map_size=64 * KIB, max_map_size=256 * KIB) as s:
        initialize(s, genesis)
        s.on_write_error = told.append            # the node stops on this (node.fatal)
        for _ in range(100):
            before = snapshot(s)
            height = s.tip_height() + 1
            block, result, cert = builder.block(s, height, s.tip_hash(), builder.transfers(s, height, 20))
            try:
                s.commit_block(block, cert, result)
            except StoreError as exc:
                assert "full" in str(exc)
                assert told == [str(exc)]
                break
        else:
            pytest.fail("a 256 KiB map held 100 blocks of 20 txs")
        assert s.map_size == 256 * KIB and height > 3
        assert snapshot(s) == before and s.tip_height() == height - 1
        replay_and_check(s, genesis)


# -- read-only -------------------------------------------------------------------------------------
def test_readonly_sees_committed_data_and_cannot_write(path: str, genesis: Genesis, builder: ChainBuilder,
                                                       tmp_path: os.PathLike[str]) -> None:
    missing = os.path.join(str(tmp_path), "missing")
    with pytest.raises(StoreError, match="does not exist"):
        Store.open_readonly(missing)
    assert not os.path.exists(missing)
    os.mkdir(missing)
    with pytest.raises(StoreError, match="data.mdb does not exist"):
        Store.open_readonly(missing)
    assert os.listdir(missing) == []
    with Store(path) as s:
        initialize(s, genesis)
        block, result, cert = builder.commit_next(s, 3)
        next_block, next_result, next_cert = builder.block(s, 2, block.hash, [])
        expected = snapshot(s)
    with Store.open_readonly(path) as r:
        assert r.readonly and r.tip_height() == 1 and r.tip_hash() == block.hash
        assert snapshot(r) == expected
        replay_and_check(r, genesis)
        with pytest.raises(StoreError, match="read-only"):
            r.put("peers", b"k", b"v")
        with pytest.raises(StoreError, match="read-only"):
            r.write_many("peers", {b"k": b"v"})
        with pytest.raises(StoreError, match="read-only"):
            r.delete("peers", b"k")
        with pytest.raises(StoreError, match="read-only"):
            r.commit_block(next_block, next_cert, next_result)
        with pytest.raises(StoreError, match="read-only"):
            r.rollback_to(0)
        assert snapshot(r) == expected


class _Lines:
    """Lines from a child's stdout with a deadline (a hung child fails the test, never hangs it)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def next(self, timeout: float = 20.0) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line from the child within {timeout} s")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return None
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def _stop(proc: subprocess.Popen[bytes]) -> bytes:
    """Kill the child if still running and return its stderr (for failure messages)."""
    if proc.poll() is None:
        proc.kill()
    _, err = proc.communicate(timeout=20)
    return err or b""


def test_readonly_process_reads_while_the_writer_grows_the_map(path: str, genesis: Genesis,
                                                               builder: ChainBuilder) -> None:
    with Store(path) as writer:
        initialize(writer, genesis)
        builder.commit_next(writer, 2)
        proc = subprocess.Popen([sys.executable, WRITER, "read", path], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            lines = _Lines(proc)
            assert lines.next() == "ready", _stop(proc)

            def ask(cmd: str) -> list[str]:
                assert proc.stdin is not None
                proc.stdin.write(cmd.encode() + b"\n")
                proc.stdin.flush()
                line = lines.next()
                assert line is not None, _stop(proc)
                return line.split()

            tip, lthash, reader_map = ask("tip")
            assert (int(tip), lthash) == (1, hashlib.sha256(writer.lthash()).hexdigest())
            assert int(reader_map) == writer.map_size
            # Grow the writer's map past the reader's: the reader must adopt the new size and see the data.
            first_map = writer.map_size
            n_values = first_map // (1024 * KIB) + 8            # 1 MiB values, 8 MiB more than the map
            writer.write_many("peers", {b"%04d" % i: bytes([i]) * (1024 * KIB) for i in range(n_values)})
            builder.commit_next(writer, 2)
            assert writer.map_size == 2 * first_map
            tip, lthash, reader_map = ask("tip")
            assert (int(tip), lthash) == (2, hashlib.sha256(writer.lthash()).hexdigest())
            assert int(reader_map) == writer.map_size
            assert ask("write") == ["StoreError"]
            builder.commit_next(writer, 1)
            assert ask("tip")[0] == "3"
            assert writer.get("peers", b"k") is None
            assert proc.stdin is not None
            proc.stdin.write(b"quit\n")
            proc.stdin.flush()
            assert proc.wait(timeout=20) == 0
        finally:
            _stop(proc)
    shutil.rmtree(path)                                      # 72 MiB: do not leave it in pytest's tmp dirs


# -- crash safety ----------------------------------------------------------------------------------
# (lines to read before SIGKILL, then sleep s). The writer's cycle is ~20 ms (about half of it the
# LMDB commit and its fsync), so sleeps spread over 0-25 ms land while it builds a block, inside a
# commit (or a map growth) and just after one; the first kill lands in start-up or initialization.
KILLS = [(0, 0.3), (1, 0.0), (4, 0.012), (2, 0.017), (7, 0.004), (3, 0.014), (5, 0.021), (1, 0.010),
         (2, 0.015), (3, 0.019), (1, 0.025), (2, 0.013)]


def test_sigkilled_writer_leaves_a_consistent_store(path: str, genesis: Genesis,
                                                    tmp_path: os.PathLike[str]) -> None:
    genesis_path = os.path.join(str(tmp_path), "genesis.json")
    with open(genesis_path, "w") as f:
        f.write(genesis.to_json())
    last_printed = 0
    durable_tip = 0
    for n_lines, delay in KILLS:
        proc = subprocess.Popen([sys.executable, WRITER, "write", path, genesis_path, str(64 * KIB), "300", "5"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            lines = _Lines(proc)
            for i in range(n_lines):
                line = lines.next()
                assert line is not None, _stop(proc)
                height = int(line)
                # A restarted writer resumes at the durable tip, never re-commits or skips a height.
                assert height == (durable_tip + 1 if i == 0 else last_printed + 1)
                last_printed = height
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=20) == -signal.SIGKILL, _stop(proc)
        finally:
            _stop(proc)
        with Store(path) as s:                                 # as a restarted node opens it
            initialize(s, genesis)
            durable_tip = s.tip_height()
            assert durable_tip >= last_printed
            replay_and_check(s, genesis)
        with Store.open_readonly(path) as r:
            assert r.tip_height() == durable_tip
    assert last_printed >= sum(n for n, _ in KILLS) and durable_tip < 300


def test_a_key_lmdb_cannot_hold_refuses_that_write_only(path: str, genesis: Genesis) -> None:
    """Only a store that cannot write at all (disk full, I/O, map at its cap) stops the node: a key over LMDB's
    511 bytes is one refused write, so whoever could make the node write such a key cannot stop it."""
    told: list[str] = []
    with Store(path) as s:
        initialize(s, genesis)
        s.on_write_error = told.append
        with pytest.raises(StoreError, match="cannot write"):
            s.put("peers", b"k" * 600, b"v")
        assert told == []
        s.put("peers", b"k", b"v")
        assert s.get("peers", b"k") == b"v"


def test_records_committed_with_a_block_are_atomic_with_it(store: Store, builder: ChainBuilder) -> None:
    block, result, cert = builder.block(store, 1, store.tip_hash(), [])
    key = (2).to_bytes(8, "big")
    with pytest.raises(StoreError):                  # refused (a certificate of another block): nothing written
        store.commit_block(block, dataclasses.replace(cert, block_hash=b"\x00" * 32), result,
                           also={(PRIORITIES_DB, key): b"next"})
    assert store.get(PRIORITIES_DB, key) is None and store.tip_height() == 0
    store.commit_block(block, cert, result, also={(PRIORITIES_DB, key): b"next"})
    assert store.get(PRIORITIES_DB, key) == b"next" and store.tip_height() == 1


def test_consensus_commits_a_height_in_one_write_transaction(store: Store, genesis: Genesis,
                                                            builder: ChainBuilder,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Each LMDB commit is two syncs on the consensus critical path: the block, its state and the next
    proposer priorities go in one (issue 15: they were two commits a height)."""
    app = ChainApp(store, genesis.params, None, genesis.genesis_time)
    block, _result, cert = builder.block(store, 1, store.tip_hash(), [])
    writes = []
    real = store._write
    monkeypatch.setattr(store, "_write", lambda fn: writes.append(fn) or real(fn))
    app.commit(block, cert)
    assert len(writes) == 1
    assert store.tip_height() == 1 and store.get(PRIORITIES_DB, (2).to_bytes(8, "big")) is not None
