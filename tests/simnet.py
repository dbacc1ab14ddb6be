"""An in-memory network of consensus engines on one simulated clock, for fast and reproducible tests.

Each :class:`SimNode` is a real validator stack minus the reactor: ``MemoryStore`` (chain state),
``ChainApp`` (build/validate/commit blocks), ``PrivValidator`` (double-sign guard, over the node's store
unless another key/value store is given) and the pure ``Engine``. :class:`SimNet` plays the role of the
``ConsensusService`` and the P2P layer: it carries out the engine's actions, delivers messages with a
seeded random latency (so they arrive reordered), and can drop, duplicate, filter or forge messages.

Time is a priority queue of ``(time, seq, event)``; nothing sleeps, so hundreds of simulated seconds run
in well under a second. Every run is bounded by an event count and a simulated-time limit.

Gossip: the engine never re-sends. Like CometBFT's gossip routines (which send a peer what it lacks for
the peer's height), ``gossip_interval`` makes every node periodically offer each peer the messages of the
peer's current height that the peer does not have: its own and those it accepted from others (the paper
assumes correct nodes relay what they receive), and the QuorumProofs it holds at that height (each once
per peer), as the P2P layer does. That is what makes liveness hold despite drops and byzantine senders
that show different messages to different nodes; without it a lost message is lost.

Block sync: with ``sync_after``, a node that has spent that long at a height some peer has already
committed takes the block and its commit certificate from the peer (verified against its own validator
set), as the node's sync does. Without gossip that is the only way back for a node that was down while
the others finished heights: nobody re-sends a finished height's messages.

Optional WAL: with ``wal_dir`` each node logs its inputs and own messages as the service does (own ones
without fsync: nothing here survives a real power loss anyway), and :meth:`SimNet.restart` replays the
unfinished height the way ``ConsensusService._replay`` does.
"""
from __future__ import annotations

import hashlib
import heapq
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from timecoin import crypto
from timecoin.consensus import engine as eng
from timecoin.consensus.app import ChainApp
from timecoin.consensus.privval import KeyValue, PrivValidator
from timecoin.consensus.wal import WalKind, WriteAheadLog
from timecoin.errors import Reason, ValidationError
from timecoin.ledger.block import (
    Block,
    CommitCertificate,
    Evidence,
    Proposal,
    QuorumProof,
    Vote,
    VoteType,
    verify_certificate,
)
from timecoin.ledger.genesis import Genesis, GenesisAccount
from timecoin.memstore import MemoryStore
from timecoin.sim.world import Clock

CHAIN_ID = "timecoin-simnet"
GENESIS_TIME_MS = 0
STAKE_UNIT = 1_000 * crypto.UNITS_PER_TIME     # power 1 = the minimum validator stake
# CometBFT's test profile (SPEC §4: devnet and tests), with no block interval so heights run back to back.
FAST = eng.Timeouts(block_interval=0.0)

Message = Proposal | Vote
Sendable = Proposal | Vote | QuorumProof


def make_keys(n: int, label: str = "simnet") -> list[crypto.PrivateKey]:
    """Deterministic keys, so a test, a child process and a restart all agree on every signer."""
    return [crypto.PrivateKey(hashlib.sha256(f"timecoin {label} validator {i}".encode()).digest())
            for i in range(n)]


def make_genesis(keys: list[crypto.PrivateKey], powers: list[int] | None = None,
                 chain_id: str = CHAIN_ID) -> Genesis:
    """A genesis whose validators are ``keys`` with the given powers (default 1 each)."""
    powers = powers or [1] * len(keys)
    accounts = tuple(GenesisAccount(k.address, 1_000_000 * crypto.UNITS_PER_TIME, p * STAKE_UNIT, k.public_key)
                     for k, p in zip(keys, powers, strict=True))
    return Genesis.for_validators([], chain_id, genesis_time=GENESIS_TIME_MS, extra=accounts)


