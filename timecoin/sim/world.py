"""The simulated world's parts: deterministic keys, a genesis with a tx workload, the clock, and nodes.

A :class:`Node` is a real validator stack minus the reactor: ``MemoryStore`` + ``ChainApp`` + a signer
+ the pure ``Engine``. Honest nodes sign through ``PrivValidator`` (the double-sign guard); Byzantine
nodes through :class:`RawSigner`, which signs anything (the adversary bypasses the guard).
"""
from __future__ import annotations

import functools
import hashlib
import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from timecoin import crypto
from timecoin.consensus import engine as eng
from timecoin.consensus.app import ChainApp
from timecoin.consensus.privval import PrivValidator
from timecoin.errors import Reason
from timecoin.ledger.block import Block, CommitCertificate, Proposal, Vote
from timecoin.ledger.genesis import Genesis, GenesisAccount
from timecoin.ledger.tx import Transaction, TxKind
from timecoin.memstore import MemoryStore

CHAIN_ID = "timecoin-adversary"
GENESIS_TIME_MS = 0
START_TIME = 1.0                                # simulated seconds at which the nodes start
STAKE_UNIT = 1_000 * crypto.UNITS_PER_TIME      # power 1 = the minimum validator stake
USERS = 2                                       # accounts that send the workload's transfers
POOL_NONCES = 24                                # workload depth per user (a run commits far fewer blocks)
MAX_BLOCK_TXS = 3                               # small blocks: cheap to build, and bodies differ by proposer
# CometBFT's test profile (SPEC §4), no block interval: heights run back to back.
TIMEOUTS = eng.Timeouts(block_interval=0.0)

Message = Proposal | Vote


@functools.cache
def key_of(i: int, label: str = "adversary") -> crypto.PrivateKey:
    """Deterministic keys: a replayed seed signs exactly the same bytes."""
    return crypto.PrivateKey(hashlib.sha256(f"timecoin {label} key {i}".encode()).digest())


def make_keys(n: int, label: str = "adversary") -> list[crypto.PrivateKey]:
    return [key_of(i, label) for i in range(n)]


@functools.cache
def user_keys() -> tuple[crypto.PrivateKey, ...]:
    return tuple(make_keys(USERS, "adversary user"))


@functools.cache
def make_genesis(n: int, powers: tuple[int, ...]) -> Genesis:
    """Validators 0..n-1 with ``powers``, plus the workload's user accounts (cached: same args, same genesis)."""
    keys = make_keys(n)
    accounts = tuple(GenesisAccount(k.address, 1_000_000 * crypto.UNITS_PER_TIME, p * STAKE_UNIT, k.public_key)
                     for k, p in zip(keys, powers, strict=True))
    accounts += tuple(GenesisAccount(u.address, 1_000_000 * crypto.UNITS_PER_TIME, 0, u.public_key)
                      for u in user_keys())
    return Genesis.for_validators([], CHAIN_ID, genesis_time=GENESIS_TIME_MS, extra=accounts,
                                  max_block_txs=MAX_BLOCK_TXS)


@functools.cache
def tx_pool() -> dict[tuple[int, int], tuple[Transaction, Transaction]]:
    """(user, nonce) -> two different transfers with that nonce: proposers pick different ones, so two
    blocks of one height differ in their tx sets (signed once per process)."""
    users = user_keys()
    pool = {}
    for u, key in enumerate(users):
        to = users[(u + 1) % len(users)].address
        for nonce in range(POOL_NONCES):
            pool[(u, nonce)] = tuple(Transaction.create(key, TxKind.TRANSFER, CHAIN_ID, nonce, 1_000 + variant, 1, to)
                                     for variant in (0, 1))
    return pool  # type: ignore[return-value]


def candidates_for(store: MemoryStore, variant: int) -> list[Transaction]:
    """The next pending transfer of each user, in the proposer's variant (what its mempool would offer)."""
    out = []
    for u, key in enumerate(user_keys()):
        acct = store.get_account(key.address)
        nonce = acct.nonce if acct is not None else 0
        pair = tx_pool().get((u, nonce))
        if pair is not None:
            out.append(pair[variant % 2])
    return out


