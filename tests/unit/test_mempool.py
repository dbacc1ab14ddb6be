"""The mempool (timecoin/mempool.py): every admission, replacement, cap and selection rule of its
docstring, over real state: each test using the ``world`` fixture runs twice, over ``MemoryStore`` and
over the LMDB ``Store`` in ``tmp_path`` (``ledger_backend`` in tests/conftest.py), blocks committed
through the backend's ``commit_block``."""
from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import LedgerFactory
from timecoin.crypto import PrivateKey
from timecoin.errors import Reason, ValidationError
from timecoin.ledger.account import Account
from timecoin.ledger.block import CommitCertificate, Vote, VoteType
from timecoin.ledger.genesis import Genesis, GenesisAccount
from timecoin.ledger.state import build_block, execute_block
from timecoin.ledger.tx import ZERO_ADDRESS, Transaction, TxKind
from timecoin.mempool import Mempool
from timecoin.store import Store

CHAIN = "timecoin-mempool-test"
MIN_FEE = 1_000
BALANCE = 100_000
VALIDATOR = PrivateKey(b"\x01" * 32)
SINK = PrivateKey(b"\x02" * 32).address          # recipient of test transfers


def key(n: int) -> PrivateKey:
    return PrivateKey(hashlib.sha256(b"mempool-test-key-%d" % n).digest())


A, B, C, D = key(1), key(2), key(3), key(4)
USERS = [key(i) for i in range(1, 41)]


def genesis(balance: int = BALANCE, **params: int) -> Genesis:
    return Genesis.for_validators(
        [VALIDATOR.public_key], CHAIN, genesis_time=1_767_225_600_000,
        extra=tuple(GenesisAccount(k.address, balance) for k in USERS),
        **{"min_fee": MIN_FEE, "unbonding_period": 10, **params})


def transfer(k: PrivateKey, nonce: int, fee: int = MIN_FEE, amount: int = 1_000, to: bytes = SINK,
             chain: str = CHAIN) -> Transaction:
    return Transaction.create(k, TxKind.TRANSFER, chain, nonce, fee, amount, to)


def stake(k: PrivateKey, nonce: int, amount: int, fee: int = MIN_FEE) -> Transaction:
    return Transaction.create(k, TxKind.STAKE, CHAIN, nonce, fee, amount)


def unstake(k: PrivateKey, nonce: int, amount: int, fee: int = MIN_FEE) -> Transaction:
    return Transaction.create(k, TxKind.UNSTAKE, CHAIN, nonce, fee, amount)


class World:
    """A backend at genesis (MemoryStore or LMDB), a settable next height, and a mempool over them."""

    def __init__(self, make: LedgerFactory, max_txs: int = 1_000, max_bytes: int = 1 << 20,
                 min_relay_fee: int = 0, balance: int = BALANCE, params: dict[str, int] | None = None,
                 **kw: int) -> None:
        self.genesis = genesis(balance, **(params or {}))
        self.backend = make(self.genesis, signers=(VALIDATOR,))
        self.state = self.backend.state
        self.height = 1
        self.pool = Mempool(self.genesis.params, self.state, max_txs=max_txs, max_bytes=max_bytes,
                            min_relay_fee=min_relay_fee, height_fn=lambda: self.height, **kw)

    def set_account(self, k: PrivateKey, **fields: object) -> None:
        self.backend.set_account(k.address, dataclasses.replace(
            self.state.get_account(k.address) or Account(), **fields))

    def commit(self, txs: list[Transaction]) -> list[Transaction]:
        """Execute and commit block ``self.height`` with ``txs`` (all must apply); returns the applied txs."""
        result = execute_block(self.state, self.genesis.params, self.height, VALIDATOR.address, txs)
        self.backend.commit(result, VALIDATOR.address)
        self.height += 1
        return list(result.applied)


WorldFactory = Callable[..., World]


@pytest.fixture
def world(ledger_backend: LedgerFactory) -> WorldFactory:
    """``world(**kw)``: a World over this run's backend."""
    return lambda **kw: World(ledger_backend, **kw)


