"""The mempool (SPEC §2): valid, not yet included transactions, bounded, and fee-ordered for proposers.

Rules (each tested in tests/unit/test_mempool.py):

* **Admission**, cheapest checks first: a tx id already held is ``DUPLICATE``; another chain id is
  ``WRONG_CHAIN``; a fee below ``max(params.min_fee, min_relay_fee)`` (the *fee floor*) is
  ``FEE_TOO_LOW``; then the ledger's own stateless checks (``ledger.state.check_tx_static``: amount,
  recipient, signature -> ``BAD_AMOUNT``/``MALFORMED``/``BAD_SIGNATURE``).
* **Nonces.** Per sender the pool holds a *chain*: txs with consecutive nonces starting at the account's
  committed nonce. A nonce below the account nonce, or above ``account nonce + pending txs of that
  sender`` (a gap), is ``BAD_NONCE``. A nonce equal to a pending one is a replacement (below). A chain
  holds at most ``max_per_sender`` (64) txs; the next one is ``MEMPOOL_FULL`` (a capacity limit, not a
  bad tx: the sender may resend it once the chain drains).
* **State.** A tx is judged against the committed state *after that sender's earlier pending txs*: the
  chain before it and then the tx itself are applied with ``ledger.state.apply_tx`` on an ``Overlay`` at
  ``height_fn()`` (the height of the next block, so unbonding maturity is judged as the block will judge
  it). The ledger's rules are reused, never re-implemented: ``INSUFFICIENT_FUNDS``,
  ``INSUFFICIENT_STAKE``, ``BAD_AMOUNT`` (also an unstake beyond the chain's ``max_unbonding_entries``,
  counting the sender's pending unstakes), ``NOT_VALIDATOR`` come from there. Incoming transfers still
  pending from *other* senders are not counted (the block may order them after this tx).
* **Replace-by-nonce.** A tx with the sender and nonce of a pending tx replaces it only if its fee is at
  least ``old fee * 1.1`` *and* at least ``old fee + fee floor`` (so a replacement pays for the relay
  it causes); else ``REPLACEMENT_UNDERPRICED``. The sender's later pending txs are re-applied after the
  replacement; the first that no longer validates and every one after it are dropped (no gaps).
* **Caps.** The pool holds at most ``max_txs`` txs and ``max_bytes`` bytes of encoded txs. When a new tx
  would exceed a cap, the txs with the lowest fee rate (fee per byte, compared exactly; among equal
  rates the newest first) are evicted, but only txs that are the *last* of their sender's chain, so no
  chain gets a gap; an evicted tail exposes its predecessor as the next candidate. The newcomer's own
  sender's chain is never evicted for it. Eviction happens only if every evicted tx pays strictly less
  per byte than the newcomer and enough room is freed; otherwise nothing changes and the newcomer is
  ``MEMPOOL_FULL``.
* **Selection** (``iter_selected``): highest fee first, ties by arrival, and never a sender's nonce
  n+1 before n: a heap of sender chain heads, each popped head replaced by that sender's next tx. A
  high-fee tx behind a low-fee one of the same sender waits for it (no child-pays-for-parent).
* **After a block** (``remove_committed``, called once the block's state is committed): the included
  txs are dropped, then every chain of a sender with a tx in the block is re-checked against the new
  state: stale nonces are dropped, and from the first tx that no longer validates the rest of the
  chain is dropped. ``revalidate()`` re-checks chosen (or all) senders after a rollback or evidence.

Only the reactor thread uses a Mempool (like the Store); nothing here blocks.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from timecoin.errors import Reason, ValidationError
from timecoin.ledger.account import EMPTY_ACCOUNT, Account
from timecoin.ledger.params import ChainParams
from timecoin.ledger.result import StateReader
from timecoin.ledger.state import Overlay, apply_tx, check_tx_static
from timecoin.ledger.tx import Transaction

MAX_PER_SENDER = 64            # pending txs per sender chain
REPLACE_NUM, REPLACE_DEN = 11, 10   # a replacement pays at least 1.1x the old fee
# Every encoded tx is 143 + len(chain id) bytes, the chain id at most 255 bytes (the wire layout's one-byte length).
MAX_TX_SIZE = 143 + 255
RATE_SCALE = math.lcm(*range(1, MAX_TX_SIZE + 1))


@dataclass(eq=False)
class _Entry:
    """One pending tx and its arrival number (ties in selection and eviction)."""

    tx: Transaction
    seq: int

    @property
    def rate(self) -> int:
        """The fee per byte as an exact integer key: ``fee * RATE_SCALE / size`` (RATE_SCALE is a multiple of
        every possible tx size, so this is an integer and orders exactly as ``fee / size`` would, at the cost of
        one big-int compare instead of two Fraction ones per heap step)."""
        return self.tx.fee * (RATE_SCALE // self.tx.size)


class _StaleChain(Exception):
    """A sender's pending chain no longer validates against the state (internal: triggers a re-check)."""


