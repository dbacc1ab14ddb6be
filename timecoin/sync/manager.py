"""StateSyncManager: catch up with the network, fast and without trusting any one peer (SPEC §6).

One sync run:

1. **Peer state.** Every usable peer is asked for its status (height, tip and finalized hash, genesis
   hash); the round trip is its latency. Peers of another genesis are left out.
2. **Voters by trust.** Candidates to vote on a window's hashes are the peers whose height covers it,
   plus every trusted peer (a validator's host key, or reputation >= TRUSTED_SCORE) even below it; most
   trusted first: validators, then by reputation, then lowest latency (a claimed height only breaks
   ties: anyone can claim one). Never a banned or negative-reputation peer.
3. **Hashes from 3, bodies from 1.** For each window the block hashes are asked of ``redundancy`` peers;
   a hash is accepted only when at least 2/3 of the peers that answered for that height agree, and trust
   outweighs numbers: untrusted voters neither outvote nor deny a trusted voter's hash (nor a trusted
   "no block there"); such a conflict is a split that a certificate settles. A peer whose list ends
   below a height answered "no block there": a height only one voter of three vouches for is not
   accepted, and where 2/3 say so the window ends (the claims above it are not sought this run). A voter
   that answers less than its status claimed is charged ``stale_data``; an untrusted one still silent
   when 2/3 have answered and decided the vote is dropped once late (``_late_after``) and charged
   ``slow_response`` (a trusted one is waited for). On a split more peers are asked (as many as could
   make a 2/3 majority), until one exists or every peer covering the window has answered (only trusted
   ones when the split is a trusted voter's). A split left at the next height is settled by certificates
   (``verify``), trusted voters' hashes tried first: the hash whose block's certificate verifies wins; a
   peer that serves a block whose certificate does not verify is charged and its vote dropped (numerator
   and denominator), as in fork resolution. When a trusted voter has no block there and no other voter
   can serve a certified one, the run seeks nothing above our tip. Voters outvoted by the majority are
   charged ``stale_data`` once the majority's blocks were verified and applied.
4. **Bodies by ranges, at most ``max_ranges_per_peer`` (2) ranges in flight per peer** (SPEC §6). A
   ``get_blocks`` request names a range; a server answers with as many consecutive blocks as fit its
   ``sync_response_bytes``, up to 1,000. The window is cut into ranges of ``range_size`` blocks (2 per
   serving peer, 20 to 1,000 blocks: each costs one request of the peer's rate limit) for the voters
   whose hashes cover them (a shorter, agreeing list backs its prefix); a server holds one range until
   it has answered one this run (slow start), then at most 2. Up to ``max_ranges_in_flight`` ranges are
   in flight or received-but-unapplied, and only ranges within that many ranges of the next block to
   apply are requested (the head range always is; ``max_buffered_blocks`` is a run's high-water mark).
   A server whose request fails or times out leaves the window, a range is never retried on the server
   that just failed it, and ``usable()`` is checked at every assignment. SPEC §6 "served below a
   minimum rate moves to another peer": the head range is asked of a second server once its request is
   late (HEDGE_FACTOR times the typical response time, scaled to its size; before 3 ranges were
   answered, once a range at least as big sent after it was answered); the first good answer wins, and
   a server outpaced by a later request, or one that serves a short range without a frame budget's
   reason, is charged ``slow_response`` (a validator's host only loses its work: it anchors the vote),
   credited nothing, and given no more ranges this run (its ranges in flight are asked of others). As
   each range arrives its signatures are checked on worker threads (``preverify``, ``verify.py``) and
   it is applied once that is done: the apply finds them in the verified-signature cache.
5. **Applied in order, one LMDB write transaction per ``batch`` blocks** (``apply``): the consecutive
   chunks that have arrived are applied together, up to ``batch`` blocks. A block that fails
   verification is charged to its server, which is left out of the run. A block whose parent is not
   our tip means the peers' chain differs from ours below it: ``on_fork`` is told and the run ends (its
   certificate is judged by the fork search at the fork point, where both chains share a validator
   set). A batch refused because consensus committed a height meanwhile re-plans the window; re-plans
   are not failed attempts (bounded apart, ``MAX_REPLANS``).

Requests we cancel ourselves (a window ended while others were in flight) are never charged.

A peer that lies about its height cannot serve the blocks it claims (it has no valid certificates for
them): it is charged and its claim discarded, and the run still reaches the honest tip.
"""
from __future__ import annotations

import bisect
import enum
import statistics
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from timecoin.errors import Reason
from timecoin.ledger.block import Block, CommitCertificate
from timecoin.p2p.peers import Event, event_for_reason
from timecoin.sync.peer import BadResponse, PeerStatus, SyncPeer

Items = list[tuple[Block, CommitCertificate]]
# apply(items) -> (how many were committed, the reason the first bad one was refused or None)
ApplyFn = Callable[[Items], "tuple[int, Reason | None] | Awaitable[tuple[int, Reason | None]]"]
# verify(block, certificate) -> None if the certificate finalizes the block under our validator set, else why not
VerifyFn = Callable[[Block, CommitCertificate], "str | None"]
# on_fork(peer_id, height, their hash at height): the peer's chain differs from ours at a height we hold
ForkFn = Callable[[str, int, bytes], None]
# preverify(items): check the items' signatures off the reactor thread ahead of apply (verify.py); never fails
PreverifyFn = Callable[[Items], "defer.Deferred[Any]"]