def rejects(fn: Callable[[], object], reason: Reason) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        fn()
    assert info.value.reason == reason, str(info.value)
    return info.value


# -- admission ------------------------------------------------------------------------------------
def test_accepts_a_valid_tx_and_reports_it(world: WorldFactory) -> None:
    w = world(max_txs=10, max_bytes=5_000, min_relay_fee=1_500)
    tx = transfer(A, 0, fee=2_000)
    w.pool.add(tx)
    assert len(w.pool) == 1
    assert tx.id in w.pool and b"\x00" * 32 not in w.pool
    assert w.pool.get(tx.id) == tx and w.pool.get(b"\x00" * 32) is None
    assert w.pool.size_bytes == tx.size > 100
    assert w.pool.txids() == [tx.id]
    assert w.pool.info() == {"size": 1, "bytes": tx.size, "max_txs": 10, "max_bytes": 5_000, "min_fee": 1_500}
    assert w.pool.pending_nonce(A.address) == 1 and w.pool.pending_nonce(B.address) == 0


def test_duplicate(world: WorldFactory) -> None:
    w = world()
    tx = transfer(A, 0)
    w.pool.add(tx)
    rejects(lambda: w.pool.add(tx), Reason.DUPLICATE)
    assert len(w.pool) == 1


def test_bad_signature(world: WorldFactory) -> None:
    w = world()
    forged = dataclasses.replace(transfer(A, 0), signature=transfer(B, 0).signature)
    rejects(lambda: w.pool.add(forged), Reason.BAD_SIGNATURE)
    assert len(w.pool) == 0


def test_wrong_chain(world: WorldFactory) -> None:
    w = world()
    rejects(lambda: w.pool.add(transfer(A, 0, chain="other-chain")), Reason.WRONG_CHAIN)


def test_fee_floor_is_the_higher_of_chain_and_relay_minimum(world: WorldFactory) -> None:
    low_relay = world(min_relay_fee=10)
    rejects(lambda: low_relay.pool.add(transfer(A, 0, fee=MIN_FEE - 1)), Reason.FEE_TOO_LOW)
    low_relay.pool.add(transfer(A, 0, fee=MIN_FEE))
    high_relay = world(min_relay_fee=5_000)
    assert high_relay.pool.info()["min_fee"] == 5_000
    rejects(lambda: high_relay.pool.add(transfer(A, 0, fee=4_999)), Reason.FEE_TOO_LOW)
    high_relay.pool.add(transfer(A, 0, fee=5_000))
    assert len(low_relay.pool) == len(high_relay.pool) == 1


def test_bad_amount(world: WorldFactory) -> None:
    w = world()
    rejects(lambda: w.pool.add(transfer(A, 0, amount=0)), Reason.BAD_AMOUNT)
    rejects(lambda: w.pool.add(transfer(A, 0, to=ZERO_ADDRESS)), Reason.BAD_AMOUNT)
    assert len(w.pool) == 0


# -- nonces -----------------------------------------------------------------------------------------
def test_nonce_stale_gap_and_chain(world: WorldFactory) -> None:
    w = world()
    w.set_account(A, nonce=3)
    rejects(lambda: w.pool.add(transfer(A, 2)), Reason.BAD_NONCE)
    rejects(lambda: w.pool.add(transfer(A, 4)), Reason.BAD_NONCE)
    for n in (3, 4, 5):
        w.pool.add(transfer(A, n))
    rejects(lambda: w.pool.add(transfer(A, 7)), Reason.BAD_NONCE)
    assert w.pool.pending_nonce(A.address) == 6
    assert len(w.pool) == 3


def test_per_sender_chain_cap(world: WorldFactory) -> None:
    w = world(max_per_sender=4)
    for n in range(4):
        w.pool.add(transfer(A, n))
    err = rejects(lambda: w.pool.add(transfer(A, 4)), Reason.MEMPOOL_FULL)
    assert "4 pending" in str(err)
    w.pool.add(transfer(B, 0))              # other senders are unaffected
    assert len(w.pool) == 5