@dataclass
class SimNode:
    """One validator: its chain, app, guard and engine, plus what the test wants to look at."""

    index: int
    key: crypto.PrivateKey
    store: MemoryStore
    app: ChainApp
    signer: PrivValidator
    engine: eng.Engine
    wal: WriteAheadLog | None = None
    online: bool = True                 # False: crashed (receives, sends and ticks nothing)
    mute: bool = False                  # True: runs, but everything it sends is lost
    epoch: int = 0                      # bumped on crash: timers of an older epoch never fire
    commits: dict[int, Block] = field(default_factory=dict)
    certificates: dict[int, CommitCertificate] = field(default_factory=dict)
    commit_rounds: dict[int, int] = field(default_factory=dict)
    commit_times: dict[int, float] = field(default_factory=dict)
    evidence: list[Evidence] = field(default_factory=list)
    rejects: Counter[Reason] = field(default_factory=Counter)
    scheduled: list[tuple[float, eng.ScheduleTimeout]] = field(default_factory=list)
    signed: list[Message] = field(default_factory=list)     # every proposal/vote this node broadcast
    archive: dict[int, list[Message]] = field(default_factory=dict)   # messages it has, by height (gossip)
    has: set[bytes] = field(default_factory=set)     # signatures of messages it has (the peer state gossip reads)
    timers: dict[tuple[int, int, int], int] = field(default_factory=dict)
    height_started: float = 0.0         # simulated time the engine started its current height
    synced: list[int] = field(default_factory=list)    # heights taken from a peer by block sync

    @property
    def address(self) -> bytes:
        return self.key.address

    @property
    def height(self) -> int:
        """Committed height (the chain tip)."""
        return self.store.tip_height()


