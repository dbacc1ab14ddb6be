"""Verify and apply a batch of certified blocks from sync: one LMDB write transaction per batch (SPEC §6).

A synced batch is checked block by block in order against a :class:`PendingChain` -- the store with
the results of the blocks already verified in this batch layered on top, so block n+1 validates against
the state after block n, and its validator set (which may have changed at n+2 inside the batch) comes
from block n's result. Per block: the height follows the previous one, ``prev_hash`` links, the commit
certificate verifies under the set of its height, and the block validates and executes
(``ledger.state.validate_block``). Verification stops at the first bad block; the good prefix is then
committed with :meth:`Store.commit_blocks` in one transaction.

Signatures are verified once per object: transaction signatures through the verified-id cache of
``ledger/tx.py`` and precommit signatures through the same cache keyed by vote id, public key and chain
id (``ledger/block.py``); the certificate check and the execution each check what the other does not.
"""
from __future__ import annotations

from dataclasses import dataclass

from timecoin.errors import InvalidSignature, Reason, StoreError, ValidationError
from timecoin.ledger.account import Account
from timecoin.ledger.block import Block, CommitCertificate, verify_certificate
from timecoin.ledger.params import ChainParams
from timecoin.ledger.result import BlockResult
from timecoin.ledger.state import validate_block
from timecoin.ledger.validators import ValidatorSet
from timecoin.store import Store

Items = list[tuple[Block, CommitCertificate]]


@dataclass(frozen=True)
class BatchError:
    """Why block ``index`` of a batch (at ``height``) was refused; the blocks before it are good."""

    index: int
    height: int
    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"block {self.height} (batch index {self.index}): {self.reason.name.lower()}: {self.detail}"


class PendingChain:
    """The store plus blocks verified but not yet committed: a StateReader and the chain's tip.

    Reads of the store are cached for the life of the view: nothing writes the store while a batch is
    verified (one reactor thread), and a batch touches the same accounts and validator sets repeatedly.
    """

    def __init__(self, store: Store, genesis_time_ms: int = 0) -> None:
        self.store = store
        self.base_height = store.tip_height()
        self._base_hash = store.tip_hash()
        if self.base_height == 0:
            self._base_time = genesis_time_ms
        else:
            tip = store.get_block(self.base_height)
            if tip is None:
                raise StoreError(f"the store lacks its tip block {self.base_height}")
            self._base_time = tip.header.timestamp
        self.blocks: list[Block] = []
        self.results: list[BlockResult] = []
        self._changes: dict[bytes, Account] = {}                # pending final accounts (empty = deleted)
        self._validators: dict[int, ValidatorSet] = {}          # pending sets, heights > base + 2
        self._lthash: bytes | None = None
        self._store_accounts: dict[bytes, Account | None] = {}
        self._store_validators: dict[int, ValidatorSet | None] = {}

    # -- StateReader -----------------------------------------------------------------------------
    def get_account(self, address: bytes) -> Account | None:
        acct = self._changes.get(address)
        if acct is not None:
            return None if acct.is_empty else acct       # as the store: empty accounts are absent
        if address not in self._store_accounts:
            self._store_accounts[address] = self.store.get_account(address)
        return self._store_accounts[address]

    def validator_set(self, height: int) -> ValidatorSet | None:
        pending = self._validators.get(height)
        if pending is not None:
            return pending
        if height not in self._store_validators:
            self._store_validators[height] = self.store.validator_set(height)
        return self._store_validators[height]

    def lthash(self) -> bytes:
        if self._lthash is None:
            self._lthash = self.store.lthash()
        return self._lthash

    # -- the tip ---------------------------------------------------------------------------------
    def tip_height(self) -> int:
        return self.base_height + len(self.blocks)

    def tip_hash(self) -> bytes:
        return self.blocks[-1].hash if self.blocks else self._base_hash

    def tip_time_ms(self) -> int:
        """Timestamp of the tip block (the genesis time at height 0): the floor of the next block's."""
        return self.blocks[-1].header.timestamp if self.blocks else self._base_time

    def get_block(self, height: int) -> Block | None:
        if self.base_height < height <= self.tip_height():
            return self.blocks[height - self.base_height - 1]
        return self.store.get_block(height)

    def push(self, block: Block, result: BlockResult) -> None:
        """Layer a verified block's result on top: its accounts, LtHash and the set of height + 2."""
        if block.height != self.tip_height() + 1 or result.height != block.height:
            raise ValueError(f"block {block.height} does not follow the pending tip {self.tip_height()}")
        self._changes.update(result.changes)
        self._validators[block.height + 2] = result.next_validators
        self._lthash = result.lthash
        self.blocks.append(block)
        self.results.append(result)


