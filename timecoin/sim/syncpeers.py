"""SyncPeer implementations over real stores, honest and hostile, and a simulated sync run (tests, benchmarks).

* :class:`StorePeer`: what a remote node holding a store would answer, at once.
* :class:`TimedPeer`: the same, each answer ``latency + per_block * blocks`` seconds of a ``task.Clock``
  later (``clock.callLater``); its score is the DELTAS sum of what it was charged and credited, credits
  capped as the peer manager caps them (GOOD_PER_WINDOW per GOOD_WINDOW), and like a real peer
  (``ConnectionPeer.usable``) it is unusable below 0. It records the requests it holds and the heights
  it delivered, so a test can measure what the syncing node buffers.
* Hostile peers (issue 11): :class:`SlowLiar` (claims a huge height, extends the honest hash list with
  made-up hashes, serves one real block per request just under the request timeout), :class:`SybilPeer`
  (a fresh power-0 identity of a crowd agreeing on made-up hashes), :class:`Withholder` (votes the honest
  hashes, never answers some or all body requests).
* :class:`SimSyncer` (an empty node: real LMDB store, the production ``apply_batch`` and certificate
  check, a :class:`~timecoin.sync.manager.StateSyncManager` on a ``task.Clock`` driven event by event) and
  :func:`liar_sync_ratio`: sync time with 1 liar of 3 peers over honest-only, in simulated seconds.
"""
from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from timecoin.errors import Reason
from timecoin.ledger.block import Block, CommitCertificate
from timecoin.p2p.peers import DELTAS, GOOD_PER_WINDOW, GOOD_WINDOW, Event, gcra
from timecoin.sim.chaingen import ChainSpec, build_chain, initialize, make_genesis
from timecoin.store import Store
from timecoin.sync.apply import apply_batch, certificate_problem
from timecoin.sync.manager import DEFAULT_REQUEST_TIMEOUT, StateSyncManager, SyncResult
from timecoin.sync.peer import PeerStatus

Items = list[tuple[Block, CommitCertificate]]


class StorePeer:
    """The SyncPeer protocol over a store: what a remote node holding that chain would answer."""

    def __init__(self, peer_id: str, store: Store, power: int = 0, usable: bool = True,
                 latency: float = 0.01, score: int = 0) -> None:
        self.peer_id = peer_id
        self._latency = latency
        self.store = store
        self._power = power
        self._usable = usable
        self._score = score
        self.penalties: list[Event] = []
        self.rewards: list[Event] = []
        self.last_queue_delay = 0.0                 # no pacing of ours in front of it (PacedPeer has some)
        self.hash_requests: list[tuple[int, int]] = []
        self.block_requests: list[tuple[int, int]] = []

    @property
    def height(self) -> int:
        return self.store.tip_height()

    @property
    def latency(self) -> float | None:
        return self._latency

    @property
    def power(self) -> int:
        return self._power

    @property
    def score(self) -> int:
        """The reputation a node would hold for it: the settable base plus the DELTAS of its charges and
        credits (not clamped, credits not capped per window as the peer manager does)."""
        return self._score + sum(DELTAS[e] for e in self.penalties + self.rewards)

    @score.setter
    def score(self, value: int) -> None:
        self._score = value - sum(DELTAS[e] for e in self.penalties + self.rewards)

    def status(self) -> PeerStatus:
        tip = self.store.tip_height()
        tip_hash = self.store.tip_hash()
        return PeerStatus(tip, tip_hash, tip, tip_hash, self.store.genesis_hash(), self._latency)

    def get_status(self) -> defer.Deferred[PeerStatus]:
        return defer.succeed(self.status())

    def hashes(self, start: int, count: int) -> list[bytes]:
        return self.store.block_hashes(start, count)

    def get_block_hashes(self, start: int, count: int) -> defer.Deferred[list[bytes]]:
        self.hash_requests.append((start, count))
        return defer.succeed(self.hashes(start, count))

    def get_blocks(self, start: int, count: int) -> defer.Deferred[list[tuple[Block, CommitCertificate]]]:
        self.block_requests.append((start, count))
        return defer.succeed(self.store.get_blocks(start, count))

    def penalize(self, event: Event) -> None:
        self.penalties.append(event)

    def reward(self, event: Event) -> None:
        self.rewards.append(event)

    def usable(self) -> bool:
        return self._usable