class Mempool:
    """Pending transactions keyed by id, organised as per-sender nonce chains."""

    log = Logger()

    def __init__(self, params: ChainParams, state: StateReader, *, max_txs: int, max_bytes: int,
                 min_relay_fee: int, height_fn: Callable[[], int],
                 max_per_sender: int = MAX_PER_SENDER) -> None:
        if max_txs < 1 or max_bytes < 1 or max_per_sender < 1:
            raise ValueError("mempool caps must be positive")
        self.params = params
        self.state = state
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self.min_relay_fee = min_relay_fee
        self.height_fn = height_fn
        self.max_per_sender = max_per_sender
        self._entries: dict[bytes, _Entry] = {}
        self._chains: dict[bytes, list[_Entry]] = {}      # sender address -> entries in nonce order
        self._bytes = 0
        self.rejected: collections.Counter[str] = collections.Counter()   # refused txs by reason (metrics)
        self._seq = itertools.count()
        # Min-heap of eviction candidates (rate, -seq, txid); lazily pruned: an item counts only while
        # its tx is still the last of its sender's chain. Every chain tail is in it at least once.
        self._tails: list[tuple[int, int, bytes]] = []
        # Per sender: (height, committed account, the account after the whole chain at that height), so
        # appending to a chain applies only the newcomer. Valid while both keys match; dropped whenever
        # the chain changes in any other way.
        self._after: dict[bytes, tuple[int, Account, Account]] = {}

    # -- reading ------------------------------------------------------------------------------------
    @property
    def fee_floor(self) -> int:
        """The lowest fee accepted: the chain's minimum or this node's relay minimum, whichever is higher."""
        return max(self.params.min_fee, self.min_relay_fee)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, txid: object) -> bool:
        return txid in self._entries

    def get(self, txid: bytes) -> Transaction | None:
        entry = self._entries.get(txid)
        return entry.tx if entry else None

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def txids(self) -> list[bytes]:
        """Ids of all pending txs, in arrival order."""
        return [e.tx.id for e in sorted(self._entries.values(), key=lambda e: e.seq)]

    def pending_nonce(self, address: bytes) -> int:
        """The nonce the sender's next new tx must carry (account nonce + pending txs)."""
        chain = self._chains.get(address)
        return chain[-1].tx.nonce + 1 if chain else self._account(address).nonce

    def info(self) -> dict[str, Any]:
        return {"size": len(self._entries), "bytes": self._bytes, "max_txs": self.max_txs,
                "max_bytes": self.max_bytes, "min_fee": self.fee_floor}

    def iter_selected(self) -> Iterator[Transaction]:
        """Txs for a block: highest fee first (ties by arrival), each sender's in nonce order.

        Works on a snapshot of the chains taken at the first ``next()``, so the pool may change while a
        consumer iterates.
        """
        chains = {addr: tuple(chain) for addr, chain in self._chains.items() if chain}
        heap = [(-chain[0].tx.fee, chain[0].seq, addr, 0) for addr, chain in chains.items()]
        heapq.heapify(heap)
        while heap:
            _, _, addr, index = heapq.heappop(heap)
            chain = chains[addr]
            yield chain[index].tx
            if index + 1 < len(chain):
                nxt = chain[index + 1]
                heapq.heappush(heap, (-nxt.tx.fee, nxt.seq, addr, index + 1))

    # -- adding -------------------------------------------------------------------------------------
    def add(self, tx: Transaction) -> None:
        """Admit ``tx`` or raise ValidationError saying why not (the pool is then unchanged).

        Refusals are counted by reason in ``rejected`` (the metrics' mempool rejections).
        """
        try:
            self._add(tx)
        except ValidationError as exc:
            key = _reason_label(exc.reason)       # (a scratch copy holds a plain dict: testmempoolaccept)
            self.rejected[key] = self.rejected.get(key, 0) + 1
            raise

    def _add(self, tx: Transaction) -> None:
        if tx.id in self._entries:
            raise ValidationError(Reason.DUPLICATE, "transaction already in the mempool")
        if tx.chain_id != self.params.chain_id:
            raise ValidationError(Reason.WRONG_CHAIN, f"tx for chain {tx.chain_id!r}, this is "
                                                      f"{self.params.chain_id!r}")
        if tx.fee < self.fee_floor:
            raise ValidationError(Reason.FEE_TOO_LOW, f"fee {tx.fee} below the mempool minimum {self.fee_floor}")
        check_tx_static(self.params, tx)
        addr = tx.sender_address
        try:
            self._admit(tx, addr)
        except _StaleChain:
            # The sender's pending chain no longer validates (state changed without remove_committed, a
            # rollback, a slashing): re-sync it and judge the newcomer against what is left.
            self._recheck(addr)
            try:
                self._admit(tx, addr)
            except _StaleChain:   # pragma: no cover - a re-checked chain validates at the same height
                raise ValidationError(Reason.INTERNAL, "sender's pending txs do not re-validate") from None

    def _admit(self, tx: Transaction, addr: bytes) -> None:
        stored = self.state.get_account(addr)
        account = stored or EMPTY_ACCOUNT
        chain = self._chains.get(addr, [])
        if chain and chain[0].tx.nonce != account.nonce:
            raise _StaleChain()
        if tx.nonce < account.nonce:
            raise ValidationError(Reason.BAD_NONCE, f"nonce {tx.nonce} already used (account nonce {account.nonce})")
        next_nonce = account.nonce + len(chain)
        if tx.nonce > next_nonce:
            raise ValidationError(Reason.BAD_NONCE, f"nonce {tx.nonce} leaves a gap: the sender's next nonce "
                                                    f"is {next_nonce}")
        if tx.nonce < next_nonce:
            self._replace(tx, addr, chain, tx.nonce - account.nonce)
            return
        if len(chain) >= self.max_per_sender:
            raise ValidationError(Reason.MEMPOOL_FULL, f"sender already has {len(chain)} pending txs "
                                                       f"(at most {self.max_per_sender})")
        height = self.height_fn()
        overlay = Overlay(self.state, {addr: stored})
        cached = self._after.get(addr)
        if cached is not None and cached[0] == height and cached[1] == account:
            overlay.set_account(addr, cached[2])       # the sender after its chain: no re-application
        else:
            self._apply_chain(overlay, chain, height)
        apply_tx(overlay, self.params, tx, height)
        victims = self._plan_eviction(tx, len(self._entries) + 1, self._bytes + tx.size, addr)
        self._evict(victims)
        entry = _Entry(tx, next(self._seq))
        self._entries[tx.id] = entry
        self._bytes += tx.size
        self._set_chain(addr, [*chain, entry])
        self._after[addr] = (height, account, overlay.get_account(addr))

    def _replace(self, tx: Transaction, addr: bytes, chain: list[_Entry], index: int) -> None:
        old = chain[index].tx
        if tx.fee * REPLACE_DEN < old.fee * REPLACE_NUM or tx.fee < old.fee + self.fee_floor:
            needed = max(-(-old.fee * REPLACE_NUM // REPLACE_DEN), old.fee + self.fee_floor)
            raise ValidationError(Reason.REPLACEMENT_UNDERPRICED,
                                  f"replacing nonce {tx.nonce} needs a fee of at least {needed}, not {tx.fee}")
        overlay, height = Overlay(self.state), self.height_fn()
        self._apply_chain(overlay, chain[:index], height)
        apply_tx(overlay, self.params, tx, height)
        kept: list[_Entry] = []
        for later in chain[index + 1:]:
            try:
                apply_tx(overlay, self.params, later.tx, height)
            except ValidationError:
                break
            kept.append(later)
        dropped = chain[index + 1 + len(kept):]
        gone = [chain[index], *dropped]
        count = len(self._entries) - len(gone) + 1
        size = self._bytes - sum(e.tx.size for e in gone) + tx.size
        victims = self._plan_eviction(tx, count, size, addr)
        self._evict(victims)
        for e in gone:
            self._drop_entry(e)
        entry = _Entry(tx, next(self._seq))
        self._entries[tx.id] = entry
        self._bytes += tx.size
        self._set_chain(addr, [*chain[:index], entry, *kept])
        if dropped:
            self.log.debug("Replacement of {txid} dropped {n} later txs of its sender", txid=old.id.hex(),
                           n=len(dropped))

    def _apply_chain(self, overlay: Overlay, chain: list[_Entry], height: int) -> None:
        """Apply pending txs of one sender (already admitted, so a failure means the chain went stale)."""
        try:
            for entry in chain:
                apply_tx(overlay, self.params, entry.tx, height)
        except ValidationError:
            raise _StaleChain() from None

    # -- eviction -----------------------------------------------------------------------------------
    def _plan_eviction(self, tx: Transaction, count: int, size: int, exclude: bytes) -> list[_Entry]:
        """Chain tails to evict so that ``count`` txs of ``size`` bytes fit; MEMPOOL_FULL if impossible.

        Pops candidates from the tail heap; anything popped that is still a valid candidate is pushed
        back unless it is actually evicted, so a refused plan leaves the pool as it was.
        """
        if count <= self.max_txs and size <= self.max_bytes:
            return []
        if tx.size > self.max_bytes:
            raise ValidationError(Reason.MEMPOOL_FULL, f"a {tx.size}-byte tx exceeds max_bytes {self.max_bytes}")
        victims: list[_Entry] = []
        depth: dict[bytes, int] = {}                   # victims taken so far per sender
        restore: list[tuple[int, int, bytes]] = []
        ok = False
        while self._tails:
            item = heapq.heappop(self._tails)
            entry = self._entries.get(item[2])
            if entry is None:
                continue
            addr = entry.tx.sender_address
            chain = self._chains[addr]
            tail_index = len(chain) - 1 - depth.get(addr, 0)
            if chain[tail_index] is not entry:
                continue                               # not a tail (any more), or a duplicate item
            if addr == exclude:
                restore.append(item)
                continue
            if entry.tx.fee * tx.size >= tx.fee * entry.tx.size:
                restore.append(item)                   # cheapest candidate pays as much as the newcomer
                break
            victims.append(entry)
            restore.append(item)
            depth[addr] = depth.get(addr, 0) + 1
            count -= 1
            size -= entry.tx.size
            if tail_index > 0:
                self._push_tail(chain[tail_index - 1])
            if count <= self.max_txs and size <= self.max_bytes:
                ok = True
                break
        for item in restore:
            if not ok or self._entries.get(item[2]) not in victims:
                heapq.heappush(self._tails, item)
        if not ok:
            raise ValidationError(Reason.MEMPOOL_FULL, f"mempool full ({len(self._entries)} txs, {self._bytes} "
                                                       "bytes) and no pending tx pays a lower fee rate")
        return victims

    def _evict(self, victims: list[_Entry]) -> None:
        for entry in victims:
            addr = entry.tx.sender_address
            chain = self._chains[addr]
            assert chain[-1] is entry
            self._drop_entry(entry)
            chain.pop()
            self._after.pop(addr, None)
            if not chain:
                del self._chains[addr]
        if victims:
            self.log.debug("Evicted {n} low-fee txs", n=len(victims))

    def _push_tail(self, entry: _Entry) -> None:
        heapq.heappush(self._tails, (entry.rate, -entry.seq, entry.tx.id))

    # -- after a block ------------------------------------------------------------------------------
    def remove_committed(self, txs: Iterable[Transaction]) -> None:
        """Forget txs a committed block included and re-check their senders against the new state.

        Call it after the block's state is committed (``height_fn`` then gives the next height).
        """
        senders: set[bytes] = set()
        for tx in txs:
            senders.add(tx.sender_address)
            entry = self._entries.get(tx.id)
            if entry is not None:
                self._drop_entry(entry)
        for addr in senders:
            self._recheck(addr)

    def revalidate(self, senders: Iterable[bytes] | None = None) -> int:
        """Re-check the chains of ``senders`` (all if None) against the state; returns how many were dropped."""
        before = len(self._entries)
        for addr in list(self._chains if senders is None else senders):
            self._recheck(addr)
        return before - len(self._entries)

    def _recheck(self, addr: bytes) -> None:
        """Keep the longest run of the sender's chain that starts at its nonce and still validates."""
        chain = self._chains.get(addr)
        if chain is None:
            return
        nonce = self._account(addr).nonce
        overlay, height = Overlay(self.state), self.height_fn()
        kept: list[_Entry] = []
        for entry in chain:
            if self._entries.get(entry.tx.id) is not entry or entry.tx.nonce < nonce:
                continue                               # already dropped, or stale
            if entry.tx.nonce != nonce + len(kept):
                break                                  # a gap
            try:
                apply_tx(overlay, self.params, entry.tx, height)
            except ValidationError:
                break
            kept.append(entry)
        for entry in chain:
            if entry not in kept:
                self._drop_entry(entry)
        self._set_chain(addr, kept)

    # -- bookkeeping --------------------------------------------------------------------------------
    def _account(self, addr: bytes) -> Account:
        return self.state.get_account(addr) or EMPTY_ACCOUNT

    def _drop_entry(self, entry: _Entry) -> None:
        if self._entries.pop(entry.tx.id, None) is entry:
            self._bytes -= entry.tx.size

    def _set_chain(self, addr: bytes, chain: list[_Entry]) -> None:
        """Install a sender's chain; its tail becomes an eviction candidate."""
        old = self._chains.get(addr)
        self._after.pop(addr, None)
        if not chain:
            self._chains.pop(addr, None)
            return
        self._chains[addr] = chain
        if not old or old[-1] is not chain[-1]:
            self._push_tail(chain[-1])
        if len(self._tails) > 2 * len(self._chains) + 64:
            self._tails = [(c[-1].rate, -c[-1].seq, c[-1].tx.id) for c in self._chains.values()]
            heapq.heapify(self._tails)


def _reason_label(reason: Reason) -> str:
    return reason.name.lower()
