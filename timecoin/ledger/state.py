"""The state transition function (SPEC §2): pure, deterministic, never writes.

``execute_block`` applies evidence, then transactions, then pays the proposer (block reward plus
fees), and returns a :class:`~timecoin.ledger.result.BlockResult`: final accounts, undo data, the new
LtHash accumulator and state root, and the validator set of height + 2. The store commits that in
one write transaction. Invalid input raises :class:`ValidationError` with a reason and leaves the
state unchanged (everything happens in an :class:`Overlay`).

Rules (each tested in tests/unit/test_ledger.py):
* every tx: chain id matches, fee >= ``min_fee``, amount > 0, signature valid, nonce == account nonce;
  the nonce then increments and the fee goes to the block's proposer.
* transfer: balance >= amount + fee; recipient non-zero; u64 overflow refused.
* stake: balance >= amount + fee; moves balance to stake; a jailed account cannot stake.
* unstake: stake >= amount, balance >= fee; moves stake to unbonding, spendable ``unbonding_period``
  blocks later. Unbonding entries mature lazily when the account is next touched (deterministic,
  and O(accounts touched)); readers use ``Account.matured(height)``. An account holds at most
  ``max_unbonding_entries`` pending entries (after maturing those due): one more is ``BAD_AMOUNT``.
* validator: stake >= ``min_stake``, not jailed, public key known. Set changes from block h take
  effect at h + 2: set(h+2) = set(h+1) updated with the accounts block h touched.
* evidence (duplicate votes, verified against the set of its height, at most ``evidence_max_age``
  old): the validator is jailed and ``slash_ppm`` of its stake is burned.
* supply: the reward of block h is ``params.reward_at(h)``: ``block_reward`` while genesis supply + h *
  block_reward (an upper bound on total supply) stays within MAX_TOTAL_SUPPLY, then 0 (fees are still
  paid), so total stake, and with it every validator set's total power, stays within consensus's
  MaxTotalVotingPower and the chain goes on past the cap.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from timecoin.errors import InvalidSignature, Reason, ValidationError
from timecoin.ledger import lthash as lt
from timecoin.ledger.account import EMPTY_ACCOUNT, Account
from timecoin.ledger.block import BLOCK_VERSION, Block, Evidence, Header, evidence_root, tx_root
from timecoin.ledger.params import ChainParams
from timecoin.ledger.preverify import preverify
from timecoin.ledger.result import BlockResult, StateReader
from timecoin.ledger.tx import ZERO_ADDRESS, Transaction, TxKind
from timecoin.ledger.validators import Validator, ValidatorSet

U64_MAX = 2**64 - 1
# Bytes of a block besides its txs and evidence (the fixed-width header and two array prefixes).
BLOCK_OVERHEAD = len(Block(Header(0, 0, bytes(32), 0, bytes(20), bytes(32), bytes(32), bytes(32), bytes(32))).encoded)


class MemoryState:
    """A dict-backed StateReader: the same transition on plain dicts (tests and the simulator)."""

    def __init__(self, accounts: dict[bytes, Account] | None = None,
                 validators: dict[int, ValidatorSet] | None = None, lthash: bytes = lt.EMPTY) -> None:
        self.accounts: dict[bytes, Account] = dict(accounts or {})
        self.validators: dict[int, ValidatorSet] = dict(validators or {})
        self._lthash = lthash

    def get_account(self, address: bytes) -> Account | None:
        return self.accounts.get(address)

    def validator_set(self, height: int) -> ValidatorSet | None:
        return self.validators.get(height)

    def lthash(self) -> bytes:
        return self._lthash

    def commit(self, result: BlockResult) -> None:
        for address, account in result.changes.items():
            if account.is_empty:
                self.accounts.pop(address, None)
            else:
                self.accounts[address] = account
        self.validators[result.height + 2] = result.next_validators
        self._lthash = result.lthash


class Overlay:
    """Pending writes over a StateReader; the base is never modified.

    Reads of the base are remembered (``base_account``): the base does not change while an overlay lives,
    and a block reads each account it touches several times (sender, recipient, then the undo values and
    the LtHash), each a store read and decode otherwise.
    """

    def __init__(self, base: StateReader, known: dict[bytes, Account | None] | None = None) -> None:
        self.base = base
        self.changes: dict[bytes, Account] = {}
        self._read: dict[bytes, Account | None] = dict(known) if known else {}   # base reads the caller already made

    def base_account(self, address: bytes) -> Account | None:
        """The base's account (None if absent), read once."""
        try:
            return self._read[address]
        except KeyError:
            acct = self._read[address] = self.base.get_account(address)
            return acct

    def get_account(self, address: bytes) -> Account:
        acct = self.changes.get(address)
        if acct is not None:
            return acct
        return self.base_account(address) or EMPTY_ACCOUNT

    def set_account(self, address: bytes, account: Account) -> None:
        self.changes[address] = account

    def snapshot(self) -> dict[bytes, Account]:
        return dict(self.changes)

    def restore(self, snap: dict[bytes, Account]) -> None:
        self.changes = snap


