"""StateSyncManager: catch up with the network, fast and without trusting any one peer (SPEC §6).

One sync run:

1. **Peer state.** Every usable peer is asked for its status (height, tip and finalized hash, genesis
   hash); the round trip is its latency. Peers of another genesis are left out.
2. **Best peers.** Candidates for a range are the peers whose height covers it, best first: highest
   height, then lowest latency; never a banned or negative-reputation peer.
3. **Hashes from 3, bodies from 1.** For each range the block hashes are asked of up to ``redundancy``
   peers; a hash is accepted only when at least 2/3 of the peers that answered for that height agree.
   The bodies come from one agreeing peer and must match the voted hashes; then every block's commit
   certificate is verified against its height's validator set when the batch is applied.
4. **Pipelining.** Up to ``max_ranges_in_flight`` ranges are fetched at once; they are applied strictly
   in order, one LMDB write transaction per range (``apply``). A range that times out, disagrees or
   fails verification is retried with other peers; the peers at fault lose reputation.

A peer that lies about its height cannot serve the blocks it claims (it has no valid certificates for
them): it is charged and its claim discarded, and the run still reaches the honest tip.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from timecoin.errors import Reason
from timecoin.ledger.block import Block, CommitCertificate
from timecoin.p2p.peers import Event, event_for_reason
from timecoin.sync.peer import BadResponse, PeerStatus, SyncPeer

Items = list[tuple[Block, CommitCertificate]]
# apply(items) -> (how many were committed, the reason the first bad one was refused or None)
ApplyFn = Callable[[Items], "tuple[int, Reason | None] | Awaitable[tuple[int, Reason | None]]"]

DEFAULT_BATCH = 20                 # SPEC §6: at most ~20 blocks pending per peer
DEFAULT_REDUNDANCY = 3
DEFAULT_RANGES_IN_FLIGHT = 4
DEFAULT_REQUEST_TIMEOUT = 15.0
MAX_WINDOW_ATTEMPTS = 6            # failed windows (no agreement, bad bodies) before a run gives up
# Heights were checked against the voted range and hashes before applying, so these come from us, not the peer.
LOCAL_REASONS = frozenset({Reason.WRONG_HEIGHT, Reason.SHUTTING_DOWN})
MAX_RUN_BLOCKS = 10_000_000       # one run's bound; the coordinator's next cycle goes on from there
HASH_WINDOW = 1000                 # hashes voted per request (one request per voter per window)
PROGRESS_EVERY = 2.0               # seconds between progress log lines


@dataclass
class SyncProgress:
    start_height: int = 0
    height: int = 0
    target: int = 0
    started: float = 0.0
    blocks: int = 0
    blocks_per_s: float = 0.0
    eta_s: float | None = None
    running: bool = False
    peers: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"syncing": self.running, "height": self.height, "target": self.target,
                "start_height": self.start_height, "blocks": self.blocks,
                "blocks_per_s": round(self.blocks_per_s, 2),
                "eta_s": None if self.eta_s is None else round(self.eta_s, 1), "peers": self.peers}


@dataclass
class SyncResult:
    start_height: int
    end_height: int
    target: int
    seconds: float
    failed_ranges: int = 0
    penalized: dict[str, list[str]] = field(default_factory=dict)

    @property
    def blocks(self) -> int:
        return self.end_height - self.start_height


class StateSyncManager:
    log = Logger()

    def __init__(self, tip_height: Callable[[], int], genesis_hash: bytes, clock: IReactorTime, apply: ApplyFn, *,
                 batch: int = DEFAULT_BATCH, redundancy: int = DEFAULT_REDUNDANCY,
                 max_ranges_in_flight: int = DEFAULT_RANGES_IN_FLIGHT,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        self.tip_height = tip_height
        self.genesis_hash = genesis_hash
        self.clock = clock
        self.apply = apply
        self.batch = batch
        self.redundancy = redundancy
        self.max_ranges_in_flight = max_ranges_in_flight
        self.request_timeout = request_timeout
        self.progress = SyncProgress()
        self.statuses: dict[str, PeerStatus] = {}
        self._penalized: dict[str, list[str]] = {}
        self._last_log = 0.0
        self._more_peers: Callable[[], list[SyncPeer]] | None = None

    # -- peer state ------------------------------------------------------------------------------
    async def query_peers(self, peers: list[SyncPeer]) -> dict[str, PeerStatus]:
        """Ask every usable peer for its status at once; those that fail or time out are left out."""
        usable = [p for p in peers if p.usable()]
        results = await defer.DeferredList([self._timed(p, p.get_status()) for p in usable], consumeErrors=True)
        statuses: dict[str, PeerStatus] = {}
        for peer, (ok, value) in zip(usable, results, strict=True):
            if ok:
                statuses[peer.peer_id] = value
        self.statuses = statuses
        return statuses

    def same_genesis(self, peers: list[SyncPeer], statuses: dict[str, PeerStatus]) -> list[SyncPeer]:
        return [p for p in peers if p.peer_id in statuses and statuses[p.peer_id].genesis_hash == self.genesis_hash]

    def ranked(self, peers: list[SyncPeer], statuses: dict[str, PeerStatus], min_height: int = 0) -> list[SyncPeer]:
        """Usable peers covering ``min_height``: highest height first, then lowest latency."""
        def key(p: SyncPeer) -> tuple[int, float]:
            st = statuses[p.peer_id]
            return (-st.height, st.latency if p.latency is None else p.latency)
        return sorted((p for p in peers if p.peer_id in statuses and statuses[p.peer_id].height >= min_height
                       and p.usable()), key=key)

    def best_peer(self, peers: list[SyncPeer], statuses: dict[str, PeerStatus]) -> SyncPeer | None:
        ranked = self.ranked(self.same_genesis(peers, statuses), statuses)
        return ranked[0] if ranked else None

    # -- the run ---------------------------------------------------------------------------------
    async def sync(self, peers: list[SyncPeer], statuses: dict[str, PeerStatus] | None = None,
                   more_peers: Callable[[], list[SyncPeer]] | None = None) -> SyncResult:
        """Sync from ``peers`` up to the highest height they can prove; returns what was done.

        ``more_peers`` (if given) is asked before each window of hashes for the peers connected now:
        newcomers are queried and join the run (a node's first sync starts when its first peer says
        hello; the others arrive a moment later and share the load).
        """
        self._more_peers = more_peers
        if statuses is None:
            statuses = await self.query_peers(peers)
        peers = self.same_genesis(peers, statuses)
        start = self.tip_height()
        target = max((statuses[p.peer_id].height for p in peers), default=start)
        t0 = self.clock.seconds()
        self._penalized = {}
        self.progress = SyncProgress(start, start, target, t0, 0, 0.0, None, True, len(peers))
        failed = 0
        try:
            if target > start:
                self.log.info("Sync from height {h} to {t} with {n} peers", h=start, t=target, n=len(peers))
                failed = await self._pipeline(peers, statuses)
        finally:
            self.progress.running = False
        end = self.tip_height()
        seconds = max(self.clock.seconds() - t0, 1e-9)
        if end > start:
            self.log.info("Synced {n} blocks to height {h} in {s:.1f} s ({r:.1f} blocks/s)", n=end - start, h=end,
                          s=seconds, r=(end - start) / seconds)
        return SyncResult(start, end, target, seconds, failed, self._penalized)

    async def _pipeline(self, peers: list[SyncPeer], statuses: dict[str, PeerStatus]) -> int:
        """Vote a window of hashes, then fetch and apply its bodies in ranges; repeat until the target."""
        failed = 0
        excluded: set[str] = set()
        for _ in range(MAX_WINDOW_ATTEMPTS + MAX_RUN_BLOCKS // HASH_WINDOW):     # bounded: windows and failures
            await self._add_newcomers(peers, statuses)
            tip = self.tip_height()
            target = self._target(peers, statuses, excluded)
            self.progress.target = max(target, tip)
            if tip >= target or failed >= MAX_WINDOW_ATTEMPTS:
                break
            voted = await self._vote_hashes(peers, statuses, tip + 1, min(HASH_WINDOW, target - tip), excluded)
            if voted is None:
                failed += 1
                continue
            hashes, backers = voted
            if not await self._fetch_and_apply(tip + 1, hashes, backers, excluded):
                failed += 1
        return failed

    async def _add_newcomers(self, peers: list[SyncPeer], statuses: dict[str, PeerStatus]) -> None:
        if self._more_peers is None:
            return
        known = {p.peer_id for p in peers}
        new = [p for p in self._more_peers() if p.peer_id not in known]
        if not new:
            return
        for peer_id, status in (await self.query_peers(new)).items():
            if status.genesis_hash == self.genesis_hash:
                statuses[peer_id] = status
                peers.append(next(p for p in new if p.peer_id == peer_id))
        self.statuses = statuses
        self.progress.peers = len(peers)

    def _target(self, peers: list[SyncPeer], statuses: dict[str, PeerStatus], excluded: set[str]) -> int:
        heights = [statuses[p.peer_id].height for p in peers
                   if p.peer_id in statuses and p.peer_id not in excluded and p.usable()]
        return max(heights, default=self.tip_height())

    # -- hashes from 3 ---------------------------------------------------------------------------
    async def _vote_hashes(self, peers: list[SyncPeer], statuses: dict[str, PeerStatus], start: int, count: int,
                           excluded: set[str]) -> tuple[list[bytes], list[SyncPeer]] | None:
        """Hashes from ``start`` that >= 2/3 of the answering peers agree on, and the peers that sent them all."""
        voters = [p for p in self.ranked(peers, statuses, start) if p.peer_id not in excluded][:self.redundancy]
        if not voters:
            return None
        results = await defer.DeferredList([self._timed(p, p.get_block_hashes(start, count)) for p in voters],
                                           consumeErrors=True)
        answers: dict[str, list[bytes]] = {}
        for peer, (ok, value) in zip(voters, results, strict=True):
            if not ok:
                continue
            answers[peer.peer_id] = list(value)
            if not value:
                self._charge(peer, Event.STALE_DATA, f"claimed height {statuses[peer.peer_id].height} "
                                                     f"but has no block {start}")
                statuses[peer.peer_id] = _lowered(statuses[peer.peer_id], start - 1)
        accepted: list[bytes] = []
        for i in range(count):
            votes: dict[bytes, list[str]] = {}
            for pid, hs in answers.items():
                if i < len(hs):
                    votes.setdefault(hs[i], []).append(pid)
            answered = sum(len(v) for v in votes.values())
            if answered == 0:
                break
            best, who = max(votes.items(), key=lambda kv: len(kv[1]))
            if 3 * len(who) < 2 * answered:
                self.log.info("Sync: no 2/3 agreement on block {h} among {n} peers", h=start + i, n=answered)
                break
            for other, pids in votes.items():
                if other == best:
                    continue
                for pid in pids:
                    self._charge(self._peer(voters, pid), Event.STALE_DATA,
                                 f"hash of block {start + i} differs from the majority")
                    statuses[pid] = _lowered(statuses[pid], start + i - 1)
                    answers[pid] = answers[pid][:i]
            accepted.append(best)
        backers = [p for p in voters if answers.get(p.peer_id, [])[:len(accepted)] == accepted and accepted]
        if not backers:
            return None
        return accepted, backers

    # -- bodies from 1, pipelined ------------------------------------------------------------------
    async def _fetch_and_apply(self, start: int, hashes: list[bytes], backers: list[SyncPeer],
                               excluded: set[str]) -> bool:
        ranges = [(start + i, hashes[i:i + self.batch]) for i in range(0, len(hashes), self.batch)]
        servers = list(backers)
        pending: dict[int, defer.Deferred[Items | None]] = {}
        next_range = 0
        turn = 0

        def launch(index: int, server: SyncPeer) -> None:
            s, hs = ranges[index]
            pending[index] = defer.Deferred.fromCoroutine(self._fetch_bodies(server, s, hs))

        try:
            for index in range(len(ranges)):
                while next_range < len(ranges) and len(pending) < self.max_ranges_in_flight and servers:
                    launch(next_range, servers[turn % len(servers)])
                    turn += 1
                    next_range += 1
                items = await pending.pop(index)
                for _ in range(len(backers)):             # bounded: each backer at most once more
                    if items is not None or not servers:
                        break
                    retry = servers[turn % len(servers)]
                    turn += 1
                    items = await self._fetch_bodies(retry, *ranges[index])
                if items is None:
                    return False
                applied, reason = await defer.maybeDeferred(self.apply, items)
                self._report(applied)
                if reason in LOCAL_REASONS:              # our side moved (consensus committed): re-plan
                    return False
                if reason is not None:
                    bad = items[applied] if applied < len(items) else items[-1]
                    culprit = self._peer(backers, items.server)
                    self._charge(culprit, reason_event(reason),
                                 f"served block {bad[0].height} that fails verification ({reason.name.lower()})")
                    excluded.add(culprit.peer_id)
                    return False
            return True
        finally:
            for d in pending.values():
                d.cancel()

    async def _fetch_bodies(self, server: SyncPeer, start: int, hashes: list[bytes]) -> _Served | None:
        try:
            items = await self._timed(server, server.get_blocks(start, len(hashes)))
        except Exception:
            return None
        if not items:
            self._charge(server, Event.STALE_DATA, "served no blocks for hashes it voted for")
            return None
        for (block, _), want in zip(items, hashes, strict=False):
            if block.hash != want:
                self._charge(server, Event.INVALID_BLOCK, f"block {block.height} does not match its voted hash")
                return None
        if len(items) != len(hashes):
            return None                                  # a short answer (its frame limit?): ask another peer
        return _Served(items, server.peer_id)

    @staticmethod
    def _peer(peers: list[SyncPeer], peer_id: str) -> SyncPeer:
        return next(p for p in peers if p.peer_id == peer_id)

    # -- helpers ---------------------------------------------------------------------------------
    def _timed(self, peer: SyncPeer, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        def failed(f: Any) -> Any:
            if f.check(defer.TimeoutError, defer.CancelledError):
                self._charge(peer, Event.TIMEOUT, "request timed out")
            elif f.check(BadResponse):
                self._charge(peer, f.value.event, str(f.value))
            return f
        return d.addTimeout(self.request_timeout, self.clock).addErrback(failed)

    def _charge(self, peer: SyncPeer, event: Event, why: str) -> None:
        self._penalized.setdefault(peer.peer_id, []).append(event.value)
        self.log.info("Sync: peer {peer} charged {event}: {why}", peer=peer.peer_id, event=event.value, why=why)
        peer.penalize(event)

    def _report(self, applied: int) -> None:
        p = self.progress
        p.height = self.tip_height()
        p.blocks = p.height - p.start_height
        elapsed = max(self.clock.seconds() - p.started, 1e-9)
        p.blocks_per_s = p.blocks / elapsed
        p.eta_s = (p.target - p.height) / p.blocks_per_s if p.blocks_per_s > 0 else None
        now = self.clock.seconds()
        if now - self._last_log >= PROGRESS_EVERY or p.height >= p.target:
            self._last_log = now
            self.log.info("Sync progress {h}/{t} ({r:.1f} blocks/s, ETA {eta})", h=p.height, t=p.target,
                          r=p.blocks_per_s, eta="-" if p.eta_s is None else f"{p.eta_s:.0f} s")


class _Served(list):  # type: ignore[type-arg]
    """Items plus the PeerID that served them (so a refused block is charged to its server)."""

    def __init__(self, items: Items, server: str) -> None:
        super().__init__(items)
        self.server = server


def _lowered(status: PeerStatus, height: int) -> PeerStatus:
    return PeerStatus(min(status.height, max(height, 0)), status.tip_hash, status.finalized_height,
                      status.finalized_hash, status.genesis_hash, status.latency)


def reason_event(reason: Reason) -> Event:
    return event_for_reason(reason) or Event.INVALID_BLOCK
