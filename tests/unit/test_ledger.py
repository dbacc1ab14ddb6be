"""The state transition (SPEC §2–§3): every ledger rule, each with a test that fails if the rule breaks.

Every rule test runs twice through the ``chain`` fixture (``ledger_backend`` in tests/conftest.py): over
``MemoryStore`` (the dict-backed state the simulator uses) and over the real LMDB ``Store`` in
``tmp_path``, each block committed through the backend's ``commit_block``. The last tests run one plan
over both side by side: they must reach the same state root.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LedgerBackend, LedgerFactory
from timecoin.consensus.proposer import MAX_TOTAL_VOTING_POWER
from timecoin.crypto import UNITS_PER_TIME, PrivateKey
from timecoin.errors import Reason, ValidationError
from timecoin.ledger import lthash as lt
from timecoin.ledger.account import EMPTY_ACCOUNT, Account
from timecoin.ledger.block import (
    Block,
    CommitCertificate,
    Evidence,
    Header,
    Vote,
    VoteType,
    evidence_root,
    tx_root,
)
from timecoin.ledger.genesis import Genesis, GenesisAccount
from timecoin.ledger.params import UNBONDING_ENTRIES_LAYOUT_MAX, ChainParams
from timecoin.ledger.result import BlockResult
from timecoin.ledger.state import (
    BLOCK_OVERHEAD,
    U64_MAX,
    Overlay,
    apply_tx,
    build_block,
    execute_block,
    validate_block,
)
from timecoin.ledger.tx import ZERO_ADDRESS, Transaction, TxKind
from timecoin.store import ACCOUNTS, Store

T = UNITS_PER_TIME
CHAIN = "timecoin-test"
V1, V2, V3 = (PrivateKey(bytes([i]) * 32) for i in (1, 2, 3))
ALICE = PrivateKey(b"\xa1" * 32)
BOB = PrivateKey(b"\xb0" * 32)
CAROL = PrivateKey(b"\xc0" * 32)          # never funded
VALIDATOR_STAKE = 2_000 * T
ALICE_BALANCE = 10_000 * T
GENESIS_TIME = 1_767_225_600_000


def _genesis(**params: int) -> Genesis:
    defaults = {"unbonding_period": 3, "block_reward": 10 * T, "min_fee": 1_000}
    defaults.update(params)
    return Genesis.for_validators([V1.public_key, V2.public_key, V3.public_key], CHAIN, stake=VALIDATOR_STAKE,
                                  balance=100 * T, genesis_time=GENESIS_TIME,
                                  extra=(GenesisAccount(ALICE.address, ALICE_BALANCE),), **defaults)


class Chain:
    """A genesis plus committed blocks over one backend (MemoryStore or the LMDB Store in tmp_path);
    heights advance one block at a time, each committed as a real block through ``commit_block``."""

    def __init__(self, make: LedgerFactory, **params: int) -> None:
        self.genesis = _genesis(**params)
        self.params: ChainParams = self.genesis.params
        self.backend = make(self.genesis, signers=(V1, V2, V3))
        self.state = self.backend.state
        self.height = 0

    def execute(self, txs: list[Transaction] | tuple[Transaction, ...] = (), evidence: tuple[Evidence, ...] = (),
                proposer: PrivateKey = V1, **kw: Any) -> BlockResult:
        return execute_block(self.state, self.params, self.height + 1, proposer.address, txs, evidence, **kw)

    def run(self, txs: list[Transaction] | tuple[Transaction, ...] = (), evidence: tuple[Evidence, ...] = (),
            proposer: PrivateKey = V1) -> BlockResult:
        result = self.execute(txs, evidence, proposer)
        self.backend.commit(result, proposer.address)
        self.height = result.height
        return result

    def accounts(self) -> dict[bytes, Account]:
        return self.backend.accounts()

    def acct(self, key: PrivateKey) -> Account:
        return self.state.get_account(key.address) or EMPTY_ACCOUNT

    def nonce(self, key: PrivateKey) -> int:
        return self.acct(key).nonce

    def tx(self, key: PrivateKey, kind: TxKind, amount: int, to: PrivateKey | None = None, fee: int = 1_000,
           nonce: int | None = None, chain: str = CHAIN) -> Transaction:
        return Transaction.create(key, kind, chain, self.nonce(key) if nonce is None else nonce, fee, amount,
                                  to.address if to else ZERO_ADDRESS)

    def pay(self, key: PrivateKey, to: PrivateKey, amount: int, **kw: Any) -> Transaction:
        return self.tx(key, TxKind.TRANSFER, amount, to, **kw)

    def snapshot(self) -> tuple[dict[bytes, Account], dict[int, bytes], bytes, int]:
        return self.accounts(), self.backend.validator_hashes(), self.state.lthash(), self.state.tip_height()

    def total_supply(self) -> int:
        return sum(a.balance + a.stake + sum(u for u, _ in a.unbonding) for a in self.accounts().values())


ChainFactory = Callable[..., Chain]


@pytest.fixture
def chain(ledger_backend: LedgerFactory) -> ChainFactory:
    """``chain(**params)``: a Chain over this run's backend (every test using it runs on both)."""
    return lambda **params: Chain(ledger_backend, **params)