def check_tx_static(params: ChainParams, tx: Transaction) -> None:
    """Checks that need no state: chain, fee floor, amount, fields per kind, signature."""
    if tx.chain_id != params.chain_id:
        raise ValidationError(Reason.WRONG_CHAIN, f"tx for chain {tx.chain_id!r}, this is {params.chain_id!r}")
    if tx.fee < params.min_fee:
        raise ValidationError(Reason.FEE_TOO_LOW, f"fee {tx.fee} below the minimum {params.min_fee}")
    if tx.amount <= 0:
        raise ValidationError(Reason.BAD_AMOUNT, "amount must be positive")
    if tx.kind == TxKind.TRANSFER:
        if tx.recipient == ZERO_ADDRESS:
            raise ValidationError(Reason.BAD_AMOUNT, "transfer to the zero address")
    elif tx.recipient != ZERO_ADDRESS:
        raise ValidationError(Reason.MALFORMED, f"{tx.kind.name.lower()} must not name a recipient")
    try:
        tx.verify_signature()
    except InvalidSignature:
        raise ValidationError(Reason.BAD_SIGNATURE, "transaction signature does not verify") from None


def _credit(account: Account, amount: int) -> Account:
    balance = account.balance + amount
    if balance > U64_MAX:
        raise ValidationError(Reason.BAD_AMOUNT, "balance would overflow")
    return _with(account, balance=balance)


def _with(account: Account, **fields: object) -> Account:
    """``account`` with some fields replaced (``dataclasses.replace`` without its per-field introspection)."""
    get = fields.get
    return Account(get("balance", account.balance), get("nonce", account.nonce),  # type: ignore[arg-type]
                   get("stake", account.stake), get("unbonding", account.unbonding),  # type: ignore[arg-type]
                   get("pubkey", account.pubkey), get("jailed", account.jailed))  # type: ignore[arg-type]


def apply_tx(overlay: Overlay, params: ChainParams, tx: Transaction, height: int) -> int:
    """Apply one transaction at ``height``; returns the fee collected. The overlay is unchanged on error."""
    check_tx_static(params, tx)
    sender_addr = tx.sender_address
    sender = overlay.get_account(sender_addr).matured(height)
    if tx.nonce != sender.nonce:
        raise ValidationError(Reason.BAD_NONCE, f"nonce {tx.nonce}, account expects {sender.nonce}")
    pubkey = sender.pubkey or tx.sender
    if tx.kind == TxKind.TRANSFER:
        if sender.balance < tx.amount + tx.fee:
            raise ValidationError(Reason.INSUFFICIENT_FUNDS,
                                  f"balance {sender.balance} < amount {tx.amount} + fee {tx.fee}")
        sender = _with(sender, balance=sender.balance - tx.amount - tx.fee, nonce=sender.nonce + 1, pubkey=pubkey)
        if tx.recipient == sender_addr:
            overlay.set_account(sender_addr, _credit(sender, tx.amount))
        else:
            recipient = _credit(overlay.get_account(tx.recipient).matured(height), tx.amount)
            overlay.set_account(sender_addr, sender)
            overlay.set_account(tx.recipient, recipient)
    elif tx.kind == TxKind.STAKE:
        if sender.jailed:
            raise ValidationError(Reason.NOT_VALIDATOR, "a jailed account cannot stake")
        if sender.balance < tx.amount + tx.fee:
            raise ValidationError(Reason.INSUFFICIENT_FUNDS,
                                  f"balance {sender.balance} < stake {tx.amount} + fee {tx.fee}")
        if sender.stake + tx.amount > U64_MAX:
            raise ValidationError(Reason.BAD_AMOUNT, "stake would overflow")
        overlay.set_account(sender_addr, _with(
            sender, balance=sender.balance - tx.amount - tx.fee, stake=sender.stake + tx.amount,
            nonce=sender.nonce + 1, pubkey=pubkey))
    else:  # UNSTAKE
        if sender.stake < tx.amount:
            raise ValidationError(Reason.INSUFFICIENT_STAKE, f"stake {sender.stake} < {tx.amount}")
        if sender.balance < tx.fee:
            raise ValidationError(Reason.INSUFFICIENT_FUNDS, f"balance {sender.balance} < fee {tx.fee}")
        if len(sender.unbonding) >= params.max_unbonding_entries:
            raise ValidationError(Reason.BAD_AMOUNT,
                                  f"account already has {len(sender.unbonding)} unbonding entries (at most "
                                  f"{params.max_unbonding_entries}); wait for the earliest to mature")
        release = height + params.unbonding_period
        overlay.set_account(sender_addr, _with(
            sender, balance=sender.balance - tx.fee, stake=sender.stake - tx.amount,
            unbonding=(*sender.unbonding, (tx.amount, release)), nonce=sender.nonce + 1, pubkey=pubkey))
    return tx.fee


