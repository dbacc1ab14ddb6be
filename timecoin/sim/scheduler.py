"""The world: N nodes on one clock and one network, driven the way ``ConsensusService`` drives an engine.

The world carries out engine actions (broadcast, timeouts, commits, evidence), delivers messages, and
after GST runs the two healing mechanisms every real node has:

* gossip: every ``gossip_interval`` each honest node offers each peer the messages of the peer's
  current height it holds and the peer does not (its own and those it accepted: correct nodes relay,
  as the paper assumes and CometBFT's gossip routines do);
* quorum proofs: every ``QUORUM_EVERY`` ticks each honest node sends each peer at its height the > 2/3
  quorums its engine holds (``Engine.quorums()``: how a vote a peer refused once, e.g. over a
  per-validator cap, still reaches it), each proof once per peer;
* block fetch: an engine holding > 2/3 precommits for a block it lacks asks for it (``FetchBlock``); the
  world serves it from a voter that holds it (``Engine.block_by_hash`` or its store) after a network
  delay, retrying each tick while the node is still at that height;
* block sync: a node that has been at a height for ``sync_after`` (counted from GST at the earliest)
  while a peer already committed it takes the block and its commit certificate from the peer,
  verified with ``verify_certificate`` against its own validator set.

Adversaries plug in through four seams: ``byzantine_out`` (what a Byzantine engine's output becomes),
``holds`` (a copy the adversary keeps from a node for now), ``observe`` (called after every event at an
honest node: the adversary may react) and ``intercept`` (a relay that may deliver a forged copy first).
Everything else is the real code.
"""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from timecoin.consensus import engine as eng
from timecoin.errors import Reason, ValidationError
from timecoin.ledger.block import Block, CommitCertificate, Proposal, QuorumProof, Vote, verify_certificate
from timecoin.ledger.genesis import Genesis
from timecoin.sim.network import NetConfig, Network
from timecoin.sim.world import START_TIME, Clock, Node, make_node, message_id

MAX_HELD = 5_000              # copies an adversary may hold back at once (older ones are dropped)
QUORUM_EVERY = 5              # ticks between quorum-proof rounds of gossip


@dataclass(frozen=True)
class BlockReply:
    """A block served for a ``FetchBlock``, in flight to the node that asked."""

    block: Block

    @property
    def height(self) -> int:
        return self.block.height

    @cached_property
    def encoded(self) -> bytes:
        return b"fetched" + self.block.encoded


class Adversary(Protocol):
    """The seams of :class:`World` an adversary may use (every method optional in effect: no-ops)."""

    def byzantine_out(self, node: Node, msg: object) -> list[tuple[int, object]] | None: ...

    def holds(self, dst: Node, msg: object) -> bool: ...

    def observe(self, node: Node) -> None: ...

    def intercept(self, src: Node, dst: Node, msg: object, delay: float) -> None: ...

    def signed(self, node: Node, msg: object) -> None: ...


