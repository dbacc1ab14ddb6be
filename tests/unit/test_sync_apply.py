"""Batch application of certified blocks (SPEC §6) on real LMDB in tmp_path.

Chains are built with ``store_crash_writer.ChainBuilder`` over a ``MemoryState``: signed transfers, a
stake that puts a wallet into the validator set at h + 2 (with enough power that certificates from then
on need its precommit) and an unstake that takes it out again, blocks built and executed by
``ledger/state.py``, certificates signed with ``Vote(...).signed`` by > 2/3 of the set of each height.
A batch store is compared byte for byte (every database) with a store built block by block with
``commit_block``; refusals compare snapshots before and after, so "nothing written" is checked.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator

import pytest

from tests.unit.store_crash_writer import (
    GENESIS_TIME,
    VALIDATOR_KEYS,
    WALLET_KEYS,
    ChainBuilder,
    genesis_state,
    initialize,
    make_genesis,
    replay_and_check,
    sign_certificate,
)
from timecoin import crypto
from timecoin.errors import Reason, StoreError
from timecoin.ledger import block as block_mod
from timecoin.ledger import tx as tx_mod
from timecoin.ledger.account import EMPTY_ACCOUNT, Account
from timecoin.ledger.block import Block, CommitCertificate, Header, Vote, VoteType, tx_root
from timecoin.ledger.genesis import Genesis
from timecoin.ledger.result import BlockResult
from timecoin.ledger.tx import TxKind
from timecoin.store import DB_NAMES, Store
from timecoin.sync.apply import BatchError, PendingChain, apply_batch, verify_batch

Certified = tuple[Block, CommitCertificate, BlockResult]
Snapshot = dict[str, list[tuple[bytes, bytes]]]

CHAIN_LEN = 60
STAKE_AT = 5                                       # wallet 0 joins the set of height 7
UNSTAKE_AT = 30                                    # ... and leaves it at height 32
BIG_STAKE = 40_000 * crypto.UNITS_PER_TIME         # = the four genesis validators: needed, not enough alone
FORGE_AT = 20                                      # index of the doctored block in refusal tests


def build_chain(genesis: Genesis, n: int, txs_per_block: int = 2, stake_at: int | None = STAKE_AT,
                unstake_at: int | None = UNSTAKE_AT) -> list[Certified]:
    """``n`` certified blocks from genesis, executed over a MemoryState."""
    builder = ChainBuilder(genesis)
    mem = genesis_state(genesis)
    prev = genesis.hash
    out: list[Certified] = []
    for height in range(1, n + 1):
        if height == stake_at:
            txs = [builder.stake(mem, 0, BIG_STAKE)]
        elif height == unstake_at:
            txs = [builder.stake(mem, 0, BIG_STAKE - genesis.params.min_stake // 2, TxKind.UNSTAKE)]
        else:
            txs = builder.transfers(mem, height, txs_per_block)
        block, result, cert = builder.block(mem, height, prev, txs)
        mem.commit(result)
        out.append((block, cert, result))
        prev = block.hash
    return out


def pairs(chain: list[Certified]) -> list[tuple[Block, CommitCertificate]]:
    return [(b, c) for b, c, _ in chain]


def snapshot(store: Store) -> Snapshot:
    return {name: store.items(name) for name in DB_NAMES}


def last_txnid(store: Store) -> int:
    """LMDB's id of the last committed write transaction: counts commits, not calls."""
    return int(store._live_env().info()["last_txnid"])


def set_at(chain: list[Certified], genesis: Genesis, height: int):  # noqa: ANN201 - ValidatorSet
    """The validator set of ``height`` (from the results, as the chain's blocks name it)."""
    return genesis.validators() if height <= 2 else chain[height - 3][2].next_validators


def recertify(block: Block, chain: list[Certified], genesis: Genesis) -> CommitCertificate:
    return sign_certificate(block, set_at(chain, genesis, block.height), genesis.chain_id)


@pytest.fixture(scope="module")
def genesis() -> Genesis:
    return make_genesis()


@pytest.fixture(scope="module")
def chain(genesis: Genesis) -> list[Certified]:
    return build_chain(genesis, CHAIN_LEN)