def apply_evidence(overlay: Overlay, state: StateReader, params: ChainParams, ev: Evidence, height: int) -> None:
    """Jail and slash an equivocating validator."""
    if ev.height >= height or height - ev.height > params.evidence_max_age:
        raise ValidationError(Reason.BAD_EVIDENCE, f"evidence of height {ev.height} not admissible at {height}")
    validators = state.validator_set(ev.height)
    if validators is None:
        raise ValidationError(Reason.BAD_EVIDENCE, f"no validator set known for height {ev.height}")
    ev.verify(validators, params.chain_id)
    acct = overlay.get_account(ev.validator).matured(height)
    if acct.jailed:
        raise ValidationError(Reason.DUPLICATE, "validator already jailed")
    # Unbonding stake is slashed too: unstaking right after equivocating must not escape the penalty.
    def cut(amount: int) -> int:
        return amount - amount * params.slash_ppm // 1_000_000
    unbonding = tuple((cut(a), h) for a, h in acct.unbonding)
    overlay.set_account(ev.validator, _with(acct, stake=cut(acct.stake), unbonding=unbonding, jailed=True))


def is_validator(account: Account, params: ChainParams) -> bool:
    return account.stake >= params.min_stake and not account.jailed and len(account.pubkey) == 33


def next_validator_set(current: ValidatorSet, changes: dict[bytes, Account], params: ChainParams) -> ValidatorSet:
    """The set two heights on: ``current`` (set of h+1) updated with the accounts block h touched."""
    members = dict(current.by_address)
    for address, acct in changes.items():
        if is_validator(acct, params):
            members[address] = Validator(address, acct.pubkey, acct.stake)
        else:
            members.pop(address, None)
    if members == current.by_address:
        return current
    return ValidatorSet(members.values())


def _accumulate(state: StateReader, overlay: Overlay) -> tuple[bytes, dict[bytes, Account | None]]:
    acc = lt.LtHash(state.lthash())
    undo: dict[bytes, Account | None] = {}
    for address, new in overlay.changes.items():
        old = overlay.base_account(address)
        undo[address] = old
        if old is not None and not old.is_empty:
            acc.remove(address + old.encoded)
        if not new.is_empty:
            acc.add(address + new.encoded)
    return acc.to_bytes(), undo


def execute_block(state: StateReader, params: ChainParams, height: int, proposer: bytes,
                  txs: Iterable[Transaction], evidence: Sequence[Evidence] = (),
                  skip_invalid: bool = False, max_txs: int | None = None) -> BlockResult:
    """Run evidence, txs and the reward at ``height`` over ``state``.

    With ``skip_invalid`` (a proposer filling a block from its mempool) invalid txs are left out and
    reported in ``rejected``, and filling stops at ``max_txs`` (capped by ``max_block_txs``) or the
    byte budget; otherwise the first invalid tx raises.
    """
    validators_next = state.validator_set(height + 1)
    if validators_next is None:
        raise ValidationError(Reason.WRONG_HEIGHT, f"no validator set known for height {height + 1}")
    overlay = Overlay(state)
    used_evidence: list[Evidence] = []
    budget = params.max_block_bytes - BLOCK_OVERHEAD
    for ev in evidence:
        if not skip_invalid:
            apply_evidence(overlay, state, params, ev, height)
        elif len(ev.encoded) <= budget:
            # A proposer leaves out evidence that no longer applies (e.g. a second equivocation of a
            # validator already jailed by the first) instead of failing to propose at all.
            snap = overlay.snapshot()
            try:
                apply_evidence(overlay, state, params, ev, height)
            except (ValidationError, InvalidSignature):
                overlay.restore(snap)
                continue
        else:
            continue
        used_evidence.append(ev)
        budget -= len(ev.encoded)
    fees = 0
    applied: list[Transaction] = []
    rejected: list[tuple[Transaction, str]] = []
    limit = params.max_block_txs if max_txs is None else min(max_txs, params.max_block_txs)
    if not skip_invalid:
        txs = tuple(txs)
        if len(txs) > params.max_block_txs:
            raise ValidationError(Reason.BLOCK_TOO_LARGE, f"{len(txs)} txs > max_block_txs {params.max_block_txs}")
    for index, tx in enumerate(txs):
        if skip_invalid:
            if len(applied) >= limit:
                break
            if tx.size > budget:
                continue
        try:
            fees += apply_tx(overlay, params, tx, height)      # leaves the overlay unchanged if it raises
        except ValidationError as exc:
            if not skip_invalid:
                raise ValidationError(exc.reason, f"tx {index} ({tx.id.hex()[:16]}): {exc.detail}") from None
            rejected.append((tx, exc.reason.name.lower()))
            continue
        applied.append(tx)
        budget -= tx.size
    reward_to = overlay.get_account(proposer).matured(height)
    overlay.set_account(proposer, _credit(reward_to, params.reward_at(height) + fees))
    changes = overlay.changes
    lthash, undo = _accumulate(state, overlay)
    return BlockResult(
        height=height, changes=changes, undo=undo, lthash=lthash, state_root=hashlib.sha256(lthash).digest(),
        next_validators=next_validator_set(validators_next, changes, params),
        applied=tuple(applied), rejected=tuple(rejected), evidence=tuple(used_evidence))