DEFAULT_BATCH = 20                 # blocks per write transaction
PEER_RANGES_IN_FLIGHT = 2          # SPEC §6: at most 2 get_blocks ranges in flight per peer
MAX_RANGE_BLOCKS = 1000            # SPEC §6: a server answers a range with at most 1,000 blocks
MIN_RANGE_BLOCKS = 20              # a window's ranges are not cut smaller (each costs a request of the limit)
DEFAULT_REDUNDANCY = 3
DEFAULT_RANGES_IN_FLIGHT = 8       # body ranges in flight or received-but-unapplied, across all servers
DEFAULT_REQUEST_TIMEOUT = 15.0
MAX_WINDOW_ATTEMPTS = 6            # failed windows (no agreement, bad bodies) before a run gives up
MAX_REPLANS = 100                  # re-plans (consensus committed a height meanwhile) in one run: not failures
MAX_RUN_BLOCKS = 10_000_000       # one run's bound; the coordinator's next cycle goes on from there
HASH_WINDOW = 1000                 # hashes voted per request (one request per voter per window)
PROGRESS_EVERY = 2.0               # seconds between progress log lines
# SPEC §6 "served below a minimum rate moves to another peer": the minimum is relative to what this
# node's peers achieve. A request is *late* after HEDGE_FACTOR times the typical (median) response time
# of its kind, i.e. served below 1/HEDGE_FACTOR of the typical rate, and never before HEDGE_MIN_S
# (jitter on fast links is not slowness) nor after the request timeout.
HEDGE_FACTOR = 3.0
HEDGE_MIN_S = 0.1                  # 0.25 left the 60-block late-hash liar run at 1.57x honest-only
RESPONSE_SAMPLES = 32              # recent response times kept per kind (rolling)
# An honest server answers a range with every block that fits its frame budget (max_frame_bytes - 1 KiB,
# 8 MiB by default; blocks are at most 4 MiB), so it stops short only after at least this much.
SHORT_ANSWER_BYTES = 1 << 20
# Trusted voters (SPEC §5 reputation, §6 votes): a validator's host key, or a peer whose reputation shows
# minutes of useful service (scores earn at most ~2 net points a minute; a fresh identity holds 0).
TRUSTED_SCORE = 10
MAX_HEIGHT = 2 ** 63


class _Outcome(enum.Enum):
    DONE = "done"                  # the window was applied
    FAILED = "failed"              # no server could deliver, or a block failed verification
    REPLAN = "replan"              # our side moved (consensus committed a height meanwhile)
    STOP = "stop"                  # halted, or a fork below our tip: the run ends


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
    fork_suspected: bool = False

    @property
    def blocks(self) -> int:
        return self.end_height - self.start_height


@dataclass
class _Vote:
    hashes: list[bytes]
    backers: list[SyncPeer]
    coverage: dict[str, int]                      # backer id -> how many of ``hashes`` (from the first) it voted
    minority: dict[str, tuple[SyncPeer, int]]     # outvoted peer id -> (peer, first height it differs at)


@dataclass(eq=False)
class _Request:
    """One body request in flight: a chunk may have two (the first and a hedge), the first good answer wins."""

    server: SyncPeer
    start: int
    count: int
    sent: float
    d: defer.Deferred[Any] | None = None
    cancelled: bool = False                       # by us: its result is ignored and never charged