# A certified block stamped further than this in our future is refused by sync (our clock, or the chain's, is
# badly wrong: the operator must look). Consensus itself judges only fresh proposals, by precision/message_delay.
MAX_CLOCK_DRIFT_MS = 10_000


def _check(view: PendingChain, params: ChainParams, chain_id: str, block: Block, cert: CommitCertificate,
           now_ms: int | None) -> BlockResult:
    """Verify one block on top of ``view``; ValidationError with the reason it is refused."""
    height = block.height
    if height != view.tip_height() + 1:
        raise ValidationError(Reason.WRONG_HEIGHT, f"expected height {view.tip_height() + 1}")
    if block.header.prev_hash != view.tip_hash():
        raise ValidationError(Reason.WRONG_HEIGHT,
                              f"prev_hash {block.header.prev_hash.hex()} is not the hash of block {height - 1}")
    if now_ms is not None and block.header.timestamp > now_ms + MAX_CLOCK_DRIFT_MS:
        raise ValidationError(Reason.BAD_TIMESTAMP,
                              f"timestamp {block.header.timestamp} is in the future (now {now_ms})")
    validators = view.validator_set(height)
    if validators is None:
        raise ValidationError(Reason.WRONG_HEIGHT, f"no validator set known for height {height}")
    try:
        verify_certificate(block, cert, validators, chain_id)
    except ValidationError as exc:
        raise ValidationError(Reason.BAD_CERTIFICATE, exc.detail) from None
    try:
        return validate_block(view, params, block, view.tip_hash(), view.tip_time_ms())
    except InvalidSignature as exc:    # validate_block maps these itself; kept so none escapes raw
        raise ValidationError(exc.reason, str(exc)) from None


def certificate_problem(store: Store, chain_id: str, block: Block, cert: CommitCertificate) -> str | None:
    """None if ``cert`` finalizes ``block`` under the store's validator set of its height, else why not."""
    validators = store.validator_set(block.height)
    if validators is None:
        return f"no validator set known for height {block.height}"
    try:
        verify_certificate(block, cert, validators, chain_id)
    except ValidationError as exc:
        return exc.detail
    return None


def verify_batch(store: Store, params: ChainParams, chain_id: str, items: Items, now_ms: int | None = None,
                 *, genesis_time_ms: int = 0) -> tuple[list[BlockResult], BatchError | None]:
    """Verify ``items`` in order on top of the store; the results of the good prefix and the first error.

    ``now_ms`` (when given) refuses blocks timestamped more than the consensus clock drift into our
    future. ``genesis_time_ms`` is the floor of block 1's timestamp (used only when the store is at
    height 0). Nothing is written.
    """
    view = PendingChain(store, genesis_time_ms)
    for index, (block, cert) in enumerate(items):
        try:
            result = _check(view, params, chain_id, block, cert, now_ms)
        except ValidationError as exc:
            return view.results, BatchError(index, block.height, exc.reason, exc.detail)
        view.push(block, result)
    return view.results, None


def apply_batch(store: Store, params: ChainParams, chain_id: str, items: Items, now_ms: int | None = None,
                *, genesis_time_ms: int = 0) -> tuple[int, BatchError | None]:
    """Verify ``items`` and commit the good prefix in one write transaction; (blocks committed, error).

    A StoreError from the commit (which cannot happen unless something else wrote the store meanwhile)
    propagates: then nothing was committed.
    """
    results, error = verify_batch(store, params, chain_id, items, now_ms, genesis_time_ms=genesis_time_ms)
    if results:
        store.commit_blocks([(block, cert, result) for (block, cert), result in zip(items, results, strict=False)])
    return len(results), error