class TimedPeer(StorePeer):
    """An honest StorePeer whose answers come ``latency + per_block * blocks`` seconds of ``clock`` later.

    ``outstanding`` holds the body requests it has not answered (request number -> (start, count)),
    ``delivered`` the heights it served; ``observer`` (if set) is called after either changes. A
    request the node cancels is dropped at once (its timer too), as a closed request would be.
    """

    def __init__(self, peer_id: str, store: Store, clock: Clock, latency: float = 0.05, per_block: float = 0.0,
                 power: int = 0, score: int = 0) -> None:
        super().__init__(peer_id, store, power=power, latency=latency, score=score)
        self.clock: Any = clock                    # a task.Clock (typed loosely: zope interfaces)
        self.per_block = per_block
        self.outstanding: dict[int, tuple[int, int]] = {}
        self.delivered: set[int] = set()
        self.observer: Callable[[], None] | None = None
        self._numbers = itertools.count(1)
        self._credit = 0                            # credits granted (capped per GOOD_WINDOW)
        self._window, self._earned = float("-inf"), 0

    def usable(self) -> bool:
        return self._usable and self.score >= 0

    @property
    def score(self) -> int:
        return self._score + sum(DELTAS[e] for e in self.penalties) + self._credit

    @score.setter
    def score(self, value: int) -> None:
        self._score = value - sum(DELTAS[e] for e in self.penalties) - self._credit

    def reward(self, event: Event) -> None:
        """Recorded; the score gains at most GOOD_PER_WINDOW points per GOOD_WINDOW of the clock."""
        self.rewards.append(event)
        now = self.clock.seconds()
        if now - self._window >= GOOD_WINDOW:
            self._window, self._earned = now, 0
        granted = max(0, min(DELTAS[event], GOOD_PER_WINDOW - self._earned))
        self._earned += granted
        self._credit += granted

    def later(self, delay: float, make: Callable[[], Any], body: tuple[int, int] | None = None) -> defer.Deferred[Any]:
        """A Deferred firing with ``make()`` after ``delay`` seconds; cancelling it drops the request."""
        number = next(self._numbers)

        def cancel(_: defer.Deferred[Any]) -> None:
            if call.active():
                call.cancel()
            self._settled(number)

        d: defer.Deferred[Any] = defer.Deferred(cancel)

        def fire() -> None:
            try:
                value = make()
            except Exception:
                self._settled(number)
                d.errback(Failure())
                return
            if body is not None:
                self.delivered.update(b.height for b, _ in value)
            self._settled(number)
            d.callback(value)

        call = self.clock.callLater(max(delay, 0.0), fire)
        if body is not None:
            self.outstanding[number] = body
            self._changed()
        return d

    def _settled(self, number: int) -> None:
        if self.outstanding.pop(number, None) is not None:
            self._changed()

    def _changed(self) -> None:
        if self.observer is not None:
            self.observer()

    def get_status(self) -> defer.Deferred[PeerStatus]:
        return self.later(self._latency, self.status)

    def get_block_hashes(self, start: int, count: int) -> defer.Deferred[list[bytes]]:
        self.hash_requests.append((start, count))
        return self.later(self._latency, lambda: self.hashes(start, count))

    def serve(self, start: int, count: int) -> Items:
        """The blocks it answers a request for ``count`` blocks from ``start`` with."""
        return self.store.get_blocks(start, count)

    def body_delay(self, start: int, count: int) -> float:
        return self._latency + self.per_block * count

    def get_blocks(self, start: int, count: int) -> defer.Deferred[Items]:
        self.block_requests.append((start, count))
        return self.later(self.body_delay(start, count), lambda: self.serve(start, count), (start, count))


class PacedPeer(TimedPeer):
    """An honest TimedPeer reached through our own request pacing (``PeerConnection.pace``): each request
    leaves only when a GCRA bucket of ``per_minute`` requests (``burst`` at once) allows it, so its answer
    comes that much later; ``last_queue_delay`` says how long the latest request was held back on our side,
    as ``ConnectionPeer`` does. The time a request waits in our own queue is not the peer's slowness.
    """

    def __init__(self, peer_id: str, store: Store, clock: Clock, per_minute: float, burst: int,
                 latency: float = 0.05, per_block: float = 0.0, **kwargs: Any) -> None:
        super().__init__(peer_id, store, clock, latency, per_block, **kwargs)
        self.per_minute = per_minute
        self.burst = burst
        self._tat = 0.0

    def later(self, delay: float, make: Callable[[], Any], body: tuple[int, int] | None = None) -> defer.Deferred[Any]:
        wait, self._tat = gcra(self._tat, self.clock.seconds(), self.per_minute, self.burst)
        self.last_queue_delay = wait
        return super().later(wait + delay, make, body)