@pytest.fixture
def new_store(tmp_path: os.PathLike[str], genesis: Genesis) -> Iterator[Callable[..., Store]]:
    stores: list[Store] = []

    def make(name: str = "chain", **kwargs: int) -> Store:
        s = Store(os.path.join(str(tmp_path), name), **kwargs)
        initialize(s, genesis)
        stores.append(s)
        return s
    yield make
    for s in stores:
        s.close()


@pytest.fixture
def store(new_store: Callable[..., Store]) -> Store:
    return new_store()


def reference(new_store: Callable[..., Store], chain: list[Certified], upto: int) -> Store:
    """A store built the old way: ``commit_block`` once per block."""
    ref = new_store("reference")
    before = last_txnid(ref)
    for block, cert, result in chain[:upto]:
        ref.commit_block(block, cert, result)
    assert last_txnid(ref) - before == upto
    return ref


# -- the chain used by every test ---------------------------------------------------------------------
def test_chain_changes_its_validator_set_inside_a_batch(chain: list[Certified], genesis: Genesis) -> None:
    wallet = WALLET_KEYS[0].address
    before, joined, left = set_at(chain, genesis, 6), set_at(chain, genesis, 7), set_at(chain, genesis, 32)
    assert wallet not in before and wallet in joined and wallet not in left
    assert joined.power_of(wallet) == BIG_STAKE
    # From height 7 on no certificate reaches 2/3 without the wallet's precommit.
    for block, cert, _ in chain[6:UNSTAKE_AT + 1]:
        assert wallet in dict(cert.signatures), block.height
        assert block.header.validators_hash == joined.hash
    assert all(wallet not in dict(c.signatures) for _, c, _ in chain[31:])


# -- a whole batch -----------------------------------------------------------------------------------
def test_batch_of_50_equals_block_by_block(store: Store, new_store: Callable[..., Store],
                                           chain: list[Certified], genesis: Genesis) -> None:
    before = last_txnid(store)
    committed, error = apply_batch(store, genesis.params, genesis.chain_id, pairs(chain[:50]))
    assert (committed, error) == (50, None)
    assert last_txnid(store) - before == 1                       # one LMDB write transaction
    ref = reference(new_store, chain, 50)
    assert store.tip_height() == ref.tip_height() == 50
    assert store.tip_hash() == ref.tip_hash() == chain[49][0].hash
    assert store.lthash() == ref.lthash() == chain[49][2].lthash
    assert snapshot(store) == snapshot(ref)                       # accounts, undo, indexes, sets: all bytes
    replay_and_check(store, genesis)
    assert store.validator_set(52) == chain[49][2].next_validators


def test_batches_continue_from_a_committed_tip(store: Store, new_store: Callable[..., Store],
                                               chain: list[Certified], genesis: Genesis) -> None:
    for start in range(0, CHAIN_LEN, 7):                         # batch edges inside the set changes
        committed, error = apply_batch(store, genesis.params, genesis.chain_id, pairs(chain[start:start + 7]))
        assert error is None and committed == len(chain[start:start + 7])
    assert snapshot(store) == snapshot(reference(new_store, chain, CHAIN_LEN))


def test_pending_chain_layers_results_over_the_store(store: Store, chain: list[Certified],
                                                     genesis: Genesis) -> None:
    apply_batch(store, genesis.params, genesis.chain_id, pairs(chain[:2]))
    view = PendingChain(store)
    assert (view.tip_height(), view.tip_hash(), view.tip_time_ms()) == (2, chain[1][0].hash,
                                                                       chain[1][0].header.timestamp)
    for block, _, result in chain[2:12]:
        view.push(block, result)
    wallet = WALLET_KEYS[0].address
    assert store.validator_set(7) is None                       # beyond what the store knows...
    assert view.validator_set(7) == chain[4][2].next_validators    # ... from block 5's result
    assert wallet in view.validator_set(7)
    assert view.validator_set(14) == chain[11][2].next_validators
    assert view.validator_set(2) == store.validator_set(2)
    assert view.validator_set(15) is None
    stake_account = view.get_account(wallet)
    assert stake_account is not None and stake_account.stake == BIG_STAKE
    assert (store.get_account(wallet) or EMPTY_ACCOUNT).stake == 0
    assert view.lthash() == chain[11][2].lthash != store.lthash()
    assert (view.tip_height(), view.tip_hash(), view.tip_time_ms()) == (12, chain[11][0].hash,
                                                                       chain[11][0].header.timestamp)
    block_5 = view.get_block(5)
    block_1 = view.get_block(1)
    assert block_5 is not None and block_5.hash == chain[4][0].hash
    assert block_1 is not None and block_1.hash == chain[0][0].hash
    assert view.get_block(13) is None
    with pytest.raises(ValueError):
        view.push(chain[20][0], chain[20][2])