# -- state after the sender's pending txs ---------------------------------------------------------
def test_funds_judged_after_pending_txs(world: WorldFactory) -> None:
    w = world(balance=10_000)
    w.pool.add(transfer(A, 0, amount=5_000))          # leaves 4,000
    rejects(lambda: w.pool.add(transfer(A, 1, amount=3_001)), Reason.INSUFFICIENT_FUNDS)
    w.pool.add(transfer(A, 1, amount=3_000))          # exactly 3,000 + 1,000 fee
    assert len(w.pool) == 2


def test_incoming_pending_transfers_are_not_counted(world: WorldFactory) -> None:
    w = world(balance=10_000)
    w.pool.add(transfer(B, 0, amount=8_000, to=A.address))
    rejects(lambda: w.pool.add(transfer(A, 0, amount=12_000)), Reason.INSUFFICIENT_FUNDS)


def test_stake_and_unstake_judged_after_pending_txs(world: WorldFactory) -> None:
    w = world()
    rejects(lambda: w.pool.add(unstake(A, 0, 1)), Reason.INSUFFICIENT_STAKE)
    w.pool.add(stake(A, 0, 50_000))
    rejects(lambda: w.pool.add(unstake(A, 1, 50_001)), Reason.INSUFFICIENT_STAKE)
    w.pool.add(unstake(A, 1, 50_000))
    rejects(lambda: w.pool.add(stake(A, 2, 48_000)), Reason.INSUFFICIENT_FUNDS)  # 100k - 50k - 2 fees
    w.pool.add(stake(A, 2, 47_000))
    assert len(w.pool) == 3


def test_unbonding_entry_cap_counts_pending_unstakes(world: WorldFactory) -> None:
    """max_unbonding_entries is enforced at admission, after the sender's pending txs, as in a block."""
    w = world(params={"max_unbonding_entries": 3})
    w.set_account(A, stake=60_000, unbonding=((1_000, 50),))
    w.pool.add(unstake(A, 0, 10_000))
    w.pool.add(unstake(A, 1, 10_000))                    # 3 entries once both apply
    err = rejects(lambda: w.pool.add(unstake(A, 2, 10_000)), Reason.BAD_AMOUNT)
    assert "3 unbonding entries" in str(err)
    assert len(w.pool) == 2
    w.pool.add(transfer(A, 2))                           # other kinds still pass
    w.height = 50                                        # the first entry has matured by then
    w.pool.add(unstake(A, 3, 10_000))
    assert len(w.pool) == 4


def test_unbonding_maturity_uses_the_next_height(world: WorldFactory) -> None:
    w = world()
    w.set_account(A, balance=2_000, unbonding=((50_000, 5),))
    w.height = 4
    rejects(lambda: w.pool.add(transfer(A, 0, amount=40_000)), Reason.INSUFFICIENT_FUNDS)
    w.height = 5
    w.pool.add(transfer(A, 0, amount=40_000))
    assert len(w.pool) == 1


def test_appending_rejudges_the_chain_when_height_or_account_changed(world: WorldFactory) -> None:
    w = world()
    w.set_account(A, balance=2_000, unbonding=((50_000, 5),))
    w.height = 5
    w.pool.add(transfer(A, 0, amount=1))                 # judged with the 50,000 matured
    w.height = 4                                         # e.g. a rollback: not matured any more
    rejects(lambda: w.pool.add(transfer(A, 1, amount=40_000)), Reason.INSUFFICIENT_FUNDS)
    w.height = 5
    w.set_account(A, unbonding=((30_000, 5),))           # the committed account changed under the chain
    rejects(lambda: w.pool.add(transfer(A, 1, amount=40_000)), Reason.INSUFFICIENT_FUNDS)
    w.set_account(A, unbonding=((50_000, 5),))
    w.pool.add(transfer(A, 1, amount=40_000))
    assert len(w.pool) == 2