def _reject(chain: Chain, txs: list[Transaction], reason: Reason, **kw: Any) -> None:
    """The block is refused with ``reason`` and the committed state is untouched."""
    before = chain.snapshot()
    with pytest.raises(ValidationError) as err:
        chain.execute(txs, **kw)
    assert err.value.reason == reason, err.value
    assert chain.snapshot() == before


def _recomputed_lthash(accounts: dict[bytes, Account]) -> bytes:
    acc = lt.LtHash()
    for address, account in accounts.items():
        if not account.is_empty:
            acc.add(address + account.encoded)
    return acc.to_bytes()


@dataclass
class Equivocation:
    key: PrivateKey
    height: int

    def evidence(self, round_: int = 0, chain: str = CHAIN) -> Evidence:
        a = Vote(VoteType.PRECOMMIT, self.height, round_, b"\x01" * 32, self.key.address).signed(self.key, chain)
        b = Vote(VoteType.PRECOMMIT, self.height, round_, b"\x02" * 32, self.key.address).signed(self.key, chain)
        return Evidence.of(a, b)


# -- transfers and the per-tx rules --------------------------------------------------------------------
def test_transfer_credits_recipient_and_debits_sender(chain: ChainFactory) -> None:
    c = chain()
    v1_before = c.acct(V1).balance
    result = c.run([c.pay(ALICE, BOB, 5 * T, fee=2_500)])
    assert c.acct(ALICE) == Account(balance=ALICE_BALANCE - 5 * T - 2_500, nonce=1, pubkey=ALICE.public_key)
    assert c.acct(BOB) == Account(balance=5 * T)
    assert c.acct(V1).balance == v1_before + c.params.block_reward + 2_500
    assert len(result.applied) == 1 and result.rejected == ()
    assert result.undo[BOB.address] is None
    assert result.undo[ALICE.address] == Account(balance=ALICE_BALANCE)


def test_transfer_to_self_costs_only_the_fee(chain: ChainFactory) -> None:
    c = chain()
    c.run([c.pay(ALICE, ALICE, 7 * T)])
    assert c.acct(ALICE).balance == ALICE_BALANCE - 1_000
    assert c.acct(ALICE).nonce == 1


def test_nonce_must_equal_account_nonce(chain: ChainFactory) -> None:
    c = chain()
    _reject(c, [c.pay(ALICE, BOB, T, nonce=1)], Reason.BAD_NONCE)
    first = c.pay(ALICE, BOB, T, nonce=0)
    c.run([first, c.pay(ALICE, BOB, T, nonce=1)])              # consecutive nonces in one block
    assert c.nonce(ALICE) == 2
    _reject(c, [first], Reason.BAD_NONCE)                       # replay
    _reject(c, [c.pay(ALICE, BOB, T, nonce=1)], Reason.BAD_NONCE)  # too low
    _reject(c, [c.pay(ALICE, BOB, T, nonce=3)], Reason.BAD_NONCE)  # gap
    _reject(c, [c.pay(ALICE, BOB, T, nonce=2), c.pay(ALICE, BOB, 2 * T, nonce=2)], Reason.BAD_NONCE)


def test_fee_must_reach_minimum(chain: ChainFactory) -> None:
    c = chain()
    _reject(c, [c.pay(ALICE, BOB, T, fee=999)], Reason.FEE_TOO_LOW)
    _reject(c, [c.pay(ALICE, BOB, T, fee=0)], Reason.FEE_TOO_LOW)
    c.run([c.pay(ALICE, BOB, T, fee=1_000)])
    assert c.acct(BOB).balance == T


def test_wrong_chain_id_rejected(chain: ChainFactory) -> None:
    c = chain()
    _reject(c, [c.pay(ALICE, BOB, T, chain="timecoin-other")], Reason.WRONG_CHAIN)


def test_bad_signature_rejected(chain: ChainFactory) -> None:
    c = chain()
    good = c.pay(ALICE, BOB, T)
    _reject(c, [replace(good, amount=2 * T)], Reason.BAD_SIGNATURE)                  # tampered after signing
    _reject(c, [replace(good, recipient=CAROL.address)], Reason.BAD_SIGNATURE)
    by_bob = c.pay(BOB, BOB, T)                                                       # Bob's signature...
    _reject(c, [replace(by_bob, sender=ALICE.public_key)], Reason.BAD_SIGNATURE)    # ...on Alice's account
    _reject(c, [replace(good, signature=bytes(64))], Reason.BAD_SIGNATURE)
    c.run([good])


def test_insufficient_balance_for_amount_plus_fee(chain: ChainFactory) -> None:
    c = chain()
    _reject(c, [c.pay(ALICE, BOB, ALICE_BALANCE - 999, fee=1_000)], Reason.INSUFFICIENT_FUNDS)
    _reject(c, [c.pay(ALICE, BOB, ALICE_BALANCE)], Reason.INSUFFICIENT_FUNDS)
    _reject(c, [c.pay(CAROL, BOB, 1)], Reason.INSUFFICIENT_FUNDS)                   # never funded
    c.run([c.pay(ALICE, BOB, ALICE_BALANCE - 1_000, fee=1_000)])                   # exactly all of it
    assert c.acct(ALICE).balance == 0
    assert c.acct(BOB).balance == ALICE_BALANCE - 1_000