class World:
    def __init__(self, genesis: Genesis, byzantine: set[int], skews: list[float], timeouts: eng.Timeouts,
                 net: NetConfig, rng: random.Random, gossip_interval: float = 0.01, sync_after: float = 0.5,
                 inert_byzantine: bool = False) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.rng = rng
        self.clock = Clock(START_TIME)
        n = len(skews)
        self.nodes = [make_node(i, genesis, i in byzantine, skews[i], timeouts) for i in range(n)]
        self.by_address = {node.address: node for node in self.nodes}
        self.honest = [node for node in self.nodes if not node.byzantine]
        self.network = Network(net, rng, self.clock.at, lambda: self.clock.now)
        self.gst = net.gst
        self.gossip_interval = gossip_interval
        self.sync_after = sync_after
        self.inert_byzantine = inert_byzantine       # the adversary speaks for Byzantine nodes; no engines run
        self.adversaries: list[Adversary] = []
        self.stats: Counter[str] = Counter()
        self.held: list[tuple[Node, object]] = []
        self._cursor: dict[tuple[int, int, int], int] = {}
        self._quorums_sent: set[tuple[int, int, bytes]] = set()
        self._ticks = 0
        self.fetches: list[tuple[Node, eng.FetchBlock]] = []
        self._handlers: dict[type, Callable[[Node, object, float], list[eng.Action]]] = {
            Proposal: lambda node, m, t: node.engine.on_proposal(m, t),  # type: ignore[arg-type]
            Vote: lambda node, m, t: node.engine.on_vote(m, t),  # type: ignore[arg-type]
            QuorumProof: lambda node, m, t: node.engine.on_quorum(m, t),  # type: ignore[arg-type]
            BlockReply: lambda node, m, t: node.engine.on_block(m.block, t),  # type: ignore[attr-defined]
        }

    # -- time ------------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.clock.now

    def local(self, node: Node) -> float:
        """``node``'s clock (skewed)."""
        return self.clock.now + node.skew

    def after_gst(self) -> bool:
        return self.clock.now >= self.gst

    def running(self, node: Node) -> bool:
        return not (node.byzantine and self.inert_byzantine)

    def start(self) -> None:
        for node in self.nodes:
            if self.running(node):
                self._start_height(node, 1, self.genesis.genesis_time / 1000)
        self.clock.at(self.gossip_interval, self._tick)

    def run(self, until: Callable[[], bool], deadline: float, max_events: int) -> bool:
        return self.clock.run(until, deadline, max_events)

    # -- actions ---------------------------------------------------------------------------------
    def _start_height(self, node: Node, height: int, prev_time: float) -> None:
        node.height_started = self.now
        self.perform(node, node.engine.start_height(height, self.local(node), prev_time))

    def perform(self, node: Node, actions: list[eng.Action]) -> None:
        queue = list(actions)
        for _ in range(10_000):                   # bounded: an engine emits a handful of actions per input
            if not queue:
                break
            action = queue.pop(0)
            if isinstance(action, eng.BroadcastProposal | eng.BroadcastVote):
                msg = action.proposal if isinstance(action, eng.BroadcastProposal) else action.vote
                node.keep(msg, msg.height)
                self._emit(node, msg)
            elif isinstance(action, eng.ScheduleTimeout):
                self._schedule_timeout(node, action)
            elif isinstance(action, eng.EvidenceFound):
                self.stats["evidence"] += 1
                node.app.add_evidence(action.evidence)
            elif isinstance(action, eng.CommitBlock):
                queue.extend(self._commit(node, action.block, action.certificate))
            else:
                self._other_action(node, action)
        if not node.byzantine:
            for adv in self.adversaries:
                adv.observe(node)

    def _other_action(self, node: Node, action: object) -> None:
        """Fetch a block by hash; an action this world does not know is counted (and visible in stats)."""
        if isinstance(action, eng.FetchBlock):
            self.stats["fetch"] += 1
            self.fetches.append((node, action))
            self._serve(node, action)
            return
        self.stats[f"action_{type(action).__name__}"] += 1

    def _serve(self, node: Node, fb: eng.FetchBlock) -> None:
        """Send ``node`` the block of ``fb`` from the first voter that holds it (engine or store)."""
        for address in fb.voters:
            src = self.by_address.get(address)
            if src is None or src is node or not self.running(src):
                continue
            block = src.engine.block_by_hash(fb.block_hash) if src.engine.height == fb.height else None
            if block is None and src.store.block_hash_at(fb.height) == fb.block_hash:
                block = src.store.get_block(fb.height)
            if block is not None:
                self.send(src, node, BlockReply(block))
                return

    def _emit(self, node: Node, msg: Proposal | Vote) -> None:
        """What ``node``'s engine broadcast leaves the node as: all of it (honest), or the adversary's version."""
        if not node.byzantine:
            node.signed.append(msg)
            for adv in self.adversaries:
                adv.signed(node, msg)
            self.broadcast(node, msg)
            return
        for adv in self.adversaries:
            copies = adv.byzantine_out(node, msg)
            if copies is not None:
                for dst, m in copies:
                    self.send(node, self.nodes[dst], m)
                return
        self.broadcast(node, msg)

    def _schedule_timeout(self, node: Node, a: eng.ScheduleTimeout) -> None:
        key = (a.height, a.round, int(a.kind))
        token = node.timers[key] = node.timers.get(key, 0) + 1      # a newer timer replaces an older one

        def fire() -> None:
            if node.timers.get(key) != token:
                return
            del node.timers[key]
            self.perform(node, node.engine.on_timeout(a.height, a.round, a.kind, self.local(node)))
        self.clock.at(a.delay, fire)

    def _commit(self, node: Node, block: Block, cert: CommitCertificate) -> list[eng.Action]:
        self._store_decided(node, block, cert)
        node.height_started = self.now
        return node.engine.start_height(block.height + 1, self.local(node), block.header.timestamp / 1000)

    def _store_decided(self, node: Node, block: Block, cert: CommitCertificate) -> None:
        node.app.commit(block, cert)
        node.commit_rounds[block.height] = cert.round
        node.commit_times[block.height] = self.now
        for key in [k for k in node.timers if k[0] <= block.height]:
            del node.timers[key]

    # -- the network -----------------------------------------------------------------------------
    def broadcast(self, src: Node, msg: object) -> None:
        for dst in self.nodes:
            if dst is not src:
                self.send(src, dst, msg)

    def send(self, src: Node, dst: Node, msg: object, lossless: bool = False) -> None:
        if not self.running(dst):
            return
        delay = self.network.send(src.index, dst.index, lambda: self.deliver(dst, msg), lossless)
        if delay is not None:
            for adv in self.adversaries:
                adv.intercept(src, dst, msg, delay)

    def deliver_later(self, dst: Node, msg: object, delay: float) -> None:
        """An adversary's copy, on its own schedule (it owns its links)."""
        if self.running(dst):
            self.clock.at(delay, lambda: self.deliver(dst, msg))

    def deliver(self, dst: Node, msg: object) -> None:
        """Hand ``msg`` to ``dst``'s engine now, unless an adversary holds it back for a while."""
        if not dst.byzantine and any(adv.holds(dst, msg) for adv in self.adversaries):
            self.stats["held"] += 1
            self.held.append((dst, msg))
            if len(self.held) > MAX_HELD:
                del self.held[0]
            return
        handler = self._handlers.get(type(msg))
        if handler is None:
            self.stats["undeliverable"] += 1
            return
        try:
            actions = handler(dst, msg, self.local(dst))
        except ValidationError as exc:
            dst.rejects[exc.reason] += 1
            self.stats["rejected"] += 1
            if exc.reason not in (Reason.WRONG_HEIGHT, Reason.WRONG_ROUND, Reason.BAD_BLOCK):
                dst.has.add(message_id(msg))         # judged: gossip need not offer it again
            if not dst.byzantine:
                for adv in self.adversaries:
                    adv.observe(dst)
            return
        self.stats["delivered"] += 1
        if isinstance(msg, Proposal | Vote):
            dst.keep(msg, msg.height)                 # what gossip relays; proofs and blocks travel their own way
        else:
            dst.has.add(message_id(msg))
        self.perform(dst, actions)

    # -- healing: release, gossip, sync ----------------------------------------------------------
    def _tick(self) -> None:
        if self.held:
            held, self.held = self.held, []
            for dst, msg in held:
                self.deliver(dst, msg)
        self._ticks += 1
        if self.fetches:
            self.fetches = [(n, fb) for n, fb in self.fetches
                            if n.engine.height == fb.height and n.engine.step != eng.Step.COMMITTED]
            for n, fb in self.fetches:
                self._serve(n, fb)
        if self.after_gst():
            self._gossip()
            if self._ticks % QUORUM_EVERY == 0:
                self._gossip_quorums()
            self._sync()
        self.clock.at(self.gossip_interval, self._tick)

    def _gossip(self) -> None:
        """Each honest node offers each peer, once, every message of the peer's height it holds."""
        for src in self.honest:
            for dst in self.nodes:
                if dst is src or not self.running(dst):
                    continue
                h = dst.engine.height
                msgs = src.archive.get(h, ())
                key = (src.index, dst.index, h)
                start = self._cursor.get(key, 0)
                for msg in msgs[start:]:
                    if message_id(msg) not in dst.has:
                        self.stats["gossiped"] += 1
                        self.send(src, dst, msg)
                self._cursor[key] = len(msgs)

    def _gossip_quorums(self) -> None:
        """Each honest node sends each peer at its height the > 2/3 quorums it holds, each proof once."""
        for src in self.honest:
            if src.engine.step == eng.Step.COMMITTED:
                continue
            proofs = src.engine.quorums()
            for dst in self.nodes:
                if dst is src or not self.running(dst) or dst.engine.height != src.engine.height:
                    continue
                for q in proofs:
                    key = (src.index, dst.index, message_id(q))
                    if key in self._quorums_sent or message_id(q) in dst.has:
                        continue
                    self._quorums_sent.add(key)
                    self.stats["quorum_proofs"] += 1
                    self.send(src, dst, q)

    def _sync(self) -> None:
        since = max(self.gst, 0.0)
        for dst in self.nodes:
            if not self.running(dst):
                continue
            h = dst.engine.height
            if self.now - max(dst.height_started, since) < self.sync_after:
                continue
            for src in self.honest + [n for n in self.nodes if n.byzantine]:
                if src is dst or src.store.tip_height() < h:
                    continue
                block, cert = src.store.get_block(h), src.store.get_certificate(h)
                if block is None or cert is None or block.header.prev_hash != dst.store.tip_hash():
                    continue
                try:
                    verify_certificate(block, cert, dst.app.validator_set(h), self.chain_id)
                    block.check_roots()                   # sync validates fully (sync/apply.py) ...
                    self._store_decided(dst, block, cert)  # ... and the app executes a block it never ran
                except ValidationError:
                    self.stats["sync_refused"] += 1
                    continue
                dst.synced.append(h)
                self.stats["synced"] += 1
                self._start_height(dst, h + 1, block.header.timestamp / 1000)
                break