class SimNet(Clock):
    """N engines wired together in memory; see the module docstring."""

    def __init__(self, n: int = 4, *, powers: list[int] | None = None, seed: int = 0,
                 timeouts: eng.Timeouts = FAST, drop: float = 0.0, duplicate: float = 0.0,
                 latency: tuple[float, float] = (0.001, 0.02), gossip_interval: float | None = None,
                 sync_after: float | None = None, keys: list[crypto.PrivateKey] | None = None,
                 wal_dir: str | None = None, signer_kv: Callable[[int], KeyValue] | None = None) -> None:
        self.keys = keys or make_keys(n)
        self.genesis = make_genesis(self.keys, powers)
        self.rng = random.Random(seed)
        self.timeouts = timeouts
        self.drop = drop
        self.duplicate = duplicate
        self.latency = latency
        self.gossip_interval = gossip_interval
        self.sync_after = sync_after
        self.wal_dir = wal_dir
        self.signer_kv = signer_kv
        Clock.__init__(self)
        # filters(src, dst, msg) -> False drops that copy; hooks(src, msg) -> extra messages src also sends
        self.filters: list[Callable[[int, int, Message], bool]] = []
        self.hooks: list[Callable[[SimNode, Message], list[Message]]] = []
        self.stats: Counter[str] = Counter()
        self._proofs_sent: set[tuple[int, int, bytes]] = set()     # (src, dst, proof bytes) already offered
        self.nodes = [self._make_node(i, k) for i, k in enumerate(self.keys)]

    # -- construction ------------------------------------------------------------------------------
    def _make_node(self, i: int, key: crypto.PrivateKey, store: MemoryStore | None = None) -> SimNode:
        store = store or MemoryStore(self.genesis)
        app = ChainApp(store, self.genesis.params, key.address, GENESIS_TIME_MS)
        kv = self.signer_kv(i) if self.signer_kv else store
        signer = PrivValidator(key, self.genesis.chain_id, kv)
        wal = WriteAheadLog(os.path.join(self.wal_dir, f"node{i}.wal")) if self.wal_dir else None
        return SimNode(i, key, store, app, signer, eng.Engine(app, signer, self.timeouts), wal)

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    def node_of(self, address: bytes) -> SimNode:
        return next(n for n in self.nodes if n.address == address)

    # -- the clock (``at`` and the event loop are timecoin.sim.world.Clock's) --------------------------
    def start(self) -> None:
        """Every online node starts the height above its tip (at simulated time ``now``)."""
        for node in self.nodes:
            if node.online:
                self.start_node(node)
        if self.gossip_interval or self.sync_after is not None:
            self.at(self._tick, self._gossip)

    def start_node(self, node: SimNode) -> None:
        """Start one node's engine at the height above its tip (for tests that drive a node by hand)."""
        self._start_height(node, node.height + 1, self._prev_block_time(node))

    def run(self, until: Callable[[], bool], max_time: float = 60.0,  # type: ignore[override]
            max_events: int = 300_000) -> bool:
        """Process events until ``until()`` holds (True), or the queue, ``max_time`` simulated seconds from
        now or the event budget ends (False)."""
        return super().run(until, self.now + max_time, max_events)

    def run_for(self, seconds: float, max_events: int = 300_000) -> None:
        """Process every event of the next ``seconds`` simulated seconds (bounded by ``max_events``)."""
        end = self.now + seconds
        budget = self.events + max_events
        while self._queue and self._queue[0][0] <= end and self.events < budget:
            t, _, fn = heapq.heappop(self._queue)
            self.now = t
            self.events += 1
            fn()
        self.now = max(self.now, end)

    def run_until_height(self, height: int, nodes: list[SimNode] | None = None, **kw: Any) -> bool:
        nodes = nodes if nodes is not None else self.nodes
        return self.run(lambda: min(n.height for n in nodes) >= height, **kw)

    # -- actions (what ConsensusService does) ------------------------------------------------------
    def _prev_block_time(self, node: SimNode) -> float:
        return node.app.prev_block_time_ms() / 1000

    def _start_height(self, node: SimNode, height: int, prev_time: float) -> None:
        node.height_started = self.now
        self.perform(node, node.engine.start_height(height, self.now, prev_time))

    def perform(self, node: SimNode, actions: list[eng.Action]) -> None:
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            if isinstance(action, eng.BroadcastProposal | eng.BroadcastVote):
                msg = action.proposal if isinstance(action, eng.BroadcastProposal) else action.vote
                if node.wal is not None:
                    kind = WalKind.PROPOSAL if isinstance(msg, Proposal) else WalKind.VOTE
                    node.wal.append(kind, msg.encoded, sync=False)
                node.signed.append(msg)
                self._keep(node, msg)
                self.broadcast(node, msg)
                for hook in self.hooks:
                    for extra in hook(node, msg):
                        self.broadcast(node, extra)
            elif isinstance(action, eng.ScheduleTimeout):
                node.scheduled.append((self.now, action))
                self._schedule_timeout(node, action)
            elif isinstance(action, eng.EvidenceFound):
                node.evidence.append(action.evidence)
                node.app.add_evidence(action.evidence)
            elif isinstance(action, eng.CommitBlock):
                queue.extend(self._commit(node, action))
            elif isinstance(action, eng.FetchBlock):
                self._fetch(node, action)

    def _fetch(self, node: SimNode, a: eng.FetchBlock) -> None:
        """Ask the voters for the block (what the P2P layer does): the first voter that holds it at this
        height (in its engine, or already committed) answers after a network delay."""
        self.stats["fetches"] += 1
        for voter in (self.node_of(v) for v in a.voters):
            if voter is node or not voter.online or voter.mute:
                continue
            block = (voter.engine.block_by_hash(a.block_hash) if voter.engine.height == a.height
                     else voter.commits.get(a.height))
            if block is not None and block.hash == a.block_hash:
                self.at(self.rng.uniform(*self.latency), lambda b=block: self._deliver_block(node, b))
                return

    def _deliver_block(self, node: SimNode, block: Block) -> None:
        if not node.online or node.engine.height != block.height:
            return
        try:
            actions = node.engine.on_block(block, self.now)
        except ValidationError as exc:
            node.rejects[exc.reason] += 1
            return
        self.stats["fetched"] += 1
        self.perform(node, actions)

    def _schedule_timeout(self, node: SimNode, a: eng.ScheduleTimeout) -> None:
        key = (a.height, a.round, int(a.kind))
        token = node.timers[key] = node.timers.get(key, 0) + 1     # a newer timer replaces an older one
        epoch = node.epoch

        def fire() -> None:
            if not node.online or node.epoch != epoch or node.timers.get(key) != token:
                return
            del node.timers[key]
            self.timeout(node, a.height, a.round, a.kind)
        self.at(a.delay, fire)

    def timeout(self, node: SimNode, height: int, round_: int, kind: eng.TimeoutKind) -> list[eng.Action]:
        """A timeout fires at ``node``: logged to its WAL, fed to its engine, actions carried out."""
        if node.wal is not None:
            node.wal.append(WalKind.TIMEOUT, height.to_bytes(8, "big") + round_.to_bytes(4, "big") + bytes((kind,)))
        actions = node.engine.on_timeout(height, round_, kind, self.now)
        self.perform(node, actions)
        return actions

    def _commit(self, node: SimNode, a: eng.CommitBlock) -> list[eng.Action]:
        self._store_decided(node, a.block, a.certificate)
        node.height_started = self.now
        return node.engine.start_height(a.block.height + 1, self.now, a.block.header.timestamp / 1000)

    def _store_decided(self, node: SimNode, block: Block, cert: CommitCertificate) -> None:
        node.app.commit(block, cert)
        if node.wal is not None:
            node.wal.end_height(block.height)
        node.commits[block.height] = block
        node.certificates[block.height] = cert
        node.commit_rounds[block.height] = cert.round
        node.commit_times[block.height] = self.now
        for key in [k for k in node.timers if k[0] <= block.height]:
            del node.timers[key]

    def _sync(self, dst: SimNode, src: SimNode) -> None:
        """Block sync: take the block of ``dst``'s height with its certificate from ``src``, check the
        certificate against ``dst``'s own validator set, commit, and start the next height."""
        h = dst.engine.height
        block, cert = src.store.get_block(h), src.store.get_certificate(h)
        assert block is not None and cert is not None
        verify_certificate(block, cert, dst.store.validator_set(h), self.chain_id)
        self._store_decided(dst, block, cert)
        dst.synced.append(h)
        self.stats["synced"] += 1
        self._start_height(dst, h + 1, block.header.timestamp / 1000)

    # -- the network -------------------------------------------------------------------------------
    def broadcast(self, src: SimNode, msg: Message) -> None:
        for dst in self.nodes:
            if dst is not src:
                self.send(src, dst, msg)

    def send(self, src: SimNode, dst: SimNode, msg: Sendable) -> None:
        """One copy from ``src`` to ``dst``: filtered, maybe dropped, maybe duplicated, randomly delayed."""
        self.stats["sent"] += 1
        if src.mute or not src.online or not all(f(src.index, dst.index, msg) for f in self.filters):
            self.stats["filtered"] += 1
            return
        if self.drop and self.rng.random() < self.drop:
            self.stats["dropped"] += 1
            return
        copies = 2 if self.duplicate and self.rng.random() < self.duplicate else 1
        self.stats["duplicated"] += copies - 1
        for _ in range(copies):
            self.at(self.rng.uniform(*self.latency), lambda: self.deliver(dst, msg))

    def deliver(self, dst: SimNode, msg: Sendable) -> list[eng.Action] | None:
        """Hand ``msg`` to ``dst``'s engine now; a refusal is counted by reason (and returns None)."""
        if not dst.online:
            return None
        if isinstance(msg, QuorumProof):
            return self._deliver_proof(dst, msg)
        if dst.wal is not None:
            dst.wal.append(WalKind.PROPOSAL if isinstance(msg, Proposal) else WalKind.VOTE, msg.encoded)
        try:
            if isinstance(msg, Proposal):
                actions = dst.engine.on_proposal(msg, self.now)
            else:
                actions = dst.engine.on_vote(msg, self.now)
        except ValidationError as exc:
            dst.rejects[exc.reason] += 1
            self.stats["rejected"] += 1
            if exc.reason not in (Reason.WRONG_HEIGHT, Reason.WRONG_ROUND):
                dst.has.add(msg.signature)           # seen and judged: gossip need not offer it again
            return None
        self.stats["delivered"] += 1
        self._keep(dst, msg)
        self.perform(dst, actions)
        return actions

    def _deliver_proof(self, dst: SimNode, proof: QuorumProof) -> list[eng.Action] | None:
        if dst.wal is not None:
            dst.wal.append(WalKind.QUORUM, proof.encoded)
        try:
            actions = dst.engine.on_quorum(proof, self.now)
        except ValidationError as exc:
            dst.rejects[exc.reason] += 1
            return None
        self.stats["proofs"] += 1
        self.perform(dst, actions)
        return actions

    def _keep(self, node: SimNode, msg: Message) -> None:
        if msg.signature not in node.has:
            node.has.add(msg.signature)
            node.archive.setdefault(msg.height, []).append(msg)

    @property
    def _tick(self) -> float:
        return self.gossip_interval or (self.sync_after or 0.1) / 2

    def _gossip(self) -> None:
        """Every node offers each peer the messages of the peer's height that the peer does not have yet
        (its own and relayed ones: correct nodes relay what they accepted, as the paper's gossip assumes)."""
        for src in self.nodes:
            if not src.online:
                continue
            for dst in self.nodes:
                if dst is src or not dst.online:
                    continue
                if (self.sync_after is not None and src.height >= dst.engine.height
                        and self.now - dst.height_started >= self.sync_after):
                    self._sync(dst, src)
                if not self.gossip_interval:
                    continue
                for msg in src.archive.get(dst.engine.height, ()):
                    if msg.signature not in dst.has:
                        self.send(src, dst, msg)
                if src.engine.height == dst.engine.height:
                    for proof in src.engine.quorums():
                        key = (src.index, dst.index, proof.encoded)
                        if key not in self._proofs_sent:
                            self._proofs_sent.add(key)
                            self.send(src, dst, proof)
        self.at(self._tick, self._gossip)

    # -- faults ------------------------------------------------------------------------------------
    def crash(self, node: SimNode) -> None:
        """Stop the node: its engine state and timers are gone; its store (and WAL file) remain."""
        node.online = False
        node.epoch += 1
        node.timers.clear()
        if node.wal is not None:
            node.wal.close()

    def restart(self, node: SimNode, replay: bool = True) -> SimNode:
        """A fresh engine, app and guard on the crashed node's store; replays its WAL like the service."""
        fresh = self._make_node(node.index, node.key, node.store)
        fresh.commits, fresh.certificates = node.commits, node.certificates
        fresh.commit_rounds, fresh.commit_times = node.commit_rounds, node.commit_times
        fresh.signed, fresh.archive, fresh.epoch = node.signed, node.archive, node.epoch + 1
        fresh.has = {m.signature for msgs in node.archive.values() for m in msgs if m.height <= fresh.height}
        self.nodes[node.index] = fresh
        self.start_node(fresh)
        if replay and fresh.wal is not None:
            self.replay(fresh, fresh.height + 1)
        return fresh

    def replay(self, node: SimNode, height: int) -> int:
        """Feed the WAL's records of ``height`` back to the engine (not re-logged); returns how many."""
        assert node.wal is not None
        wal, node.wal = node.wal, None            # like ConsensusService._replaying: do not re-append inputs
        count = 0
        try:
            for rec in wal.pending():
                if rec.kind == WalKind.TIMEOUT:
                    h, r, k = (int.from_bytes(rec.data[0:8], "big"), int.from_bytes(rec.data[8:12], "big"),
                               rec.data[12])
                    if h == height:
                        count += 1
                        self.perform(node, node.engine.on_timeout(h, r, eng.TimeoutKind(k), self.now))
                    continue
                if rec.kind == WalKind.QUORUM:
                    proof = QuorumProof.decode(rec.data)
                    if proof.height == height:
                        count += 1
                        try:
                            self.perform(node, node.engine.on_quorum(proof, self.now))
                        except ValidationError as exc:
                            node.rejects[exc.reason] += 1
                    continue
                msg: Message = Proposal.decode(rec.data) if rec.kind == WalKind.PROPOSAL else Vote.decode(rec.data)
                if msg.height != height:
                    continue
                count += 1
                try:
                    actions = (node.engine.on_proposal(msg, self.now, timely=True) if isinstance(msg, Proposal)
                               else node.engine.on_vote(msg, self.now))
                except ValidationError as exc:
                    node.rejects[exc.reason] += 1
                    continue
                self.perform(node, actions)
        finally:
            node.wal = wal
        return count

    # -- checks ------------------------------------------------------------------------------------
    def committed_hashes(self) -> dict[int, set[bytes]]:
        """Every hash any node committed, per height (agreement: one per height)."""
        out: dict[int, set[bytes]] = {}
        for node in self.nodes:
            for h, block in node.commits.items():
                out.setdefault(h, set()).add(block.hash)
            for h in range(1, node.store.tip_height() + 1):
                out.setdefault(h, set()).add(node.store.block_hash_at(h) or b"")
        return out

    def assert_agreement(self) -> int:
        """Raise unless no height has two committed hashes; return the highest height any node reached."""
        hashes = self.committed_hashes()
        split = {h: s for h, s in hashes.items() if len(s) != 1}
        assert not split, f"disagreement at heights {sorted(split)}"
        return max(hashes, default=0)


def conflicting_vote(key: crypto.PrivateKey, vote: Vote, chain_id: str, block_hash: bytes | None = None) -> Vote:
    """A second vote for ``vote``'s (height, round, type) with another hash, signed directly with ``key``
    (bypassing the double-sign guard): what an equivocating validator sends."""
    other = block_hash if block_hash is not None else hashlib.sha256(b"equivocation" + vote.block_hash).digest()
    return Vote(vote.type, vote.height, vote.round, other, key.address).signed(key, chain_id)


def is_prevote(msg: Message) -> bool:
    return isinstance(msg, Vote) and msg.type == VoteType.PREVOTE