def made_up_hash(seed: str, height: int) -> bytes:
    """A hash no certified block has (the same for every peer of one ``seed``: a crowd agreeing on it)."""
    return hashlib.sha256(b"made up %s %d" % (seed.encode(), height)).digest()


class SlowLiar(TimedPeer):
    """Issue 11 finding 1: one peer that throttles sync.

    Its status claims ``claim`` (far above the honest tip); its hash list is the honest one extended with
    made-up hashes up to ``claim``; a request for blocks is answered ``body_delay`` seconds later (default:
    just under the 15 s request timeout) with at most ``blocks_per_answer`` real blocks (1). With
    ``hash_delay`` its hash answers are late too (default: its ``latency``, as an honest peer's).
    """

    def __init__(self, peer_id: str, store: Store, clock: Clock, claim: int = 10_000,
                 body_delay: float = DEFAULT_REQUEST_TIMEOUT - 0.1, blocks_per_answer: int = 1,
                 hash_delay: float | None = None, latency: float = 0.05) -> None:
        super().__init__(peer_id, store, clock, latency=latency)
        self.claim = claim
        self.slow_bodies = body_delay
        self.blocks_per_answer = blocks_per_answer
        self.hash_delay = latency if hash_delay is None else hash_delay

    def status(self) -> PeerStatus:
        made_up = made_up_hash(self.peer_id, self.claim)
        return PeerStatus(self.claim, made_up, self.claim, made_up, self.store.genesis_hash(), self._latency)

    def hashes(self, start: int, count: int) -> list[bytes]:
        real = self.store.block_hashes(start, count)
        top = min(start + count - 1, self.claim)
        return real + [made_up_hash(self.peer_id, h) for h in range(start + len(real), top + 1)]

    def get_block_hashes(self, start: int, count: int) -> defer.Deferred[list[bytes]]:
        self.hash_requests.append((start, count))
        return self.later(self.hash_delay, lambda: self.hashes(start, count))

    def body_delay(self, start: int, count: int) -> float:
        return self.slow_bodies

    def serve(self, start: int, count: int) -> Items:
        return self.store.get_blocks(start, min(count, self.blocks_per_answer))


class SybilPeer(TimedPeer):
    """Issue 11 finding 2: one fresh power-0 identity of a crowd (all of one ``crowd`` agree).

    Claims ``claim``; its hashes are the honest ones below ``diverge_at`` and made up (by ``crowd``) from
    there on; it serves the real blocks below ``diverge_at`` and none of its made-up ones. Low latency:
    it answers first and ranks first by latency.
    """

    def __init__(self, peer_id: str, store: Store, clock: Clock, claim: int, diverge_at: int = 1,
                 crowd: str = "sybil", latency: float = 0.001) -> None:
        super().__init__(peer_id, store, clock, latency=latency)
        self.claim, self.diverge_at, self.crowd = claim, diverge_at, crowd

    def status(self) -> PeerStatus:
        made_up = made_up_hash(self.crowd, self.claim)
        return PeerStatus(self.claim, made_up, self.claim, made_up, self.store.genesis_hash(), self._latency)

    def hashes(self, start: int, count: int) -> list[bytes]:
        top = min(start + count - 1, self.claim)
        real = self.store.block_hashes(start, max(0, min(top + 1, self.diverge_at) - start))
        return real + [made_up_hash(self.crowd, h) for h in range(start + len(real), top + 1)]

    def serve(self, start: int, count: int) -> Items:
        return self.store.get_blocks(start, max(0, min(start + count, self.diverge_at) - start))


class Withholder(TimedPeer):
    """Issue 11 finding 3: votes the honest hashes, but holds back a body request ``withhold(start, count)``
    selects (default: every one), so the chunk it was given blocks the in-order apply: it never answers,
    or with ``delay`` answers the real blocks that many seconds later."""

    def __init__(self, peer_id: str, store: Store, clock: Clock, latency: float = 0.001,
                 withhold: Callable[[int, int], bool] | None = None, delay: float | None = None) -> None:
        super().__init__(peer_id, store, clock, latency=latency)
        self.withhold = withhold
        self.delay = delay

    def get_blocks(self, start: int, count: int) -> defer.Deferred[Items]:
        if self.withhold is not None and not self.withhold(start, count):
            return super().get_blocks(start, count)
        self.block_requests.append((start, count))
        if self.delay is not None:
            return self.later(self.delay, lambda: self.serve(start, count), (start, count))
        return self.later(1e9, lambda: [], (start, count))       # never, in any test's time