def test_pending_chain_hides_emptied_accounts(store: Store, genesis: Genesis) -> None:
    view = PendingChain(store)
    address = VALIDATOR_KEYS[0].address
    assert view.get_account(address) is not None
    result = BlockResult(1, {address: EMPTY_ACCOUNT, b"\x01" * 20: Account(balance=5)}, {}, bytes(2048),
                         bytes(32), genesis.validators())
    view.push(Block(Header(1, 0, genesis.hash, GENESIS_TIME, address, bytes(32), bytes(32), bytes(32),
                           bytes(32))), result)
    assert view.get_account(address) is None                     # as the store: empty = absent
    assert view.get_account(b"\x01" * 20) == Account(balance=5)


# -- refusals ----------------------------------------------------------------------------------------
def forge(kind: str, block: Block, cert: CommitCertificate, chain: list[Certified],
          genesis: Genesis) -> CommitCertificate:
    if kind == "flipped_signature":
        addr, sig = cert.signatures[0]
        return dataclasses.replace(cert, signatures=((addr, sig[:10] + bytes([sig[10] ^ 1]) + sig[11:]),
                                                     *cert.signatures[1:]))
    if kind == "other_chain":
        return sign_certificate(block, set_at(chain, genesis, block.height), "timecoin-elsewhere")
    if kind == "no_quorum":
        return dataclasses.replace(cert, signatures=cert.signatures[:1])
    if kind == "non_member":   # wallet 2 never stakes; its precommit does not count
        stranger = Vote(VoteType.PRECOMMIT, block.height, cert.round, block.hash,
                        WALLET_KEYS[2].address).signed(WALLET_KEYS[2], genesis.chain_id)
        return CommitCertificate.from_votes([stranger, *cert.votes()])
    if kind == "other_block":
        return chain[block.height][1]
    if kind == "unordered":
        return dataclasses.replace(cert, signatures=tuple(reversed(cert.signatures)))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["flipped_signature", "other_chain", "no_quorum", "non_member",
                                  "other_block", "unordered"])
def test_forged_certificate_commits_exactly_the_prefix(kind: str, store: Store, new_store: Callable[..., Store],
                                                       chain: list[Certified], genesis: Genesis) -> None:
    items = pairs(chain[:40])
    block, cert = items[FORGE_AT]
    items[FORGE_AT] = (block, forge(kind, block, cert, chain, genesis))
    assert len(items[FORGE_AT][1].signatures) >= 1
    committed, error = apply_batch(store, genesis.params, genesis.chain_id, items)
    assert committed == FORGE_AT
    assert error is not None
    assert (error.index, error.height, error.reason) == (FORGE_AT, FORGE_AT + 1, Reason.BAD_CERTIFICATE)
    assert store.tip_height() == FORGE_AT and store.tip_hash() == chain[FORGE_AT - 1][0].hash
    assert snapshot(store) == snapshot(reference(new_store, chain, FORGE_AT))
    # The same blocks with the true certificate then apply from where the batch stopped.
    assert apply_batch(store, genesis.params, genesis.chain_id, pairs(chain[FORGE_AT:40])) == (40 - FORGE_AT, None)
    assert store.tip_hash() == chain[39][0].hash


def test_gap_or_wrong_first_height_is_wrong_height(store: Store, chain: list[Certified], genesis: Genesis) -> None:
    items = pairs(chain[:5]) + pairs(chain[6:10])
    committed, error = apply_batch(store, genesis.params, genesis.chain_id, items)
    assert committed == 5 and error is not None
    assert (error.index, error.height, error.reason) == (5, 7, Reason.WRONG_HEIGHT)
    assert "expected height 6" in error.detail
    # The batch must start at tip + 1: neither ahead nor again.
    for start in (6, 0):
        n, err = apply_batch(store, genesis.params, genesis.chain_id, pairs(chain[start:start + 3]))
        assert n == 0 and err == BatchError(0, start + 1, Reason.WRONG_HEIGHT, "expected height 6")
    assert store.tip_height() == 5