@pytest.mark.parametrize(("make", "reason"), [
    (lambda c: c.pay(ALICE, BOB, 0), Reason.BAD_AMOUNT),
    (lambda c: Transaction.create(ALICE, TxKind.TRANSFER, CHAIN, 0, 1_000, T, ZERO_ADDRESS), Reason.BAD_AMOUNT),
    (lambda c: c.tx(ALICE, TxKind.STAKE, 1_000 * T, to=BOB), Reason.MALFORMED),
    (lambda c: c.tx(ALICE, TxKind.UNSTAKE, T, to=BOB), Reason.MALFORMED),
    (lambda c: c.tx(ALICE, TxKind.STAKE, 0), Reason.BAD_AMOUNT),
])
def test_malformed_tx_fields_rejected(make: Any, reason: Reason, chain: ChainFactory) -> None:
    c = chain()
    _reject(c, [make(c)], reason)


def test_invalid_tx_after_valid_ones_rejects_the_whole_block_and_leaves_state(chain: ChainFactory) -> None:
    c = chain()
    txs = [c.pay(ALICE, BOB, T, nonce=0), c.pay(ALICE, BOB, T, nonce=1), c.pay(ALICE, BOB, T, nonce=5)]
    with pytest.raises(ValidationError, match="tx 2") as err:
        c.execute(txs)
    assert err.value.reason == Reason.BAD_NONCE
    assert c.acct(ALICE) == Account(balance=ALICE_BALANCE)
    assert c.state.get_account(BOB.address) is None


def test_apply_tx_leaves_overlay_and_base_unchanged_on_error(chain: ChainFactory) -> None:
    """A transfer whose credit would overflow the recipient's u64 balance: nothing is written."""
    c = chain()
    c.backend.set_account(BOB.address, Account(balance=U64_MAX - 10))
    base_before = c.accounts()
    overlay = Overlay(c.state)
    ok = c.pay(ALICE, BOB, 10)
    assert apply_tx(overlay, c.params, ok, 1) == 1_000
    snap = overlay.snapshot()
    with pytest.raises(ValidationError) as err:
        apply_tx(overlay, c.params, c.pay(ALICE, BOB, 1, nonce=1), 1)
    assert err.value.reason == Reason.BAD_AMOUNT
    assert overlay.changes == snap
    assert overlay.get_account(BOB.address).balance == U64_MAX
    assert c.accounts() == base_before


# -- stake, unstake, validator set ---------------------------------------------------------------------
def test_stake_moves_balance_to_stake_and_makes_a_validator_at_h_plus_2(chain: ChainFactory) -> None:
    c = chain()
    genesis_set = c.state.validator_set(2)
    result = c.run([c.tx(ALICE, TxKind.STAKE, 1_000 * T)])               # block 1
    assert c.acct(ALICE).balance == ALICE_BALANCE - 1_000 * T - 1_000
    assert c.acct(ALICE).stake == 1_000 * T
    assert c.acct(ALICE).pubkey == ALICE.public_key
    # Not at h+1: the set of height 2 was fixed before block 1.
    assert c.state.validator_set(2) == genesis_set
    assert ALICE.address not in c.state.validator_set(2)
    # At h+2, with power = stake.
    assert result.next_validators == c.state.validator_set(3)
    assert c.state.validator_set(3).power_of(ALICE.address) == 1_000 * T
    assert c.state.validator_set(3).total_power == 3 * VALIDATOR_STAKE + 1_000 * T
    # Topping up changes the power, again two heights later.
    c.run([c.tx(ALICE, TxKind.STAKE, 500 * T)])                           # block 2
    assert c.state.validator_set(3).power_of(ALICE.address) == 1_000 * T
    assert c.state.validator_set(4).power_of(ALICE.address) == 1_500 * T


def test_stake_below_minimum_is_not_a_validator(chain: ChainFactory) -> None:
    c = chain()
    c.run([c.tx(ALICE, TxKind.STAKE, 1_000 * T - 1)])
    assert c.acct(ALICE).stake == 1_000 * T - 1
    assert ALICE.address not in c.state.validator_set(3)
    assert c.state.validator_set(3) == c.state.validator_set(2)
    c.run([c.tx(ALICE, TxKind.STAKE, 1)])                                 # reaches exactly 1,000 TIME
    assert c.state.validator_set(4).power_of(ALICE.address) == 1_000 * T


def test_stake_needs_balance_for_amount_plus_fee(chain: ChainFactory) -> None:
    c = chain()
    _reject(c, [c.tx(ALICE, TxKind.STAKE, ALICE_BALANCE)], Reason.INSUFFICIENT_FUNDS)
    _reject(c, [c.tx(CAROL, TxKind.STAKE, 1_000 * T)], Reason.INSUFFICIENT_FUNDS)