def build_block(state: StateReader, params: ChainParams, height: int, round_: int, prev_hash: bytes,
                timestamp: int, proposer: bytes, candidates: Iterable[Transaction],
                evidence: Sequence[Evidence] = (), max_txs: int | None = None) -> tuple[Block, BlockResult]:
    """Assemble a valid block for ``height`` from candidate txs (invalid ones left out)."""
    validators = state.validator_set(height)
    if validators is None:
        raise ValidationError(Reason.WRONG_HEIGHT, f"no validator set known for height {height}")
    result = execute_block(state, params, height, proposer, candidates, evidence, skip_invalid=True,
                           max_txs=max_txs)
    header = Header(height=height, round=round_, prev_hash=prev_hash, timestamp=timestamp, proposer=proposer,
                    tx_root=tx_root(result.applied), state_root=result.state_root,
                    validators_hash=validators.hash, evidence_root=evidence_root(result.evidence))
    return Block(header, result.applied, result.evidence), result


def check_block_body(params: ChainParams, block: Block) -> None:
    """The body is the one the header commits to (tx and evidence roots) and within the size caps.

    Stateless and cheap next to execution: the engine runs it on every proposal before storing it, so a
    relay that swaps a signed header's body is refused (and charged) at once, and one block hash always
    means one body (SPEC §4 "Proposal integrity").
    """
    if len(block.txs) > params.max_block_txs:
        raise ValidationError(Reason.BLOCK_TOO_LARGE, f"{len(block.txs)} txs > max_block_txs {params.max_block_txs}")
    if block.size > params.max_block_bytes:
        raise ValidationError(Reason.BLOCK_TOO_LARGE, f"{block.size} bytes > {params.max_block_bytes}")
    block.check_roots()


def validate_block(state: StateReader, params: ChainParams, block: Block, prev_hash: bytes,
                   prev_timestamp: int) -> BlockResult:
    """Full validation of a proposed or synced block on top of ``state``; returns its result."""
    h = block.header
    if h.version != BLOCK_VERSION:
        raise ValidationError(Reason.BAD_BLOCK, f"unknown block version {h.version}")
    if h.prev_hash != prev_hash:
        raise ValidationError(Reason.BAD_BLOCK, "prev_hash does not match our tip")
    if h.timestamp <= prev_timestamp:
        raise ValidationError(Reason.BAD_TIMESTAMP, "timestamp not after the parent block's")
    validators = state.validator_set(h.height)
    if validators is None:
        raise ValidationError(Reason.WRONG_HEIGHT, f"no validator set known for height {h.height}")
    if h.validators_hash != validators.hash:
        raise ValidationError(Reason.BAD_BLOCK, "validators_hash does not match the set of this height")
    if h.proposer not in validators:
        raise ValidationError(Reason.NOT_VALIDATOR, "proposer is not a validator at this height")
    check_block_body(params, block)
    preverify(block.txs)            # signatures on both cores first; execution still checks each one
    result = execute_block(state, params, h.height, h.proposer, block.txs, block.evidence)
    if result.state_root != h.state_root:
        raise ValidationError(Reason.BAD_BLOCK, "state_root does not match the executed state")
    return result