def test_wrong_prev_hash_is_wrong_height(store: Store, chain: list[Certified], genesis: Genesis) -> None:
    block = chain[FORGE_AT][0]
    bad = Block(dataclasses.replace(block.header, prev_hash=bytes(32)), block.txs, block.evidence)
    items = pairs(chain[:FORGE_AT]) + [(bad, recertify(bad, chain, genesis))]   # a valid certificate
    committed, error = apply_batch(store, genesis.params, genesis.chain_id, items)
    assert committed == FORGE_AT and error is not None
    assert (error.index, error.height, error.reason) == (FORGE_AT, FORGE_AT + 1, Reason.WRONG_HEIGHT)
    assert "prev_hash" in error.detail
    assert store.tip_hash() == chain[FORGE_AT - 1][0].hash


def test_invalid_block_reports_its_reason(store: Store, new_store: Callable[..., Store],
                                          chain: list[Certified], genesis: Genesis) -> None:
    block = chain[FORGE_AT][0]
    bad_root = Block(dataclasses.replace(block.header, state_root=bytes(32)), block.txs, block.evidence)
    items = pairs(chain[:30])
    items[FORGE_AT] = (bad_root, recertify(bad_root, chain, genesis))
    committed, error = apply_batch(store, genesis.params, genesis.chain_id, items)
    assert committed == FORGE_AT and error is not None
    assert (error.index, error.height, error.reason) == (FORGE_AT, FORGE_AT + 1, Reason.BAD_BLOCK)
    assert "state_root" in error.detail
    assert snapshot(store) == snapshot(reference(new_store, chain, FORGE_AT))


def test_replayed_transaction_reports_bad_nonce(store: Store, chain: list[Certified], genesis: Genesis) -> None:
    block, previous = chain[FORGE_AT][0], chain[FORGE_AT - 1][0]
    assert previous.txs
    replay = Block(dataclasses.replace(block.header, tx_root=tx_root(previous.txs)), previous.txs)
    items = pairs(chain[:FORGE_AT]) + [(replay, recertify(replay, chain, genesis))]
    committed, error = apply_batch(store, genesis.params, genesis.chain_id, items)
    assert committed == FORGE_AT and error is not None
    assert (error.index, error.reason) == (FORGE_AT, Reason.BAD_NONCE)


def test_timestamps_from_the_future_or_before_genesis(store: Store, chain: list[Certified],
                                                      genesis: Genesis) -> None:
    now = GENESIS_TIME + 5_000                  # block h is at GENESIS_TIME + h s; drift allowed 10 s
    results, error = verify_batch(store, genesis.params, genesis.chain_id, pairs(chain[:30]), now_ms=now)
    assert len(results) == 15 and error is not None
    assert (error.index, error.height, error.reason) == (15, 16, Reason.BAD_TIMESTAMP)
    assert store.tip_height() == 0                              # verify_batch writes nothing
    builder = ChainBuilder(genesis)
    early, _, cert = builder.block(genesis_state(genesis), 1, genesis.hash, [], timestamp=GENESIS_TIME - 1)
    _, error = verify_batch(store, genesis.params, genesis.chain_id, [(early, cert)],
                            genesis_time_ms=GENESIS_TIME)
    assert error is not None and error.reason == Reason.BAD_TIMESTAMP
    assert verify_batch(store, genesis.params, genesis.chain_id, [(early, cert)])[1] is None