def test_unstake_moves_to_unbonding_spendable_after_period(chain: ChainFactory) -> None:
    c = chain()                                                           # unbonding_period = 3
    c.run([c.tx(ALICE, TxKind.STAKE, 1_500 * T)])                         # block 1
    liquid = ALICE_BALANCE - 1_500 * T - 1_000
    c.run([c.tx(ALICE, TxKind.UNSTAKE, 600 * T)])                         # block 2: release at 5
    a = c.acct(ALICE)
    assert (a.balance, a.stake, a.unbonding) == (liquid - 1_000, 900 * T, ((600 * T, 5),))
    liquid -= 1_000
    # Stake fell below the minimum: still in the set of height 3, out from height 4.
    assert c.state.validator_set(3).power_of(ALICE.address) == 1_500 * T
    assert ALICE.address not in c.state.validator_set(4)
    # Heights 3 and 4: the unbonding amount is not spendable.
    for _ in range(2):
        _reject(c, [c.pay(ALICE, BOB, liquid)], Reason.INSUFFICIENT_FUNDS)
        c.run()
    assert c.height == 4
    assert c.acct(ALICE).matured(4).balance == liquid
    assert c.acct(ALICE).matured(5).balance == liquid + 600 * T
    # Height 5 = 2 + unbonding_period: released.
    c.run([c.pay(ALICE, BOB, liquid)])
    a = c.acct(ALICE)
    assert (a.balance, a.stake, a.unbonding) == (600 * T - 1_000, 900 * T, ())


def test_unstake_limits(chain: ChainFactory) -> None:
    c = chain()
    _reject(c, [c.tx(ALICE, TxKind.UNSTAKE, 1)], Reason.INSUFFICIENT_STAKE)
    _reject(c, [c.tx(V1, TxKind.UNSTAKE, VALIDATOR_STAKE + 1)], Reason.INSUFFICIENT_STAKE)
    c.run([c.pay(V2, BOB, 100 * T - 1_000)])                                 # V2 keeps no liquid balance
    _reject(c, [c.tx(V2, TxKind.UNSTAKE, T)], Reason.INSUFFICIENT_FUNDS)    # cannot pay the fee
    c.run([c.tx(V1, TxKind.UNSTAKE, VALIDATOR_STAKE)])                      # all of it
    assert c.acct(V1).stake == 0
    assert V1.address not in c.state.validator_set(4)


def test_several_unbondings_release_in_order(chain: ChainFactory) -> None:
    c = chain()
    c.run([c.tx(V1, TxKind.UNSTAKE, 10 * T)])                               # block 1: release 4
    c.run([c.tx(V1, TxKind.UNSTAKE, 20 * T)])                               # block 2: release 5
    assert c.acct(V1).unbonding == ((10 * T, 4), (20 * T, 5))
    a = c.acct(V1)
    assert a.matured(3) == a
    assert a.matured(4).unbonding == ((20 * T, 5),) and a.matured(4).balance == a.balance + 10 * T
    assert a.matured(5).unbonding == () and a.matured(5).balance == a.balance + 30 * T


def test_unbonding_entries_are_capped(chain: ChainFactory) -> None:
    """An account holds at most max_unbonding_entries pending unbondings; one more unstake is a typed
    rejection (never the account layout's 16-bit overflow), and room frees up as entries mature."""
    c = chain(max_unbonding_entries=3)                                      # unbonding_period = 3
    c.run([c.tx(V1, TxKind.UNSTAKE, T, nonce=n) for n in range(3)])         # block 1: 3 entries, release 4
    assert len(c.acct(V1).unbonding) == 3
    _reject(c, [c.tx(V1, TxKind.UNSTAKE, T)], Reason.BAD_AMOUNT)
    with pytest.raises(ValidationError, match="3 unbonding entries"):
        c.execute([c.tx(V1, TxKind.UNSTAKE, T)])
    # A proposer filling a block leaves the tx out with the reason instead of failing.
    block, built = _build(c, [c.tx(V1, TxKind.UNSTAKE, T), c.pay(ALICE, BOB, T)], prev_hash=c.state.tip_hash())
    assert [r for _, r in built.rejected] == ["bad_amount"] and len(block.txs) == 1
    c.run()                                                                 # block 2
    _reject(c, [c.tx(V1, TxKind.UNSTAKE, T)], Reason.BAD_AMOUNT)            # block 3: nothing matured yet
    c.run()
    c.run([c.tx(V1, TxKind.UNSTAKE, 2 * T)], proposer=V2)                   # block 4: the 3 matured first
    assert c.acct(V1).unbonding == ((2 * T, 7),)


def test_unbonding_cap_default_fits_the_account_layout() -> None:
    params = ChainParams(CHAIN)
    assert 1 <= params.max_unbonding_entries <= UNBONDING_ENTRIES_LAYOUT_MAX
    full = Account(stake=T, unbonding=tuple((1, h) for h in range(params.max_unbonding_entries)))
    assert Account.decode(full.encoded) == full


# -- block reward and fees -----------------------------------------------------------------------------
def test_block_reward_and_fees_paid_to_proposer(chain: ChainFactory) -> None:
    c = chain()
    supply = c.total_supply()
    v2_before, v1_before = c.acct(V2).balance, c.acct(V1).balance
    c.run([c.pay(ALICE, BOB, T, fee=1_000), c.pay(ALICE, BOB, T, fee=5_000, nonce=1)], proposer=V2)
    assert c.acct(V2).balance == v2_before + 10 * T + 6_000
    assert c.acct(V1).balance == v1_before
    # Fees move from senders to the proposer; only the reward is new money.
    assert c.total_supply() == supply + 10 * T
    c.run(proposer=V3)                                                      # an empty block still pays
    assert c.acct(V3).balance == 100 * T + 10 * T
    assert c.total_supply() == supply + 20 * T