# -- replace-by-nonce -------------------------------------------------------------------------------
def test_replacement_fee_rules(world: WorldFactory) -> None:
    w = world(balance=1_000_000)
    old = transfer(A, 0, fee=1_000)
    w.pool.add(old)
    # 1.1x would be 1,100 but the increment must also be at least the fee floor: 2,000 needed.
    err = rejects(lambda: w.pool.add(transfer(A, 0, fee=1_999)), Reason.REPLACEMENT_UNDERPRICED)
    assert "2000" in str(err)
    new = transfer(A, 0, fee=2_000)
    w.pool.add(new)
    assert old.id not in w.pool and new.id in w.pool and len(w.pool) == 1
    assert w.pool.size_bytes == new.size
    # Large fees: the 10 % rule binds (old 100,000 -> at least 110,000).
    w.pool.add(transfer(B, 0, fee=100_000, amount=1))
    rejects(lambda: w.pool.add(transfer(B, 0, fee=109_999, amount=1)), Reason.REPLACEMENT_UNDERPRICED)
    w.pool.add(transfer(B, 0, fee=110_000, amount=1))
    assert len(w.pool) == 2


def test_replacement_is_validated_like_a_new_tx(world: WorldFactory) -> None:
    w = world(balance=10_000)
    w.pool.add(transfer(A, 0, amount=1_000))
    rejects(lambda: w.pool.add(transfer(A, 0, fee=3_000, amount=8_000)), Reason.INSUFFICIENT_FUNDS)
    assert len(w.pool) == 1


def test_replacement_drops_later_txs_that_no_longer_validate(world: WorldFactory) -> None:
    w = world(balance=10_000)
    chain = [transfer(A, n, amount=1_000) for n in range(4)]     # 4 x 2,000 = 8,000 of 10,000
    for tx in chain:
        w.pool.add(tx)
    # Replace nonce 1 with a tx spending 4,000 + 2,000: nonce 2 still fits (2,000 left), nonce 3 does not.
    new = transfer(A, 1, fee=2_000, amount=4_000)
    w.pool.add(new)
    assert [tx.id in w.pool for tx in chain] == [True, False, True, False]
    assert new.id in w.pool and len(w.pool) == 3
    assert w.pool.size_bytes == 3 * new.size
    assert w.pool.pending_nonce(A.address) == 3
    assert [tx.nonce for tx in w.pool.iter_selected()] == [0, 1, 2]
    # The sender's next tx is judged after the replacement: 10,000 - 2,000 - 6,000 - 2,000 = 0 left.
    rejects(lambda: w.pool.add(transfer(A, 3, amount=1)), Reason.INSUFFICIENT_FUNDS)


# -- caps and eviction ------------------------------------------------------------------------------
def test_count_cap_evicts_lowest_fee_only_for_a_better_payer(world: WorldFactory) -> None:
    w = world(max_txs=3)
    txs = {f: transfer(k, 0, fee=f) for k, f in ((A, 2_000), (B, 3_000), (C, 4_000))}
    for tx in txs.values():
        w.pool.add(tx)
    before = set(w.pool.txids())
    rejects(lambda: w.pool.add(transfer(D, 0, fee=1_500)), Reason.MEMPOOL_FULL)
    rejects(lambda: w.pool.add(transfer(D, 0, fee=2_000)), Reason.MEMPOOL_FULL)    # equal is not more
    assert set(w.pool.txids()) == before
    newcomer = transfer(D, 0, fee=2_500)
    w.pool.add(newcomer)
    assert txs[2_000].id not in w.pool and newcomer.id in w.pool and len(w.pool) == 3