class SimSyncer:
    """An empty node of ``spec``'s genesis at ``path``: the production apply and certificate check, its
    StateSyncManager on a ``task.Clock`` (``manager_args`` go to the manager)."""

    def __init__(self, path: str, spec: ChainSpec, clock: Clock | None = None, **manager_args: Any) -> None:
        self.store = Store(path)
        initialize(self.store, spec.genesis)
        self.spec = spec
        self.clock: Any = cast(Any, clock if clock is not None else Clock())    # typed loosely: zope interfaces
        if clock is None:
            self.clock.advance(spec.genesis.genesis_time / 1000 + 10 * 86400)    # blocks lie in the past
        self.batches: list[int] = []
        args: dict[str, Any] = {"batch": 20, "redundancy": 3}
        args.update(manager_args)
        self.manager = StateSyncManager(self.store.tip_height, spec.genesis.hash, self.clock, self.apply,
                                        verify=self.verify, **args)

    def verify(self, block: Block, cert: CommitCertificate) -> str | None:
        return certificate_problem(self.store, self.spec.genesis.chain_id, block, cert)

    def apply(self, items: Items) -> tuple[int, Reason | None]:
        count, error = apply_batch(self.store, self.spec.genesis.params, self.spec.genesis.chain_id, items,
                                   genesis_time_ms=self.spec.genesis.genesis_time)
        self.batches.append(count)
        return count, (error.reason if error else None)

    def sync(self, peers: Sequence[Any], max_events: int = 200_000) -> SyncResult:
        """Run one sync from ``peers``, advancing the clock from one scheduled call to the next."""
        d = defer.Deferred.fromCoroutine(self.manager.sync(list(peers)))
        for _ in range(max_events):                  # bounded: every step fires at least one scheduled call
            if d.called:
                break
            calls = self.clock.getDelayedCalls()
            if not calls:
                break
            self.clock.advance(max(min(c.getTime() for c in calls) - self.clock.seconds(), 0.0))
        out: list[Any] = []
        d.addBoth(out.append)
        if not out:
            raise AssertionError("sync did not finish (no scheduled call left, or max_events reached)")
        if not isinstance(out[0], SyncResult):
            out[0].raiseException()
        return out[0]

    def close(self) -> None:
        self.store.close()


def liar_sync_ratio(workdir: str, blocks: int = 400, latency: float = 0.05, per_block: float = 0.005,
                    spec: ChainSpec | None = None, **liar_args: Any) -> dict[str, Any]:
    """Sync time with 1 liar of 3 peers as a ratio to honest-only (simulated seconds; target <= 1.5).

    Builds a certified chain of ``blocks`` into ``workdir``; an empty node syncs it once from 2 honest
    :class:`TimedPeer` (``latency`` + ``per_block`` seconds per block each answer), once from the same 2
    plus a :class:`SlowLiar` (``liar_args`` go to it), each run in a fresh store on its own clock.
    Returns both times, the ratio, the heights reached, the liar's score and what it was charged, and
    how many body requests went to the honest peers in the liar's run.
    """
    spec = spec if spec is not None else make_genesis(validators=4, chain_id="timecoin-hostile",
                                                      genesis_time=1_700_000_000_000)
    chain = build_chain(os.path.join(workdir, "chain"), spec, blocks)
    try:
        runs: dict[str, Any] = {}
        for name in ("honest", "liar"):
            syncer = SimSyncer(os.path.join(workdir, f"sync-{name}"), spec)
            honest = [TimedPeer(f"honest{i}", chain.store, syncer.clock, latency, per_block) for i in range(2)]
            liar = SlowLiar("liar", chain.store, syncer.clock, latency=latency, **liar_args)
            peers: list[Any] = honest + [liar] if name == "liar" else honest
            result = syncer.sync(peers)
            runs[name] = {"seconds": result.seconds, "height": syncer.store.tip_height(),
                          "honest_body_requests": sum(len(p.block_requests) for p in honest),
                          "liar_score": liar.score, "liar_charged": [e.value for e in liar.penalties]}
            syncer.close()
    finally:
        chain.store.close()
    return {"blocks": blocks, "honest_s": runs["honest"]["seconds"], "liar_s": runs["liar"]["seconds"],
            "ratio": runs["liar"]["seconds"] / runs["honest"]["seconds"], "honest_height": runs["honest"]["height"],
            "liar_run_height": runs["liar"]["height"], "liar_score": runs["liar"]["liar_score"],
            "liar_charged": runs["liar"]["liar_charged"],
            "honest_body_requests": runs["liar"]["honest_body_requests"]}