class Clock:
    """Simulated time: a priority queue of ``(time, seq, fn)``; nothing sleeps or reads the wall clock."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.events = 0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0

    def at(self, delay: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + max(0.0, delay), self._seq, fn))

    def run(self, until: Callable[[], bool], deadline: float, max_events: int) -> bool:
        """Process events until ``until()`` (True) or the queue, ``deadline`` or event budget ends (False)."""
        budget = self.events + max_events
        while not until():
            if not self._queue or self._queue[0][0] > deadline or self.events >= budget:
                return False
            t, _, fn = heapq.heappop(self._queue)
            self.now = t
            self.events += 1
            fn()
        return True


class RawSigner:
    """A Byzantine validator's signer: signs whatever it is given, remembering nothing."""

    def __init__(self, key: crypto.PrivateKey, chain_id: str) -> None:
        self.key = key
        self.address = key.address
        self.chain_id = chain_id

    def sign_vote(self, vote: Vote) -> Vote | None:
        return vote.signed(self.key, self.chain_id)

    def sign_proposal(self, proposal: Proposal) -> Proposal | None:
        return proposal.signed(self.key, self.chain_id)


def message_id(msg: object) -> bytes:
    """What a node "has": a vote by its encoding, a proposal by its encoding *with the body* (a relayed
    proposal with an altered body shares the signature and header hash, not the body)."""
    if isinstance(msg, Vote):
        return msg.id
    encoded: bytes = msg.encoded  # type: ignore[attr-defined]
    return hashlib.sha256(encoded).digest()


@dataclass
class Node:
    """One validator's stack, plus what the checks and the gossip read."""

    index: int
    key: crypto.PrivateKey
    byzantine: bool
    skew: float                          # this node's clock offset from simulated time (seconds)
    store: MemoryStore
    app: ChainApp
    engine: eng.Engine
    commit_rounds: dict[int, int] = field(default_factory=dict)
    commit_times: dict[int, float] = field(default_factory=dict)
    signed: list[Message] = field(default_factory=list)       # everything its engine broadcast
    archive: dict[int, list[object]] = field(default_factory=dict)   # messages it holds, by height (gossip)
    has: set[bytes] = field(default_factory=set)
    timers: dict[tuple[int, int, int], int] = field(default_factory=dict)
    height_started: float = 0.0
    synced: list[int] = field(default_factory=list)
    rejects: Counter[Reason] = field(default_factory=Counter)

    @property
    def address(self) -> bytes:
        return self.key.address

    @property
    def height(self) -> int:
        """Committed height (the chain tip)."""
        return self.store.tip_height()

    def chain(self) -> list[tuple[Block, CommitCertificate]]:
        return self.store.get_blocks(1, self.store.tip_height())

    def keep(self, msg: object, height: int) -> bool:
        """Record that this node holds ``msg``; False if it already did."""
        mid = message_id(msg)
        if mid in self.has:
            return False
        self.has.add(mid)
        self.archive.setdefault(height, []).append(msg)
        return True


def make_node(index: int, genesis: Genesis, byzantine: bool, skew: float, timeouts: eng.Timeouts) -> Node:
    key = key_of(index)
    store = MemoryStore(genesis)
    app = ChainApp(store, genesis.params, key.address, GENESIS_TIME_MS,
                   candidates=lambda: candidates_for(store, index))
    signer: PrivValidator | RawSigner = (RawSigner(key, genesis.chain_id) if byzantine
                                         else PrivValidator(key, genesis.chain_id, store))
    return Node(index, key, byzantine, skew, store, app, eng.Engine(app, signer, timeouts))


def with_body(p: Proposal, txs: tuple[Transaction, ...], evidence: tuple = ()) -> Proposal:
    """``p`` with the same signed header and another body (what a keyless relay can forge)."""
    return replace(p, block=Block(p.block.header, txs, evidence))