def test_byte_cap(world: WorldFactory) -> None:
    size = transfer(A, 0).size
    w = world(max_txs=100, max_bytes=2 * size + size // 2)
    w.pool.add(transfer(A, 0, fee=1_000))
    w.pool.add(transfer(B, 0, fee=2_000))
    rejects(lambda: w.pool.add(transfer(C, 0, fee=1_000)), Reason.MEMPOOL_FULL)
    w.pool.add(transfer(C, 0, fee=1_001))
    assert w.pool.size_bytes == 2 * size <= w.pool.max_bytes
    assert {tx.sender for tx in w.pool.iter_selected()} == {B.public_key, C.public_key}


def test_a_tx_larger_than_the_byte_cap_is_refused(world: WorldFactory) -> None:
    w = world(max_bytes=50)
    rejects(lambda: w.pool.add(transfer(A, 0)), Reason.MEMPOOL_FULL)
    assert len(w.pool) == 0 and w.pool.size_bytes == 0


def test_only_chain_tails_are_evicted(world: WorldFactory) -> None:
    w = world(max_txs=3)
    a0, a1 = transfer(A, 0, fee=1_100), transfer(A, 1, fee=9_000)
    b0 = transfer(B, 0, fee=3_000)
    for tx in (a0, a1, b0):
        w.pool.add(tx)
    # a0 pays least but is not a tail: evicting it would strand a1. The cheapest tail is b0 (3,000).
    rejects(lambda: w.pool.add(transfer(C, 0, fee=2_000)), Reason.MEMPOOL_FULL)
    assert set(w.pool.txids()) == {a0.id, a1.id, b0.id}
    c0 = transfer(C, 0, fee=4_000)
    w.pool.add(c0)
    assert set(w.pool.txids()) == {a0.id, a1.id, c0.id}


def test_eviction_exposes_the_predecessor(world: WorldFactory) -> None:
    w = world(max_txs=2)
    a0, a1 = transfer(A, 0, fee=1_500), transfer(A, 1, fee=1_200)
    w.pool.add(a0)
    w.pool.add(a1)
    c0 = transfer(C, 0, fee=2_000)
    w.pool.add(c0)                                       # evicts the tail a1
    assert set(w.pool.txids()) == {a0.id, c0.id}
    d0 = transfer(D, 0, fee=1_600)
    w.pool.add(d0)                                       # a0 is now a tail and pays less
    assert set(w.pool.txids()) == {c0.id, d0.id}
    assert w.pool.pending_nonce(A.address) == 0
    again = transfer(A, 0, fee=3_000)                    # the evicted sender can come back paying more
    w.pool.add(again)
    assert set(w.pool.txids()) == {c0.id, again.id}


def test_an_evicted_tail_can_be_resent(world: WorldFactory) -> None:
    w = world(max_txs=3)
    a0, a1 = transfer(A, 0, fee=5_000), transfer(A, 1, fee=1_200)
    for tx in (a0, a1, transfer(B, 0, fee=5_000)):
        w.pool.add(tx)
    w.pool.add(transfer(C, 0, fee=2_000))                # evicts a1
    assert a1.id not in w.pool and w.pool.pending_nonce(A.address) == 1
    a1_again = transfer(A, 1, fee=2_500, amount=7)
    w.pool.add(a1_again)                                 # nonce 1 again, judged after a0 only
    assert a1_again.id in w.pool and len(w.pool) == 3


def test_a_predecessor_seen_earlier_as_a_non_tail_is_still_evictable(world: WorldFactory) -> None:
    w = world(max_txs=3)
    a0, a1, b0 = transfer(A, 0, fee=1_100), transfer(A, 1, fee=2_000), transfer(B, 0, fee=3_000)
    for tx in (a0, a1, b0):
        w.pool.add(tx)
    rejects(lambda: w.pool.add(transfer(C, 0, fee=1_500)), Reason.MEMPOOL_FULL)  # looks at a0, then a1
    c0 = transfer(C, 0, fee=2_500)
    w.pool.add(c0)                                       # evicts a1; a0 becomes a tail
    d0 = transfer(D, 0, fee=1_200)
    w.pool.add(d0)                                       # so a0 (1,100) makes room for 1,200
    assert set(w.pool.txids()) == {b0.id, c0.id, d0.id}


def test_a_sender_never_evicts_its_own_chain(world: WorldFactory) -> None:
    w = world(max_txs=2)
    w.pool.add(transfer(A, 0))
    w.pool.add(transfer(A, 1))
    rejects(lambda: w.pool.add(transfer(A, 2, fee=50_000)), Reason.MEMPOOL_FULL)
    assert len(w.pool) == 2 and w.pool.pending_nonce(A.address) == 2


# -- selection --------------------------------------------------------------------------------------
def test_selection_order_fee_then_arrival_then_nonce(world: WorldFactory) -> None:
    w = world()
    a0, a1 = transfer(A, 0, fee=1_000), transfer(A, 1, fee=9_000)
    b0, c0 = transfer(B, 0, fee=5_000), transfer(C, 0, fee=5_000)
    d0, d1 = transfer(D, 0, fee=7_000), transfer(D, 1, fee=2_000)
    for tx in (a0, a1, b0, c0, d0, d1):
        w.pool.add(tx)
    assert [tx.id for tx in w.pool.iter_selected()] == [x.id for x in (d0, b0, c0, d1, a0, a1)]
    # The order is one a block accepts in full.
    result = execute_block(w.state, w.genesis.params, 1, VALIDATOR.address, w.pool.iter_selected(),
                           skip_invalid=True)
    assert len(result.applied) == 6 and result.rejected == ()


def test_selection_is_a_snapshot(world: WorldFactory) -> None:
    w = world()
    for k in (A, B, C):
        w.pool.add(transfer(k, 0))
    it = w.pool.iter_selected()
    first = next(it)
    w.pool.add(transfer(D, 0, fee=50_000))
    w.pool.remove_committed(w.commit([first]))
    assert len(list(it)) == 2
    assert len(w.pool) == 3


# -- after a block ----------------------------------------------------------------------------------
def test_remove_committed_drops_included_stale_and_invalidated(world: WorldFactory) -> None:
    w = world()
    a = [transfer(A, n, amount=10_000) for n in range(3)]            # each needs 11,000
    b0 = transfer(B, 0)
    for tx in (*a, b0):
        w.pool.add(tx)
    # A block (from another proposer) spends A's nonce 0 differently: 85,000 + fee leaves 14,000.
    other = transfer(A, 0, fee=1_000, amount=85_000)
    w.pool.remove_committed(w.commit([other]))
    assert [tx.id in w.pool for tx in a] == [False, True, False]   # a0 stale, a1 fits, a2 no longer
    assert b0.id in w.pool and len(w.pool) == 2
    assert w.pool.size_bytes == a[1].size + b0.size
    assert w.pool.pending_nonce(A.address) == 2


def test_remove_committed_of_own_txs(world: WorldFactory) -> None:
    w = world()
    txs = [transfer(k, n) for k in (A, B) for n in range(3)]
    for tx in txs:
        w.pool.add(tx)
    selected = list(w.pool.iter_selected())[:4]
    applied = w.commit(selected)
    assert len(applied) == 4
    w.pool.remove_committed(applied)
    assert len(w.pool) == 2 and not any(tx.id in w.pool for tx in applied)
    assert w.commit(list(w.pool.iter_selected()))    # the rest is still a valid block
    rejects(lambda: w.pool.add(transfer(A, 2, fee=5_000)), Reason.BAD_NONCE)


def test_add_resyncs_a_sender_when_state_moved_without_remove_committed(world: WorldFactory) -> None:
    w = world()
    a0 = transfer(A, 0)
    w.pool.add(a0)
    w.commit([a0])                                       # remove_committed not called
    a1 = transfer(A, 1)
    w.pool.add(a1)
    assert a0.id not in w.pool and a1.id in w.pool and len(w.pool) == 1


def test_revalidate_after_an_outside_state_change(world: WorldFactory) -> None:
    w = world()
    w.set_account(A, stake=60_000)
    w.pool.add(unstake(A, 0, 60_000))
    w.pool.add(transfer(B, 0))
    w.set_account(A, stake=57_000)                       # e.g. slashed by evidence in a block
    assert w.pool.revalidate() == 1
    assert len(w.pool) == 1 and w.pool.pending_nonce(A.address) == 0


def test_revalidate_after_a_rollback_drops_chains_with_a_gap(world: WorldFactory) -> None:
    w = world()
    w.set_account(A, nonce=5)
    w.pool.add(transfer(A, 5))
    w.pool.add(transfer(A, 6))
    w.set_account(A, nonce=3)                            # the blocks that used nonces 3 and 4 were undone
    assert w.pool.revalidate([A.address]) == 2
    assert len(w.pool) == 0 and w.pool.size_bytes == 0
    w.pool.add(transfer(A, 3))
    assert w.pool.pending_nonce(A.address) == 4


# -- invariants under a random workload ---------------------------------------------------------------
def test_random_workload_keeps_invariants(world: WorldFactory) -> None:
    rng = random.Random(7)
    w = world(max_txs=25, max_per_sender=6, balance=60_000)
    outcomes: dict[Reason | None, int] = {}
    for step in range(400):
        k = rng.choice(USERS[:12])
        next_nonce = w.pool.pending_nonce(k.address)
        nonce = max(0, next_nonce - rng.randint(0, 3)) if rng.random() < 0.3 else next_nonce
        tx = transfer(k, nonce, fee=rng.randint(1_000, 9_000), amount=rng.randint(1, 9_000))
        try:
            w.pool.add(tx)
            outcomes[None] = outcomes.get(None, 0) + 1
        except ValidationError as exc:
            outcomes[exc.reason] = outcomes.get(exc.reason, 0) + 1
        if step % 50 == 49:
            w.pool.remove_committed(w.commit(list(w.pool.iter_selected())[:rng.randint(0, 20)]))
        selected = list(w.pool.iter_selected())
        assert len(selected) == len(w.pool) <= 25
        assert w.pool.size_bytes == sum(tx.size for tx in selected)
        assert sorted(w.pool.txids()) == sorted(tx.id for tx in selected)
        result = execute_block(w.state, w.genesis.params, w.height, VALIDATOR.address, selected)
        assert len(result.applied) == len(selected)
        assert len(w.pool._tails) <= 2 * 12 + 64 + 1       # the lazy heap stays bounded
    assert outcomes[None] > 100
    assert outcomes.get(Reason.MEMPOOL_FULL, 0) > 0 and outcomes.get(Reason.REPLACEMENT_UNDERPRICED, 0) > 0


# -- over the LMDB store ------------------------------------------------------------------------------
def test_with_the_lmdb_store_after_a_committed_block(tmp_path: Path) -> None:
    g = genesis()
    store = Store(str(tmp_path / "chain"))
    try:
        vs = g.validators()
        store.initialize(g.chain_id, g.hash, g.initial_accounts(), vs, vs, g.initial_lthash())
        pool = Mempool(g.params, store, max_txs=100, max_bytes=1 << 20, min_relay_fee=0,
                       height_fn=lambda: store.tip_height() + 1)
        txs = [transfer(k, n, fee=1_000 + 100 * n) for k in (A, B) for n in range(3)]
        for tx in txs:
            pool.add(tx)
        candidates = list(pool.iter_selected())[:4]
        block, result = build_block(store, g.params, 1, 0, store.tip_hash(), g.genesis_time + 1_000,
                                    VALIDATOR.address, candidates)
        assert len(block.txs) == 4
        vote = Vote(VoteType.PRECOMMIT, 1, 0, block.hash, VALIDATOR.address).signed(VALIDATOR, CHAIN)
        store.commit_block(block, CommitCertificate.from_votes([vote]), result)
        pool.remove_committed(block.txs)
        assert store.tip_height() == 1
        assert len(pool) == 2 and not any(tx.id in pool for tx in block.txs)
        # Equal heads go by arrival, then A's rising fees keep A first: A0, A1, A2, B0.
        assert [(tx.sender, tx.nonce) for tx in block.txs] == [(A.public_key, 0), (A.public_key, 1),
                                                               (A.public_key, 2), (B.public_key, 0)]
        assert (store.get_account(A.address).nonce, store.get_account(B.address).nonce) == (3, 1)
        assert [tx.nonce for tx in pool.iter_selected()] == [1, 2]
        rejects(lambda: pool.add(transfer(B, 0, fee=9_000)), Reason.BAD_NONCE)
        pool.add(transfer(A, 3))
        assert pool.pending_nonce(A.address) == 4 and pool.pending_nonce(B.address) == 3 and len(pool) == 3
    finally:
        store.close()