def test_block_reward_stops_at_max_total_supply(chain: ChainFactory) -> None:
    """Total supply stays <= MaxTotalVotingPower (int64 max / 8; above it consensus/proposer's
    check_total_power raises): once another reward would cross it, blocks mint nothing (fees still go to the
    proposer) and the chain goes on."""
    supply = _genesis().params.genesis_supply
    reward = (MAX_TOTAL_VOTING_POWER - supply) // 2 + 1            # block 1 fits, block 2 would not
    c = chain(block_reward=reward)
    assert c.params.genesis_supply == supply == c.total_supply()
    c.run([c.tx(ALICE, TxKind.STAKE, ALICE_BALANCE - T)])
    assert c.total_supply() == supply + reward <= MAX_TOTAL_VOTING_POWER
    assert c.params.supply_bound(2) > MAX_TOTAL_VOTING_POWER and c.params.reward_at(2) == 0
    c.run([c.pay(ALICE, BOB, T // 2)])                              # blocks go on; the fee still moves
    c.run()
    assert c.total_supply() == supply + reward <= MAX_TOTAL_VOTING_POWER
    assert c.acct(BOB).balance == T // 2


def test_reward_to_a_proposer_with_matured_unbonding(chain: ChainFactory) -> None:
    c = chain()
    c.run([c.tx(V2, TxKind.UNSTAKE, 5 * T)])                                # release at 4
    c.run()
    c.run()
    balance = c.acct(V2).balance
    c.run(proposer=V2)                                                      # block 4
    assert c.acct(V2).balance == balance + 5 * T + 10 * T
    assert c.acct(V2).unbonding == ()


# -- evidence ------------------------------------------------------------------------------------------
def test_evidence_jails_slashes_and_removes_from_set(chain: ChainFactory) -> None:
    c = chain()                                                             # slash_ppm 50,000 = 5%
    c.run()                                                                 # block 1
    supply = c.total_supply()
    ev = Equivocation(V3, 1).evidence()
    result = c.run(evidence=(ev,))                                          # block 2
    slashed = VALIDATOR_STAKE * 50_000 // 1_000_000
    a = c.acct(V3)
    assert a.jailed
    assert a.stake == VALIDATOR_STAKE - slashed
    assert a.balance == 100 * T
    # Out of the set two heights on; the set of height 3 was already fixed.
    assert V3.address in c.state.validator_set(3)
    assert V3.address not in result.next_validators
    assert V3.address not in c.state.validator_set(4)
    assert c.state.validator_set(4).total_power == 2 * VALIDATOR_STAKE
    assert c.total_supply() == supply + 10 * T - slashed                    # the slash is burned
    # A jailed account cannot stake back in, and the same evidence does not slash twice.
    _reject(c, [c.tx(V3, TxKind.STAKE, 1_000 * T)], Reason.NOT_VALIDATOR)
    _reject(c, [], Reason.DUPLICATE, evidence=(ev,))
    # It may still unstake its remaining stake.
    c.run([c.tx(V3, TxKind.UNSTAKE, a.stake)])
    assert c.acct(V3).stake == 0


def test_invalid_evidence_rejected_and_state_unchanged(chain: ChainFactory) -> None:
    c = chain(evidence_max_age=2)
    c.run()                                                                 # block 1
    c.run()                                                                 # block 2
    good = Equivocation(V3, 2).evidence()
    not_yet = Equivocation(V3, 3).evidence()                                # height of the block itself
    outsider = Equivocation(ALICE, 2).evidence()
    other_chain = Equivocation(V3, 2).evidence(chain="timecoin-other")
    forged = replace(good, vote_b=replace(good.vote_b, signature=bytes(64)))
    same = Evidence(good.vote_a, good.vote_a)
    for ev in (not_yet, outsider, other_chain, forged, same):
        _reject(c, [], Reason.BAD_EVIDENCE, evidence=(ev,))
    assert not c.acct(V3).jailed
    c.run()                                                                 # block 3
    too_old = Equivocation(V3, 1).evidence()                                # 4 - 1 > evidence_max_age
    _reject(c, [], Reason.BAD_EVIDENCE, evidence=(too_old,))
    c.run(evidence=(good,))                                                 # 4 - 2 = max age: admissible
    assert c.acct(V3).jailed


def test_unstaking_after_equivocating_does_not_escape_the_slash(chain: ChainFactory) -> None:
    c = chain()
    c.run()                                                                 # block 1: V3 equivocates here
    c.run([c.tx(V3, TxKind.UNSTAKE, VALIDATOR_STAKE)])                      # block 2: V3 unbonds everything
    c.run(evidence=(Equivocation(V3, 1).evidence(),))                       # block 3: evidence lands
    a = c.acct(V3)
    assert a.jailed
    held = a.stake + sum(amount for amount, _ in a.unbonding)
    assert held == VALIDATOR_STAKE - VALIDATOR_STAKE * 50_000 // 1_000_000


def test_build_block_with_two_evidences_against_one_validator(chain: ChainFactory) -> None:
    """A validator that double-signs its prevote and its precommit yields two evidences; the proposer
    must still be able to build a block (else no proposer can propose while they are pending)."""
    c = chain()
    c.run()
    pre = Vote(VoteType.PREVOTE, 1, 0, b"\x01" * 32, V3.address).signed(V3, CHAIN)
    pre2 = Vote(VoteType.PREVOTE, 1, 0, b"\x02" * 32, V3.address).signed(V3, CHAIN)
    evidence = (Equivocation(V3, 1).evidence(), Evidence.of(pre, pre2))
    block, result = _build(c, [], evidence, prev_hash=b"\x07" * 32)
    assert result.changes[V3.address].jailed
    assert len(block.evidence) == 1


# -- execute_block modes --------------------------------------------------------------------------------
def test_skip_invalid_leaves_out_invalid_txs_and_reports_them(chain: ChainFactory) -> None:
    c = chain()
    v0 = c.pay(ALICE, BOB, T, nonce=0)
    v1 = c.pay(ALICE, BOB, T, nonce=1)
    txs = [v0, c.pay(ALICE, BOB, T, nonce=7), c.pay(ALICE, BOB, T, nonce=1, chain="x"), v1,
           c.pay(CAROL, BOB, T), c.pay(ALICE, BOB, T, nonce=2, fee=1)]
    result = c.execute(txs, skip_invalid=True)
    assert result.applied == (v0, v1)
    assert [r for _, r in result.rejected] == ["bad_nonce", "wrong_chain", "insufficient_funds", "fee_too_low"]
    assert result.changes[ALICE.address].nonce == 2
    assert result.changes[BOB.address].balance == 2 * T
    # max_txs caps the block; the cap is also max_block_txs.
    assert c.execute(txs, skip_invalid=True, max_txs=1).applied == (v0,)


def test_skip_invalid_respects_max_block_txs_and_bytes(chain: ChainFactory) -> None:
    c = chain(max_block_txs=2)
    txs = [c.pay(ALICE, BOB, T, nonce=n) for n in range(4)]
    assert c.execute(txs, skip_invalid=True).applied == tuple(txs[:2])
    with pytest.raises(ValidationError) as err:
        c.execute(txs)
    assert err.value.reason == Reason.BLOCK_TOO_LARGE
    c2 = chain(max_block_bytes=1024)                                # budget 1024 - BLOCK_OVERHEAD bytes
    txs = [c2.pay(ALICE, BOB, T, nonce=n) for n in range(8)]
    fit = (1024 - BLOCK_OVERHEAD) // txs[0].size
    applied = c2.execute(txs, skip_invalid=True).applied
    assert applied == tuple(txs[:fit])
    assert 0 < fit < len(txs)


def test_execution_is_deterministic_and_pure(chain: ChainFactory) -> None:
    c = chain()
    txs = [c.pay(ALICE, BOB, T), c.tx(V2, TxKind.UNSTAKE, T)]
    before = c.snapshot()
    r1, r2 = c.execute(txs), c.execute(txs)
    assert r1 == r2
    assert c.snapshot() == before
    assert r1.state_root == hashlib.sha256(r1.lthash).digest()


def test_unknown_height_refused(chain: ChainFactory) -> None:
    c = chain()
    with pytest.raises(ValidationError) as err:
        execute_block(c.state, c.params, 5, V1.address, ())
    assert err.value.reason == Reason.WRONG_HEIGHT


# -- state root ----------------------------------------------------------------------------------------
def test_incremental_state_root_equals_recomputation(chain: ChainFactory) -> None:
    c = chain()
    assert c.state.lthash() == _recomputed_lthash(c.accounts())
    blocks = [
        [c.pay(ALICE, BOB, 3 * T)],
        [c.pay(ALICE, CAROL, T, nonce=1), c.pay(V1, BOB, T)],
        [c.tx(ALICE, TxKind.STAKE, 1_200 * T, nonce=2)],
        [c.tx(ALICE, TxKind.UNSTAKE, 300 * T, nonce=3)],
        [],
    ]
    roots = set()
    for txs in blocks:
        result = c.run(txs, proposer=V2)
        assert c.state.lthash() == _recomputed_lthash(c.accounts())
        assert result.state_root == hashlib.sha256(_recomputed_lthash(c.accounts())).digest()
        roots.add(result.state_root)
    assert len(roots) == len(blocks)
    # Evidence changes touch the state root too.
    c.run(evidence=(Equivocation(V3, c.height).evidence(),))
    assert c.state.lthash() == _recomputed_lthash(c.accounts())


# -- building and validating blocks --------------------------------------------------------------------
def _build(c: Chain, txs: list[Transaction], evidence: tuple[Evidence, ...] = (),
           prev_hash: bytes | None = None, proposer: PrivateKey = V1) -> tuple[Block, BlockResult]:
    prev = c.genesis.hash if prev_hash is None else prev_hash
    return build_block(c.state, c.params, c.height + 1, 0, prev, GENESIS_TIME + 1_000 * (c.height + 1),
                       proposer.address, txs, evidence)


def _validate(c: Chain, block: Block, prev_hash: bytes | None = None) -> BlockResult:
    return validate_block(c.state, c.params, block, c.genesis.hash if prev_hash is None else prev_hash,
                          GENESIS_TIME)


def _rehash(block: Block, **fields: Any) -> Block:
    return replace(block, header=replace(block.header, **fields))


def test_build_then_validate_round_trip(chain: ChainFactory) -> None:
    c = chain()
    block, built = _build(c, [c.pay(ALICE, BOB, T), c.pay(ALICE, BOB, T, nonce=5)])
    assert len(block.txs) == 1
    assert built.rejected[0][1] == "bad_nonce"
    checked = _validate(c, Block.decode(block.encoded))
    assert checked.state_root == built.state_root == block.header.state_root
    assert checked.changes == built.changes


def test_validate_block_rejects_wrong_roots_and_set(chain: ChainFactory) -> None:
    c = chain()
    block, _ = _build(c, [c.pay(ALICE, BOB, T)])
    cases = [
        (_rehash(block, tx_root=bytes(32)), Reason.BAD_BLOCK, "tx_root"),
        (replace(block, txs=()), Reason.BAD_BLOCK, "tx_root"),
        (_rehash(block, state_root=bytes(32)), Reason.BAD_BLOCK, "state_root"),
        (_rehash(block, evidence_root=bytes(32)), Reason.BAD_BLOCK, "evidence_root"),
        (_rehash(block, validators_hash=bytes(32)), Reason.BAD_BLOCK, "validators_hash"),
        (_rehash(block, prev_hash=bytes(32)), Reason.BAD_BLOCK, "prev_hash"),
        (_rehash(block, timestamp=GENESIS_TIME - 1), Reason.BAD_TIMESTAMP, "timestamp"),
        (_rehash(block, proposer=ALICE.address), Reason.NOT_VALIDATOR, "proposer"),
        (_rehash(block, version=2), Reason.BAD_BLOCK, "version"),
        (_rehash(block, height=9), Reason.WRONG_HEIGHT, "height"),
    ]
    before = c.snapshot()
    for bad, reason, match in cases:
        with pytest.raises(ValidationError, match=match) as err:
            _validate(c, bad)
        assert err.value.reason == reason, (match, err.value)
    assert c.snapshot() == before
    _validate(c, block)


def test_validate_block_rejects_a_different_proposer_reward(chain: ChainFactory) -> None:
    """The state root commits to who was paid: the same body with another proposer does not validate."""
    c = chain()
    block, _ = _build(c, [c.pay(ALICE, BOB, T)])
    with pytest.raises(ValidationError, match="state_root"):
        _validate(c, _rehash(block, proposer=V2.address))


def test_validate_block_rejects_too_many_txs(chain: ChainFactory) -> None:
    c = chain(max_block_txs=2)
    txs = tuple(c.pay(ALICE, BOB, T, nonce=n) for n in range(3))
    block, _ = _build(c, list(txs))
    assert len(block.txs) == 2
    too_many = Block(replace(block.header, tx_root=tx_root(txs)), txs)
    with pytest.raises(ValidationError) as err:
        _validate(c, too_many)
    assert err.value.reason == Reason.BLOCK_TOO_LARGE


def test_validate_block_rejects_too_many_bytes(chain: ChainFactory) -> None:
    c = chain(max_block_bytes=1024)
    txs = tuple(c.pay(ALICE, BOB, T, nonce=n) for n in range(6))
    block, _ = _build(c, list(txs))
    assert block.size <= 1024
    _validate(c, block)
    big = Block(replace(block.header, tx_root=tx_root(txs)), txs)
    assert big.size > 1024
    with pytest.raises(ValidationError) as err:
        _validate(c, big)
    assert err.value.reason == Reason.BLOCK_TOO_LARGE


def test_built_block_with_evidence_fits_max_block_bytes(chain: ChainFactory) -> None:
    c = chain(max_block_bytes=1024)
    c.run()
    evidence = tuple(Equivocation(k, 1).evidence() for k in (V2, V3))
    txs = [c.pay(ALICE, BOB, T, nonce=n) for n in range(6)]
    block, _ = _build(c, txs, evidence, prev_hash=b"\x07" * 32)
    assert block.evidence == evidence
    assert block.size <= 1024, f"{block.size} bytes"


def test_block_with_evidence_validates(chain: ChainFactory) -> None:
    c = chain()
    c.run()
    ev = Equivocation(V3, 1).evidence()
    block, built = _build(c, [c.pay(ALICE, BOB, T)], (ev,), prev_hash=b"\x07" * 32)
    assert block.header.evidence_root == evidence_root((ev,))
    result = _validate(c, block, prev_hash=b"\x07" * 32)
    assert result.changes[V3.address].jailed


# -- over the real LMDB store --------------------------------------------------------------------------
def _certificate(block: Block, keys: tuple[PrivateKey, ...]) -> CommitCertificate:
    votes = [Vote(VoteType.PRECOMMIT, block.height, 0, block.hash, k.address).signed(k, CHAIN) for k in keys]
    return CommitCertificate.from_votes(votes)


def test_lmdb_store_and_memory_state_agree(tmp_path: Path) -> None:
    mem = Chain(lambda g, signers=(): LedgerBackend("memory", g, tmp_path / "unused", signers))
    g = mem.genesis
    vs = g.validators()
    store = Store(str(tmp_path / "db"), map_size=8 * 1024 * 1024)
    try:
        store.initialize(g.chain_id, g.hash, g.initial_accounts(), vs, vs, g.initial_lthash())
        assert store.lthash() == mem.state.lthash()
        plans = [
            lambda: [mem.pay(ALICE, BOB, 4 * T)],
            lambda: [mem.tx(ALICE, TxKind.STAKE, 1_000 * T), mem.pay(BOB, CAROL, T)],
            lambda: [mem.tx(ALICE, TxKind.UNSTAKE, 1_000 * T)],
            lambda: [],
            lambda: [],
            lambda: [mem.pay(ALICE, CAROL, 999 * T)],   # needs the matured unbonding (released at 6)
        ]
        for height, plan in enumerate(plans, start=1):
            txs = plan()
            prev = store.tip_hash()
            block, _ = build_block(store, mem.params, height, 0, prev, GENESIS_TIME + height, V1.address, txs)
            assert len(block.txs) == len(txs), f"height {height}: a planned tx was left out"
            result = validate_block(store, mem.params, block, prev, GENESIS_TIME)
            mem_result = mem.run(txs)
            assert result.state_root == mem_result.state_root
            assert result.next_validators == mem_result.next_validators
            store.commit_block(block, _certificate(block, (V1, V2, V3)), result)
            assert store.lthash() == mem.state.lthash()
        stored = {k: Account.decode(v) for k, v in store.items(ACCOUNTS)}
        assert stored == {a: acct for a, acct in mem.accounts().items() if not acct.is_empty}
        assert store.lthash() == _recomputed_lthash(stored)
        assert store.validator_set(4).power_of(ALICE.address) == 1_000 * T
        assert ALICE.address not in store.validator_set(5)
        assert stored[CAROL.address].balance == 1_000 * T
    finally:
        store.close()


def test_lmdb_invalid_block_leaves_store_untouched(tmp_path: Path) -> None:
    mem = Chain(lambda g, signers=(): LedgerBackend("memory", g, tmp_path / "unused", signers))
    g = mem.genesis
    vs = g.validators()
    store = Store(str(tmp_path / "db"), map_size=8 * 1024 * 1024)
    try:
        store.initialize(g.chain_id, g.hash, g.initial_accounts(), vs, vs, g.initial_lthash())
        before = (store.items(ACCOUNTS), store.lthash(), store.tip_height())
        bad = [mem.pay(ALICE, BOB, T), mem.pay(ALICE, BOB, ALICE_BALANCE, nonce=1)]
        with pytest.raises(ValidationError) as err:
            execute_block(store, mem.params, 1, V1.address, bad)
        assert err.value.reason == Reason.INSUFFICIENT_FUNDS
        assert (store.items(ACCOUNTS), store.lthash(), store.tip_height()) == before
    finally:
        store.close()


def test_lmdb_state_root_recomputable_with_an_empty_genesis_account(tmp_path: Path) -> None:
    g = Genesis.for_validators([V1.public_key, V2.public_key, V3.public_key], CHAIN, genesis_time=GENESIS_TIME,
                               extra=(GenesisAccount(ALICE.address, ALICE_BALANCE), GenesisAccount(CAROL.address)))
    vs = g.validators()
    store = Store(str(tmp_path / "db"), map_size=8 * 1024 * 1024)
    try:
        store.initialize(g.chain_id, g.hash, g.initial_accounts(), vs, vs, g.initial_lthash())
        tx = Transaction.create(ALICE, TxKind.TRANSFER, CHAIN, 0, 1_000, T, CAROL.address)
        block, result = build_block(store, g.params, 1, 0, g.hash, GENESIS_TIME + 1, V1.address, [tx])
        store.commit_block(block, _certificate(block, (V1, V2, V3)), result)
        stored = {k: Account.decode(v) for k, v in store.items(ACCOUNTS)}
        assert stored[CAROL.address].balance == T
        assert store.lthash() == _recomputed_lthash(stored)
    finally:
        store.close()


# -- accounts ------------------------------------------------------------------------------------------
def test_account_encoding_round_trip() -> None:
    a = Account(balance=5, nonce=2, stake=1_000 * T, unbonding=((3, 10), (4, 11)), pubkey=ALICE.public_key,
                jailed=True)
    assert Account.decode(a.encoded) == a
    assert Account.decode(EMPTY_ACCOUNT.encoded).is_empty
    assert not Account(nonce=1).is_empty


def test_genesis_header_fields_are_what_validate_block_checks(chain: ChainFactory) -> None:
    """Sanity: a hand-built header with the right fields validates, proving the checks above are not vacuous."""
    c = chain()
    result = c.execute([])
    header = Header(height=1, round=0, prev_hash=c.genesis.hash, timestamp=GENESIS_TIME + 1, proposer=V1.address,
                    tx_root=tx_root(()), state_root=result.state_root,
                    validators_hash=c.state.validator_set(1).hash, evidence_root=evidence_root(()))
    assert _validate(c, Block(header)).state_root == result.state_root