def test_signatures_are_verified_once(store: Store, chain: list[Certified], genesis: Genesis,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh caches and blocks decoded from bytes (as from the wire): each signature checked exactly once."""
    fresh = tx_mod._VerifiedCache()
    monkeypatch.setattr(tx_mod, "VERIFIED", fresh)
    monkeypatch.setattr(block_mod, "VERIFIED", fresh)
    calls: list[bytes] = []
    real_verify = crypto.verify

    def counting_verify(pubkey: bytes, tag: bytes, chain_id: str, payload: bytes, signature: bytes) -> bool:
        calls.append(signature)
        return real_verify(pubkey, tag, chain_id, payload, signature)
    monkeypatch.setattr(crypto, "verify", counting_verify)
    items = [(Block.decode(b.encoded), CommitCertificate.decode(c.encoded)) for b, c, _ in chain[:40]]
    expected = {t.signature for b, _ in items for t in b.txs} | {s for _, c in items for _, s in c.signatures}
    results, error = verify_batch(store, genesis.params, genesis.chain_id, items)
    assert error is None and len(results) == 40
    assert len(calls) == len(expected) == sum(len(b.txs) + len(c.signatures) for b, c in items)
    assert set(calls) == expected
    calls.clear()
    assert apply_batch(store, genesis.params, genesis.chain_id, items) == (40, None)
    assert calls == []                                          # a second pass re-verifies nothing


# -- Store.commit_blocks -----------------------------------------------------------------------------
def test_commit_blocks_is_all_or_nothing(store: Store, chain: list[Certified]) -> None:
    store.commit_blocks(chain[:3])
    before, txnid = snapshot(store), last_txnid(store)
    block, cert, result = chain[10]
    address, old = next(iter(result.undo.items()))
    lying_undo = dataclasses.replace(result, undo={**result.undo, address: Account(balance=(old.balance + 1
                                                                                          if old else 1))})
    cases = {
        "undo against another state": chain[3:10] + [(block, cert, lying_undo)] + chain[11:20],
        "gap": chain[3:10] + chain[11:20],
        "result of another block": chain[3:10] + [(block, cert, chain[11][2])] + chain[11:20],
        "certificate of another block": chain[3:10] + [(block, chain[11][1], result)] + chain[11:20],
        "already committed": chain[2:10],
    }
    for name, items in cases.items():
        with pytest.raises(StoreError):
            store.commit_blocks(items)
        assert snapshot(store) == before, name
    assert last_txnid(store) == txnid and store.tip_height() == 3
    store.commit_blocks([])
    assert last_txnid(store) == txnid
    store.commit_blocks(chain[3:20])
    assert store.tip_hash() == chain[19][0].hash


def test_commit_blocks_undo_records_roll_back_exactly(store: Store, new_store: Callable[..., Store],
                                                      chain: list[Certified], genesis: Genesis) -> None:
    store.commit_blocks(chain[:50])
    removed = store.rollback_to(25)
    assert [b.hash for b in removed] == [b.hash for b, _, _ in chain[25:50]]
    assert snapshot(store) == snapshot(reference(new_store, chain, 25))
    replay_and_check(store, genesis)


def test_commit_blocks_grows_the_map_and_retries(new_store: Callable[..., Store], chain: list[Certified]) -> None:
    small = new_store("small", map_size=64 * 1024)
    start = small.map_size
    small.commit_blocks(chain)
    assert small.map_size > start and small.tip_height() == CHAIN_LEN
    assert small.lthash() == chain[-1][2].lthash


# -- throughput (printed with -s; not asserted) ------------------------------------------------------
def _measure(store: Store, genesis: Genesis, chain: list[Certified], batch: int,
             monkeypatch: pytest.MonkeyPatch) -> float:
    """Blocks/s applying ``chain`` in batches, as sync would: decoded from bytes, nothing cached."""
    fresh = tx_mod._VerifiedCache()
    monkeypatch.setattr(tx_mod, "VERIFIED", fresh)
    monkeypatch.setattr(block_mod, "VERIFIED", fresh)
    items = [(Block.decode(b.encoded), CommitCertificate.decode(c.encoded)) for b, c, _ in chain]
    started = time.perf_counter()
    for i in range(0, len(items), batch):
        assert apply_batch(store, genesis.params, genesis.chain_id, items[i:i + batch]) == (
            len(items[i:i + batch]), None)
    elapsed = time.perf_counter() - started
    assert store.tip_hash() == chain[-1][0].hash
    return len(items) / elapsed


# The full 1,000 x 100-tx run takes about a minute (half of it building the chain): TIMECOIN_BENCH=1.
FULL = os.environ.get("TIMECOIN_BENCH") == "1"


@pytest.mark.parametrize(("blocks", "txs"), [(5_000, 0), (1_000 if FULL else 100, 100)])
def test_throughput(blocks: int, txs: int, new_store: Callable[..., Store], genesis: Genesis,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    built = time.perf_counter()
    long_chain = build_chain(genesis, blocks, txs, stake_at=None, unstake_at=None)
    built = time.perf_counter() - built
    rate = _measure(new_store(f"bench-{txs}", map_size=256 * 1024 * 1024), genesis, long_chain, 100, monkeypatch)
    print(f"\napply_batch: {blocks} blocks of {txs} txs in batches of 100: {rate:,.0f} blocks/s "
          f"({rate * txs:,.0f} tx/s); building the chain took {built:.1f} s")