class StateSyncManager:
    log = Logger()

    def __init__(self, tip_height: Callable[[], int], genesis_hash: bytes, clock: IReactorTime, apply: ApplyFn, *,
                 batch: int = DEFAULT_BATCH, redundancy: int = DEFAULT_REDUNDANCY,
                 max_ranges_in_flight: int = DEFAULT_RANGES_IN_FLIGHT,
                 max_ranges_per_peer: int = PEER_RANGES_IN_FLIGHT,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT, verify: VerifyFn | None = None,
                 on_fork: ForkFn | None = None, on_progress: Callable[[], None] | None = None,
                 preverify: PreverifyFn | None = None) -> None:
        self.tip_height = tip_height
        self.genesis_hash = genesis_hash
        self.clock = clock
        self.apply = apply
        self.batch = batch
        self.redundancy = redundancy
        self.max_ranges_in_flight = max_ranges_in_flight
        self.max_ranges_per_peer = max_ranges_per_peer
        self.request_timeout = request_timeout
        self.verify = verify
        self.on_fork = on_fork
        self.on_progress = on_progress
        self.preverify = preverify
        self.progress = SyncProgress()
        self.statuses: dict[str, PeerStatus] = {}
        self._penalized: dict[str, list[str]] = {}
        self._last_log = 0.0
        self._more_peers: Callable[[], list[SyncPeer]] | None = None
        self._fork = False
        self._times: dict[str, deque[float]] = {"small": deque(maxlen=RESPONSE_SAMPLES),
                                                "body": deque(maxlen=RESPONSE_SAMPLES)}
        self._slow: set[str] = set()              # peers charged slow_response in this run: no more chunks
        self._proven: set[str] = set()            # servers that answered a body range in this run (slow start)
        self._body_counts: deque[int] = deque(maxlen=RESPONSE_SAMPLES)   # blocks in recent body answers
        self._ceiling = MAX_HEIGHT                # this run seeks no height above (a trusted "no block there")
        self.max_buffered_blocks = 0              # this run's high-water mark of blocks in flight + received, unapplied

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

    def voters(self, peers: list[SyncPeer], statuses: dict[str, PeerStatus], min_height: int) -> list[SyncPeer]:
        """Usable peers to vote on hashes from ``min_height``, most trusted first: validators, then by
        reputation, then lowest latency (a claimed height only decides a tie: anyone can claim one).

        Those covering ``min_height``, and every trusted peer (``_trusted``) even below it: its "no block
        there" must be heard, or a crowd could vote made-up heights past every validator's tip.
        """
        def key(p: SyncPeer) -> tuple[bool, int, float, int]:
            st = statuses[p.peer_id]
            return (p.power <= 0, -p.score, st.latency if p.latency is None else p.latency, -st.height)
        return sorted((p for p in peers if p.peer_id in statuses and p.usable()
                       and (statuses[p.peer_id].height >= min_height or _trusted(p))), key=key)

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
        self._fork = False
        self._slow = set()
        self._proven = set()
        self._ceiling = MAX_HEIGHT
        self.max_buffered_blocks = 0
        self.progress = SyncProgress(start, start, target, t0, 0, 0.0, None, True, len(peers))
        failed = 0
        try:
            if target > start:
                self.log.info("Sync from height {h} to {t} with {n} peers", h=start, t=target, n=len(peers))
                failed = await self._pipeline(peers, statuses)
        finally:
            self.progress.running = False
            self._progressed()
        end = self.tip_height()
        seconds = max(self.clock.seconds() - t0, 1e-9)
        if end > start:
            self.log.info("Synced {n} blocks to height {h} in {s:.1f} s ({r:.1f} blocks/s)", n=end - start, h=end,
                          s=seconds, r=(end - start) / seconds)
        return SyncResult(start, end, target, seconds, failed, self._penalized, self._fork)

    async def _pipeline(self, peers: list[SyncPeer], statuses: dict[str, PeerStatus]) -> int:
        """Vote a window of hashes, then fetch and apply its bodies; repeat until the target."""
        failed = 0
        replans = 0
        excluded: set[str] = set()
        for _ in range(MAX_WINDOW_ATTEMPTS + MAX_REPLANS + MAX_RUN_BLOCKS // HASH_WINDOW):   # windows, fails, re-plans
            await self._add_newcomers(peers, statuses)
            tip = self.tip_height()
            target = self._target(peers, statuses, excluded)
            self.progress.target = max(target, tip)
            if tip >= target or failed >= MAX_WINDOW_ATTEMPTS:
                break
            vote = await self._vote_hashes(peers, statuses, tip + 1, min(HASH_WINDOW, target - tip), excluded)
            if vote is None:
                failed += 1
                continue
            outcome = await self._fetch_and_apply(tip + 1, vote, excluded, statuses)
            self._charge_outvoted(vote, statuses)
            if outcome is _Outcome.STOP:
                break
            if outcome is _Outcome.REPLAN:           # routine near the tip: not a failure, but bounded apart
                replans += 1
                if replans >= MAX_REPLANS:
                    self.log.info("Sync: our tip kept moving ({n} re-plans); ending the run", n=replans)
                    break
            elif outcome is not _Outcome.DONE:
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
        return min(max(heights, default=self.tip_height()), self._ceiling)

    # -- hashes from 3 (more on a split) ---------------------------------------------------------
    async def _vote_hashes(self, peers: list[SyncPeer], statuses: dict[str, PeerStatus], start: int, count: int,
                           excluded: set[str]) -> _Vote | None:
        """Hashes from ``start`` that >= 2/3 of the answering peers agree on, and the peers that voted them.

        A voter whose list ends before a height says "no block there"; when 2/3 say so the accepted list
        ends, and the claims of the peers that vouched for a hash there are lowered for this run (not
        charged: a peer a block ahead is honest). A voter whose shorter list is a prefix of the accepted
        one backs that prefix (``coverage``) and serves bodies from it.
        """
        pool = [p for p in self.voters(peers, statuses, start) if p.peer_id not in excluded]
        if not pool:
            return None
        by_id = {p.peer_id: p for p in pool}
        trusted = {p.peer_id for p in pool if _trusted(p)}
        answers: dict[str, list[bytes]] = {}
        certified: dict[int, bytes] = {}
        voters: list[SyncPeer] = []

        async def ask(batch: list[SyncPeer]) -> None:
            voters.extend(batch)
            await self._ask_hashes(batch, start, count, statuses, answers, trusted,
                                   lambda: _tally(answers, count, trusted).split is None)

        await ask(pool[:self.redundancy])
        rest = pool[self.redundancy:]
        settled = False
        tally = _tally(answers, count, trusted)
        for _ in range(len(pool) + 1):                   # bounded: each pass asks a new peer or settles once
            if tally.split is None:
                break
            split = tally.split
            helpers = [p for p in rest if not tally.trusted_split or p.peer_id in trusted]
            if helpers:                                  # ask as many more as could make a 2/3 majority
                best, answered = tally.counts
                batch = helpers[:max(1, 2 * answered - 3 * best)]
                self.log.info("Sync: no 2/3 agreement on block {h} among {n} peers; asking {k} more",
                              h=start + split, n=answered, k=len(batch))
                rest = [p for p in rest if p not in batch]
                await ask(batch)
            elif split == 0 and not settled and self.verify is not None and start == self.tip_height() + 1:
                settled = True
                await self._settle_by_certificate(start, answers, by_id, excluded, statuses, trusted, certified)
            else:
                self.log.info("Sync: no 2/3 agreement on block {h} among {n} peers", h=start + split,
                              n=tally.counts[1])
                break
            tally = _tally(answers, count, trusted, certified)
        accepted = tally.accepted
        for pid, index in tally.denied.items():          # 2/3 said there is no such block: not sought this run
            statuses[pid] = _lowered(statuses[pid], start + index - 1)
        if settled and 0 not in certified and any(not answers.get(pid, [None]) for pid in trusted):
            # A trusted voter has no block here and no other voter could serve one with a valid certificate:
            # the heights above our tip are not sought this run (the next cycle asks again).
            self.log.info("Sync: no certified block {h} behind any claim above it; ending the run", h=start)
            self._ceiling = min(self._ceiling, start - 1)
            return _Vote([], [], {}, {})
        if not accepted:
            return None
        coverage = {p.peer_id: n for p in voters if (n := _common(answers.get(p.peer_id, []), accepted))}
        backers = [p for p in voters if p.peer_id in coverage]
        if not backers:
            return None
        minority: dict[str, tuple[SyncPeer, int]] = {}
        for pid, hs in answers.items():
            diff = next((i for i in range(min(len(hs), len(accepted))) if hs[i] != accepted[i]), None)
            if diff is not None:
                minority[pid] = (by_id[pid], start + diff)
        return _Vote(accepted, backers, coverage, minority)

    async def _ask_hashes(self, batch: list[SyncPeer], start: int, count: int, statuses: dict[str, PeerStatus],
                          answers: dict[str, list[bytes]], trusted: set[str], decided: Callable[[], bool]) -> None:
        """Ask ``batch`` for the hashes from ``start``; wait for every answer, or until the others are late.

        Once at least 2/3 of the batch answered and their answers decide the vote (``decided``), the rest
        get until they are late (``_late_after``): then they are dropped from the vote and charged
        ``slow_response`` (a slow voter must not hold every window up to the request timeout). A trusted
        voter is waited for (up to the request timeout): faster Sybils must not silence it.
        """
        pending: dict[str, defer.Deferred[Any]] = {}
        wake: list[defer.Deferred[None] | None] = [None]

        def poke(_: Any = None) -> None:
            if wake[0] is not None:
                w, wake[0] = wake[0], None
                w.callback(None)

        def answered(result: Any, peer: SyncPeer) -> None:
            pending.pop(peer.peer_id, None)
            if not isinstance(result, Failure):
                self._record_hashes(peer, start, count, list(result), statuses, answers)
            self.clock.callLater(0, poke)            # answers that came in together are all taken first

        allowed = self._late_after("small")
        due: dict[str, float] = {}                       # when each voter's answer is late: from when it left
        for peer in batch:
            d = self._timed(peer, peer.get_block_hashes(start, count))
            due[peer.peer_id] = self.clock.seconds() + _queued(peer) + allowed
            pending[peer.peer_id] = d
            d.addBoth(answered, peer)
        try:
            for _ in range(len(batch) + 2):              # bounded: each pass takes an answer, or the deadline once
                if not pending:
                    return
                now = self.clock.seconds()
                late = max(due[pid] for pid in pending)
                if (now >= late and 3 * (len(batch) - len(pending)) >= 2 * len(batch)
                        and not trusted.intersection(pending) and decided()):
                    for peer in batch:
                        if peer.peer_id in pending:
                            self._charge_slow(peer, f"hashes from {start} still not sent when the others "
                                                    "had decided the vote")
                    return
                wake[0] = defer.Deferred()
                timer = self.clock.callLater(late - now, poke) if now < late else None
                await wake[0]
                if timer is not None and timer.active():
                    timer.cancel()
        finally:
            for d in list(pending.values()):
                d.cancel()                               # ours: never charged as a failure

    def _record_hashes(self, peer: SyncPeer, start: int, count: int, hashes: list[bytes],
                       statuses: dict[str, PeerStatus], answers: dict[str, list[bytes]]) -> None:
        """Keep a voter's answer; one shorter than the height it claimed is charged and its claim lowered."""
        hashes = hashes[:count]
        answers[peer.peer_id] = hashes
        claimed = statuses[peer.peer_id].height
        if len(hashes) < min(count, claimed - start + 1):
            self._charge(peer, Event.STALE_DATA, f"claimed height {claimed} but has no block {start + len(hashes)}")
            statuses[peer.peer_id] = _lowered(statuses[peer.peer_id], start + len(hashes) - 1)

    async def _settle_by_certificate(self, height: int, answers: dict[str, list[bytes]],
                                     by_id: dict[str, SyncPeer], excluded: set[str],
                                     statuses: dict[str, PeerStatus], trusted: set[str],
                                     certified: dict[int, bytes]) -> None:
        """A split at the next height: the certificate is the final arbiter.

        Competing hashes are tried in turn, those a trusted voter backs first, then the most voted; each
        hash's voters (trusted first) are asked for the block until one serves it with a certificate that
        verifies: that hash wins (``certified[0]``), whatever the count. A voter that serves a forged one is
        charged and left out of the run, one that does not serve the block it voted for is charged
        ``stale_data`` and its claim lowered; either vote is dropped.
        """
        verify = self.verify
        assert verify is not None
        candidates: dict[bytes, list[str]] = {}
        for pid, hs in answers.items():
            if hs:
                candidates.setdefault(hs[0], []).append(pid)
        for pids in candidates.values():
            pids.sort(key=lambda pid: pid not in trusted)
        order = sorted(candidates.items(), key=lambda kv: (kv[1][0] not in trusted, -len(kv[1]), kv[0]))
        for their_hash, pids in order:
            for pid in pids:
                peer = by_id[pid]
                try:
                    got = await self._timed(peer, peer.get_blocks(height, 1))
                except Exception:
                    answers.pop(pid, None)
                    continue
                if not got or got[0][0].height != height or got[0][0].hash != their_hash:
                    self._charge(peer, Event.STALE_DATA, f"did not serve the block {height} it voted for")
                    answers.pop(pid, None)
                    statuses[pid] = _lowered(statuses[pid], height - 1)
                    continue
                why = verify(*got[0])
                if why is not None:
                    self._charge(peer, Event.FORGED_CERTIFICATE, f"block {height} it voted for: {why}")
                    answers.pop(pid, None)
                    excluded.add(pid)
                    continue
                certified[0] = their_hash                # certified: it wins, the other votes at it fall
                return

    def _charge_outvoted(self, vote: _Vote, statuses: dict[str, PeerStatus]) -> None:
        """Charge the outvoted peers whose disputed height the majority's verified blocks now cover."""
        tip = self.tip_height()
        for pid, (peer, height) in vote.minority.items():
            if height <= tip:
                self._charge(peer, Event.STALE_DATA, f"hash of block {height} differs from the majority")
                if pid in statuses:
                    statuses[pid] = _lowered(statuses[pid], height - 1)

    # -- bodies, at most max_ranges_per_peer ranges per server, applied in order ------------------
    async def _fetch_and_apply(self, start: int, vote: _Vote, excluded: set[str],
                               statuses: dict[str, PeerStatus]) -> _Outcome:
        w = _Window(self, start, vote, statuses)
        try:
            for _ in range(16 * (len(vote.hashes) + len(vote.backers) + 1)):   # bounded: events, deadlines, applies
                if w.next_apply >= w.end:
                    return _Outcome.DONE
                w.take_events()
                w.hedge()                                # a late head first: it holds up everything behind it
                w.assign()                               # servers fetch the next chunks while we apply
                if w.next_apply in w.ready and not w.ready[w.next_apply].checked:
                    await w.wait()                       # its signatures are being checked on the workers
                    continue
                if w.next_apply in w.ready:
                    outcome = await self._apply_ready(w.ready, w.lengths, w.next_apply, w.end, vote.backers,
                                                      excluded)
                    if isinstance(outcome, _Outcome):
                        return outcome
                    w.next_apply = outcome
                    continue
                if w.events:
                    continue
                if not w.inflight:
                    self.log.info("Sync: no peer left to serve blocks from {h}", h=w.next_apply)
                    return _Outcome.FAILED
                await w.wait()
            return _Outcome.FAILED
        finally:
            w.cancel_all()                               # ours, not the peers' fault: never charged

    async def _apply_ready(self, ready: dict[int, _Served], lengths: dict[int, int], at: int, end: int,
                           backers: list[SyncPeer], excluded: set[str]) -> int | _Outcome:
        """Apply the consecutive chunks ready from ``at`` (up to ``batch`` blocks) in one transaction."""
        items: Items = []
        owners: list[str] = []
        s = at
        while s in ready and len(items) < self.batch and (s == at or ready[s].checked):
            chunk = ready.pop(s)
            take = min(len(chunk), self.batch - len(items))
            if take < len(chunk):                        # the rest stays ready for the next transaction
                rest = s + take
                ready[rest] = _Served(chunk[take:], chunk.server, chunk.checking)
                lengths[rest] = len(chunk) - take
            items.extend(chunk[:take])
            owners.extend([chunk.server] * take)
            s += take
        applied, reason = await defer.maybeDeferred(self.apply, items)
        self._report(applied)
        for server in dict.fromkeys(owners[:applied]):   # served certified blocks we applied: credit (capped
            if server not in self._slow:                 # per window by the peer manager), unless short-served
                self._peer(backers, server).reward(Event.USEFUL_RESPONSE)
        if reason is None:
            return at + applied
        if reason is Reason.SHUTTING_DOWN:
            return _Outcome.STOP
        bad_index = min(applied, len(items) - 1)
        bad = items[bad_index][0]
        if reason is Reason.WRONG_HEIGHT:
            if applied == 0 and self.tip_height() == bad.height - 1:
                # Voted, and its parent is not our tip: their chain differs from ours below. Its certificate
                # is not judged here: our validator set for its height comes from *our* chain, which may
                # differ from theirs (stake changes after the fork point), so an honest peer's valid
                # certificate can fail under it. The fork search verifies at the fork point, where both
                # chains share the set, and charges a forged branch there (forks.py); suspicions are
                # rate-limited per peer, and a false one costs stale_data (coordinator.fork_suspected).
                self.log.warn("Sync: block {h} from {peer} builds on {parent}, not on our tip: fork suspected",
                              h=bad.height, peer=owners[bad_index], parent=bad.header.prev_hash.hex()[:16])
                self._fork = True
                if self.on_fork is not None:
                    self.on_fork(owners[bad_index], bad.height - 1, bad.header.prev_hash)
                return _Outcome.STOP
            return _Outcome.REPLAN                       # our side moved (consensus committed): re-plan
        culprit = self._peer(backers, owners[bad_index])
        self._charge(culprit, reason_event(reason),
                     f"served block {bad.height} that fails verification ({reason.name.lower()})")
        excluded.add(culprit.peer_id)
        return _Outcome.FAILED

    async def _fetch_bodies(self, server: SyncPeer, start: int, hashes: list[bytes],
                            statuses: dict[str, PeerStatus]) -> _Served | None:
        try:
            items = await self._timed(server, server.get_blocks(start, len(hashes)), "body")
        except defer.CancelledError:
            raise
        except Exception:
            return None
        if not items:
            self._charge(server, Event.STALE_DATA, "served no blocks for hashes it voted for")
            if server.peer_id in statuses:
                statuses[server.peer_id] = _lowered(statuses[server.peer_id], start - 1)
            return None
        items = list(items)[:len(hashes)]
        for (block, _), want in zip(items, hashes, strict=False):
            if block.hash != want:
                self._charge(server, Event.INVALID_BLOCK, f"block {block.height} does not match its voted hash")
                return None
        return _Served(items, server.peer_id)

    def _charge_slow(self, peer: SyncPeer, why: str) -> None:
        """Charge ``slow_response`` (once per run); the peer is given no more chunks this run while others can.

        A validator's host only loses its work, not its standing: a negative score would make it
        unusable, and peers that merely outpace it could then remove the anchor of the hash vote.
        """
        if peer.peer_id in self._slow:
            return
        self._slow.add(peer.peer_id)
        if peer.power > 0:
            self.log.info("Sync: validator peer {peer} slow, not charged: {why}", peer=peer.peer_id, why=why)
        else:
            self._charge(peer, Event.SLOW_RESPONSE, why)

    def _late_after(self, kind: str) -> float:
        """Seconds after which a request of ``kind`` ("small": status, hashes; "body") is late.

        HEDGE_FACTOR times the median of the recent responses of that kind (of status and hash responses
        while fewer than 3 body responses were seen), at least HEDGE_MIN_S, at most the request timeout.
        """
        samples = self._times[kind]
        if kind == "body" and len(samples) < 3:
            return self.request_timeout              # ranges take their size's time: until 3 are seen, a head
                                                     # is late only once a request sent after it was answered
        if len(samples) < 3 and self._times["small"]:
            samples = self._times["small"]
        if not samples:
            return self.request_timeout
        return min(self.request_timeout, max(HEDGE_MIN_S, HEDGE_FACTOR * statistics.median(samples)))

    @staticmethod
    def _peer(peers: list[SyncPeer], peer_id: str) -> SyncPeer:
        return next(p for p in peers if p.peer_id == peer_id)

    # -- helpers ---------------------------------------------------------------------------------
    def _timed(self, peer: SyncPeer, d: defer.Deferred[Any], kind: str = "small") -> defer.Deferred[Any]:
        """``d`` with our request timeout; the peer is charged for a timeout or a bad response.

        A request cancelled by us (CancelledError: a window ended while it was in flight) is not the
        peer's fault and is never charged; our own timeout fails with TimeoutError instead. The time
        an answer took is kept as a sample of ``kind`` (what ``_late_after`` measures lateness by).
        """
        sent = self.clock.seconds() + _queued(peer)     # timed from when it left, not from our own queue

        def answered(value: Any) -> Any:
            self._times[kind].append(self.clock.seconds() - sent)
            return value

        def failed(f: Any) -> Any:
            if f.check(defer.TimeoutError):
                self._charge(peer, Event.TIMEOUT, "request timed out")
            elif f.check(BadResponse):
                self._charge(peer, f.value.event, str(f.value))
            return f
        return d.addTimeout(self.request_timeout, self.clock).addCallbacks(answered, failed)

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
        self._progressed()

    def _progressed(self) -> None:
        if self.on_progress is not None:
            self.on_progress()


class _Served(list):  # type: ignore[type-arg]
    """Items plus the PeerID that served them (so a refused block is charged to its server)."""

    def __init__(self, items: Items, server: str, checking: defer.Deferred[Any] | None = None) -> None:
        super().__init__(items)
        self.server = server
        self.checking = checking                 # signatures being pre-verified (verify.py) until it fires

    @property
    def checked(self) -> bool:
        return self.checking is None or self.checking.called


class _Window:
    """The body requests of one window: chunks, their servers and load, requests in flight, chunks ready.

    Chunks of at most ``size`` blocks go to the backers whose vote covers them, at most ``cap`` blocks
    pending per server, at most ``max_ranges_in_flight`` chunks in flight, and only chunks within ``limit``
    (``max_ranges_in_flight * size``) blocks of the head: received-but-unapplied blocks count against
    the in-flight bound. A server whose request fails
    or times out leaves the window and never gets that chunk again. The head chunk (the next to apply)
    is *hedged* once its request is late (``_late_after("body")``): a second server is asked, the first
    good answer wins and the other request is cancelled; a server outpaced by a request sent after its
    own is charged ``slow_response`` and gets no more chunks this run, and its chunks in flight are hedged
    too. A short answer's remainder goes to another server; one under SHORT_ANSWER_BYTES (not cut by a
    frame budget) is short-serving, charged ``slow_response`` as well.
    """

    def __init__(self, manager: StateSyncManager, start: int, vote: _Vote, statuses: dict[str, PeerStatus]) -> None:
        self.m = manager
        self.start = start
        self.end = start + len(vote.hashes)
        self.hashes = vote.hashes
        self.coverage = vote.coverage
        self.statuses = statuses
        self.cap = max(1, manager.max_ranges_per_peer)
        self.servers = [p for p in vote.backers if p.peer_id not in manager._slow] or list(vote.backers)
        self.size = range_size(len(vote.hashes), len(self.servers), self.cap)
        # Received-but-unapplied blocks count against the in-flight bound: only chunks within this many
        # blocks of the head are requested, and at most ``max_ranges_in_flight`` chunks are in flight or
        # ready, so neither a withheld head chunk nor a stream of short answers can pile up more than that
        # many answers (each at most a frame) of blocks above the head.
        self.limit = manager.max_ranges_in_flight * self.size
        self.lengths: dict[int, int] = {s: min(self.size, self.end - s) for s in range(start, self.end, self.size)}
        self.todo: list[int] = sorted(self.lengths)       # chunk starts waiting for a server, lowest first
        self.failed_on: dict[int, set[str]] = {}
        self.load: dict[str, int] = {p.peer_id: 0 for p in vote.backers}
        self.inflight: dict[int, list[_Request]] = {}
        self.ready: dict[int, _Served] = {}
        self.events: list[tuple[_Request, _Served | None]] = []
        self.next_apply = start
        self._turn = 0
        self.answered: deque[tuple[float, int]] = deque(maxlen=RESPONSE_SAMPLES)   # (sent, count) answered
        self._wake: defer.Deferred[None] | None = None

    # -- requests --------------------------------------------------------------------------------
    def can_serve(self, peer: SyncPeer, s: int, hedge: bool = False) -> bool:
        """A server holds at most ``cap`` ranges, and one until it has answered a range this run (slow start:
        a server that never answers holds one range, not ``cap``, until it is found late); a hedge of the
        head may take a second slot of a server still in slow start."""
        n = self.lengths[s]
        cap = self.cap if hedge or peer.peer_id in self.m._proven else 1
        return (peer.peer_id not in self.failed_on.get(s, ()) and self.load[peer.peer_id] < cap
                and s + n - self.start <= self.coverage.get(peer.peer_id, 0)
                and all(r.server is not peer for r in self.inflight.get(s, ())))

    def send(self, s: int, hedge: bool = False) -> bool:
        """Ask the least loaded server that can serve chunk ``s`` (taking turns); False if none can."""
        free = [p for p in self.servers if self.can_serve(p, s, hedge)]
        if not free:
            return False
        self._turn += 1
        servers = self.servers
        server = min(free, key=lambda p: (self.load[p.peer_id], (servers.index(p) - self._turn) % len(servers)))
        n = self.lengths[s]
        self.load[server.peer_id] += 1
        req = _Request(server, s, n, self.m.clock.seconds())
        self.inflight.setdefault(s, []).append(req)
        req.d = defer.Deferred.fromCoroutine(
            self.m._fetch_bodies(server, s, self.hashes[s - self.start:s - self.start + n], self.statuses))
        req.sent += _queued(server)                      # lateness counts from when it left our queue
        req.d.addBoth(self._finished, req)
        return True

    def _finished(self, result: Any, req: _Request) -> None:
        self.load[req.server.peer_id] -= 1
        if req.cancelled:
            return
        self.events.append((req, None if isinstance(result, Failure) else result))
        self.poke()

    def assign(self) -> None:
        """Give waiting chunks to servers, lowest first, inside the window of ``limit`` blocks from the head."""
        for p in [p for p in self.servers if not p.usable()]:
            self.servers.remove(p)                       # banned or negative meanwhile: no more work
        for _ in range(len(self.todo)):                # bounded: each pass sends one chunk, or ends
            if not self.todo:
                break
            s = self.todo[0]
            if s != self.next_apply and len(self.inflight) + len(self.ready) >= self.m.max_ranges_in_flight:
                break                                    # the head is always asked: it unblocks the rest
            if s + self.lengths[s] > self.next_apply + self.limit or not self.send(s):
                break
            self.todo.pop(0)
        held = sum(len(items) for items in self.ready.values()) + sum(self.lengths[s] for s in self.inflight)
        self.m.max_buffered_blocks = max(self.m.max_buffered_blocks, held)

    def hedge(self) -> None:
        """Ask a second server for the head chunk once its request is late, and for chunks of slow servers."""
        now = self.m.clock.seconds()
        for s in sorted(self.inflight):
            reqs = self.inflight[s]
            if len(reqs) == 1 and (reqs[0].server.peer_id in self.m._slow
                                   or (s == self.next_apply and (now - reqs[0].sent >= self.late_for(reqs[0])
                                                                 or self.outpaced(reqs[0])))):
                self.send(s, hedge=True)

    def outpaced(self, req: _Request) -> bool:
        """A range at least as big as ``req``, sent clearly after it left (HEDGE_MIN_S: requests sent together
        race, and their order of arrival says nothing), was answered already."""
        return any(sent >= req.sent + HEDGE_MIN_S and count >= req.count for sent, count in self.answered)

    def late_for(self, req: _Request) -> float:
        """Seconds after which body request ``req`` is late: ``_late_after("body")`` scaled to its size
        (ranges of several sizes are in flight: the head may be a remainder, or a range of a bigger window)."""
        late = self.m._late_after("body")
        counts = self.m._body_counts
        if late >= self.m.request_timeout or not counts:
            return late
        return min(self.m.request_timeout, late * max(1.0, req.count / statistics.median(counts)))

    def head_due(self) -> float | None:
        """When the head chunk's request becomes late (None: not in flight alone, or late already)."""
        reqs = self.inflight.get(self.next_apply)
        if reqs is None or len(reqs) != 1:
            return None
        due = reqs[0].sent + self.late_for(reqs[0])
        return due if due > self.m.clock.seconds() else None

    # -- answers ---------------------------------------------------------------------------------
    def take_events(self) -> None:
        while self.events:
            req, items = self.events.pop(0)
            reqs = self.inflight.get(req.start, [])
            if req not in reqs:
                continue
            reqs.remove(req)
            if items is None:
                self._failed(req, reqs)
            else:
                self._served(req, reqs, items)

    def _failed(self, req: _Request, others: list[_Request]) -> None:
        """Failed or timed out: that server leaves the window; the chunk waits for another (if no copy is out)."""
        s = req.start
        if req.server in self.servers:
            self.servers.remove(req.server)
        self.failed_on.setdefault(s, set()).add(req.server.peer_id)
        if not others:
            del self.inflight[s]
            bisect.insort(self.todo, s)

    def _served(self, req: _Request, others: list[_Request], items: _Served) -> None:
        s = req.start
        self.m._proven.add(req.server.peer_id)
        self.m._body_counts.append(len(items))
        self.answered.append((req.sent, req.count))
        del self.inflight[s]
        for other in others:                             # the first good answer wins: the other copy is cancelled
            other.cancelled = True
            if other.sent < req.sent:
                self.slow(other.server, f"blocks {s}-{s + other.count - 1} outpaced by a request sent "
                                        f"{req.sent - other.sent:.1f} s after its own")
            assert other.d is not None
            other.d.cancel()
        got = len(items)
        if got < self.lengths[s]:                        # the rest goes to another server
            rest = s + got
            self.lengths[rest] = self.lengths[s] - got
            self.lengths[s] = got
            self.failed_on.setdefault(rest, set()).add(req.server.peer_id)
            bisect.insort(self.todo, rest)
            if _served_bytes(items) < SHORT_ANSWER_BYTES:
                self.slow(req.server, f"served {got} of {got + self.lengths[rest]} blocks from {s}, "
                                      f"{_served_bytes(items)} bytes")
        if self.m.preverify is not None:
            items.checking = self.m.preverify(items)
            items.checking.addBoth(lambda _: self.poke())
        self.ready[s] = items

    def slow(self, peer: SyncPeer, why: str) -> None:
        self.m._charge_slow(peer, why)
        if peer in self.servers and len(self.servers) > 1:
            self.servers.remove(peer)

    # -- waiting ---------------------------------------------------------------------------------
    def poke(self) -> None:
        if self._wake is not None:
            w, self._wake = self._wake, None
            w.callback(None)

    async def wait(self) -> None:
        """Until a request ends, or the head chunk's request becomes late."""
        self._wake = defer.Deferred()
        due = self.head_due()
        timer = self.m.clock.callLater(due - self.m.clock.seconds(), self.poke) if due is not None else None
        await self._wake
        if timer is not None and timer.active():
            timer.cancel()

    def cancel_all(self) -> None:
        for reqs in list(self.inflight.values()):
            for req in reqs:
                req.cancelled = True
                if req.d is not None:
                    req.d.cancel()


def range_size(blocks: int, servers: int, per_server: int = PEER_RANGES_IN_FLIGHT) -> int:
    """Blocks per body range of a window of ``blocks`` shared by ``servers``: enough ranges to keep
    ``per_server`` in flight at each (so applying overlaps fetching), none under MIN_RANGE_BLOCKS (each
    range is one request of the peer's rate limit) nor over MAX_RANGE_BLOCKS (what a server answers)."""
    ranges = max(1, servers) * max(1, per_server)
    return max(1, min(MAX_RANGE_BLOCKS, max(MIN_RANGE_BLOCKS, -(-blocks // ranges))))


def _trusted(peer: SyncPeer) -> bool:
    """A validator's host key, or a peer with minutes of useful service: a fresh identity is not."""
    return peer.power > 0 or peer.score >= TRUSTED_SCORE


def _served_bytes(items: Items) -> int:
    return sum(block.size + len(cert.encoded) for block, cert in items)


def _common(hashes: list[bytes], accepted: list[bytes]) -> int:
    """How many of ``accepted`` (from the first) ``hashes`` agrees with."""
    return next((i for i, (a, b) in enumerate(zip(hashes, accepted, strict=False)) if a != b),
                min(len(hashes), len(accepted)))


@dataclass
class _Tally:
    accepted: list[bytes]
    split: int | None = None                     # index of the first height with no 2/3 choice, if any
    counts: tuple[int, int] = (0, 0)             # (votes of the best choice, voters) at the split
    trusted_split: bool = False                  # a trusted voter's hash is in it: untrusted votes cannot settle it
    denied: dict[str, int] = field(default_factory=dict)    # peer id -> index of its hash 2/3 said is no block


def _queued(peer: SyncPeer) -> float:
    """How long our own pacing held the request just made to ``peer`` back (0 for peers without pacing)."""
    return float(getattr(peer, "last_queue_delay", 0.0) or 0.0)


def _tally(answers: dict[str, list[bytes]], count: int, trusted: set[str] | frozenset[str] = frozenset(),
           certified: dict[int, bytes] | None = None) -> _Tally:
    """The hashes the live voters agree on, height by height.

    A voter whose list ends before a height votes "no block there" (None). A hash is accepted with at
    least 2/3 of the votes there, None counted: a height only one voter of three vouches for is not, and
    when 2/3 say None the list ends. Trust outweighs numbers: a hash a trusted voter (a validator, a
    well-scored peer) vouches for is not denied by untrusted None votes, nor outvoted by other hashes
    of untrusted voters, and a trusted None is not outvoted by untrusted hashes: such a conflict, and
    trusted voters that disagree, are a split that only a certificate (or more trusted voters) settles.
    A ``certified`` hash wins its height outright. A peer outvoted at some height no longer counts above
    it: its later hashes chain off a block the majority rejected (a voter that said None at a certified
    height is behind: dropped too).
    """
    live = dict(answers)
    accepted: list[bytes] = []
    for i in range(count):
        votes: dict[bytes | None, list[str]] = {}
        for pid, hs in live.items():
            votes.setdefault(hs[i] if i < len(hs) else None, []).append(pid)
        if certified and i in certified:
            best: bytes | None = certified[i]
        elif all(h is None for h in votes):
            break                                        # nobody vouches for a block here
        else:
            choice = _choose(votes, trusted)
            if isinstance(choice, _Tally):
                choice.accepted, choice.split = accepted, i
                return choice
            best = choice
        if best is None:
            return _Tally(accepted, denied={pid: i for h, pids in votes.items() if h is not None for pid in pids})
        for other, pids in votes.items():
            if other != best and (other is not None or (certified and i in certified)):
                for pid in pids:
                    del live[pid]
        accepted.append(best)
    return _Tally(accepted)


def _choose(votes: dict[bytes | None, list[str]], trusted: set[str] | frozenset[str]) -> bytes | None | _Tally:
    """The choice at one height (a hash, or None: no block), or a split (a _Tally without its accepted list)."""
    answered = sum(len(v) for v in votes.values())
    vouched = {h for h, pids in votes.items() if any(p in trusted for p in pids)}
    if len(vouched) > 1:                                 # trusted voters disagree (a hash, another or None)
        best = max(len(votes[h]) for h in vouched)
        return _Tally([], 0, (best, answered), trusted_split=True)
    if vouched:
        (mine,) = vouched
        if mine is None:                                 # a trusted "no block" against untrusted hashes
            return _Tally([], 0, (len(votes[None]), answered), trusted_split=True)
        rivals = [h for h in votes if h is not None and h != mine]
        if rivals and 3 * len(votes[mine]) < 2 * answered:
            return _Tally([], 0, (len(votes[mine]), answered), trusted_split=True)
        return mine
    best_choice, who = max(votes.items(), key=lambda kv: (len(kv[1]), kv[0] is not None, kv[0] or b""))
    if 3 * len(who) < 2 * answered:
        return _Tally([], 0, (len(who), answered))
    return best_choice


def _lowered(status: PeerStatus, height: int) -> PeerStatus:
    return PeerStatus(min(status.height, max(height, 0)), status.tip_hash, status.finalized_height,
                      status.finalized_hash, status.genesis_hash, status.latency)


def reason_event(reason: Reason) -> Event:
    return event_for_reason(reason) or Event.INVALID_BLOCK
