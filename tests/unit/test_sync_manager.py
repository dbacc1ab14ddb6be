"""StateSyncManager against honest and misbehaving peers (real LMDB stores, certified chains, task.Clock).

Peers serve real stores built by tests/chaingen.py. A peer serving a forged block (bad certificate),
one serving a different branch, one that stalls and one that lies about its height are each detected
and charged, and the syncing node still reaches the honest tip with the honest hashes.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.task import Clock

from tests.chaingen import ChainBuilder, ChainSpec, build_chain, certify, initialize, make_genesis
from tests.syncpeers import StorePeer
from timecoin.errors import Reason
from timecoin.ledger.block import Block, CommitCertificate
from timecoin.p2p.peers import DELTAS, Event
from timecoin.store import Store
from timecoin.sync.apply import apply_batch, certificate_problem
from timecoin.sync.manager import (
    MAX_WINDOW_ATTEMPTS,
    PEER_RANGES_IN_FLIGHT,
    StateSyncManager,
    SyncResult,
    range_size,
)
from timecoin.sync.peer import PeerStatus

HONEST = 120
GENESIS_TIME = 1_700_000_000_000


@pytest.fixture(scope="module")
def spec() -> ChainSpec:
    return make_genesis(validators=4, chain_id="timecoin-synctest", genesis_time=GENESIS_TIME)


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory, spec: ChainSpec) -> Iterator[ChainBuilder]:
    builder = build_chain(str(tmp_path_factory.mktemp("honest") / "chain"), spec, HONEST, txs_per_block=2)
    yield builder
    builder.store.close()


class ForgingPeer(StorePeer):
    """Serves the honest blocks (so its hashes agree) but with certificates signed by one validator of four."""

    def __init__(self, peer_id: str, store: Store, keys: Any, chain_id: str, from_height: int) -> None:
        super().__init__(peer_id, store)
        self.keys, self.chain_id, self.from_height = keys, chain_id, from_height

    def get_blocks(self, start: int, count: int) -> defer.Deferred[list[tuple[Block, CommitCertificate]]]:
        self.block_requests.append((start, count))
        out = []
        for block, cert in self.store.get_blocks(start, count):
            if block.height >= self.from_height:
                cert = certify(block, self.keys[:1], self.chain_id)
            out.append((block, cert))
        return defer.succeed(out)


class StallingPeer(StorePeer):
    """Answers status, then never answers anything else."""

    def get_block_hashes(self, start: int, count: int) -> defer.Deferred[list[bytes]]:
        self.hash_requests.append((start, count))
        return defer.Deferred()

    def get_blocks(self, start: int, count: int) -> defer.Deferred[list[tuple[Block, CommitCertificate]]]:
        self.block_requests.append((start, count))
        return defer.Deferred()


class HeightLiar(StorePeer):
    """Claims a height far above what it holds (and what anyone can certify)."""

    def status(self) -> PeerStatus:
        real = super().status()
        return PeerStatus(10_000, b"\x42" * 32, 10_000, b"\x42" * 32, real.genesis_hash, 0.001)


class Syncer:
    """An empty node of the same genesis (or ``store``), its manager driven by a task.Clock."""

    def __init__(self, path: Path, spec: ChainSpec, store: Store | None = None, batch: int = 20) -> None:
        if store is None:
            store = Store(str(path))
            initialize(store, spec.genesis)
        self.store = store
        self.spec = spec
        self.clock = Clock()
        self.clock.advance(GENESIS_TIME / 1000 + 10 * 86400)
        self.batches: list[int] = []
        self.forks: list[tuple[str, int, bytes]] = []
        self.manager = StateSyncManager(self.store.tip_height, spec.genesis.hash, self.clock, self.apply,
                                        batch=batch, redundancy=3, request_timeout=15.0)
        # Set as attributes: the certificate check that settles splits, and the fork report.
        self.manager.verify = lambda block, cert: certificate_problem(self.store, spec.genesis.chain_id, block, cert)
        self.manager.on_fork = lambda peer_id, height, their_hash: self.forks.append((peer_id, height, their_hash))

    def apply(self, items: list[tuple[Block, CommitCertificate]]) -> tuple[int, Reason | None]:
        count, error = apply_batch(self.store, self.spec.genesis.params, self.spec.genesis.chain_id, items,
                                   genesis_time_ms=self.spec.genesis.genesis_time)
        self.batches.append(count)
        return count, (error.reason if error else None)

    def sync(self, peers: list[Any], more: list[Any] | None = None) -> SyncResult:
        d = defer.Deferred.fromCoroutine(self.manager.sync(peers, more_peers=(lambda: more) if more else None))
        for _ in range(2_000):                       # bounded: simulated seconds for timeouts to fire
            if d.called:
                break
            self.clock.advance(1.0)
        out: list[Any] = []
        d.addBoth(out.append)
        assert out, "sync did not finish"
        if not isinstance(out[0], SyncResult):
            out[0].raiseException()
        return out[0]


def copy(honest: ChainBuilder, path: Path, upto: int = HONEST) -> Store:
    store = Store(str(path))
    honest.copy_to(store, upto)
    return store


def assert_honest(syncer: Syncer, honest: ChainBuilder, upto: int = HONEST) -> None:
    assert syncer.store.tip_height() == upto
    for h in (1, upto // 2, upto):
        assert syncer.store.block_hash_at(h) == honest.store.block_hash_at(h)
    assert syncer.store.lthash() == honest.store.lthash() if upto == HONEST else True


def test_three_honest_peers_hashes_from_three_bodies_from_one(tmp_path: Path, spec: ChainSpec,
                                                              honest: ChainBuilder) -> None:
    peers = [StorePeer(f"p{i}", copy(honest, tmp_path / f"p{i}")) for i in range(3)]
    syncer = Syncer(tmp_path / "s", spec)
    result = syncer.sync(peers)
    assert_honest(syncer, honest)
    assert result.blocks == HONEST and result.failed_ranges == 0 and not result.penalized
    assert all(p.hash_requests for p in peers)                       # every voter was asked for hashes
    assert sum(c for p in peers for _, c in p.block_requests) == HONEST    # each body fetched exactly once
    assert syncer.batches and max(syncer.batches) == 20               # one write transaction per 20-block range
    assert syncer.manager.progress.height == HONEST and not syncer.manager.progress.running
    # Every peer whose bodies were applied is credited; the peer manager caps the credit per window.
    servers = [p for p in peers if p.block_requests]
    assert servers and all(Event.USEFUL_RESPONSE in p.rewards for p in servers)
    assert not any(p.rewards for p in peers if not p.block_requests)


def test_a_peer_serving_forged_certificates_is_charged_and_left_out(tmp_path: Path, spec: ChainSpec,
                                                                    honest: ChainBuilder) -> None:
    forger = ForgingPeer("forger", copy(honest, tmp_path / "f"), spec.validators, spec.genesis.chain_id, 30)
    peers = [forger, StorePeer("h1", copy(honest, tmp_path / "h1")), StorePeer("h2", copy(honest, tmp_path / "h2"))]
    syncer = Syncer(tmp_path / "s", spec)
    syncer.sync(peers)
    assert_honest(syncer, honest)
    assert Event.FORGED_CERTIFICATE in forger.penalties
    assert not peers[1].penalties and not peers[2].penalties


def test_a_peer_on_a_different_branch_is_outvoted_and_charged(tmp_path: Path, spec: ChainSpec,
                                                              honest: ChainBuilder) -> None:
    branch_store = Store(str(tmp_path / "b"))
    honest.fork(60, branch_store, salt=3, blocks=HONEST - 60)       # certified, but another branch from 61
    branch = StorePeer("branch", branch_store)
    peers = [branch, StorePeer("h1", copy(honest, tmp_path / "h1")), StorePeer("h2", copy(honest, tmp_path / "h2"))]
    syncer = Syncer(tmp_path / "s", spec)
    syncer.sync(peers)
    assert_honest(syncer, honest)
    assert Event.STALE_DATA in branch.penalties
    assert not peers[1].penalties and not peers[2].penalties


def test_a_stalling_peer_times_out_and_the_range_moves_to_others(tmp_path: Path, spec: ChainSpec,
                                                                 honest: ChainBuilder) -> None:
    staller = StallingPeer("staller", copy(honest, tmp_path / "st"))
    peers = [staller, StorePeer("h1", copy(honest, tmp_path / "h1")), StorePeer("h2", copy(honest, tmp_path / "h2"))]
    syncer = Syncer(tmp_path / "s", spec)
    result = syncer.sync(peers)
    assert_honest(syncer, honest)
    # The two others decided the vote: the staller is dropped once late, not at the request timeout.
    assert staller.penalties == [Event.SLOW_RESPONSE]
    assert result.seconds < syncer.manager.request_timeout
    assert not peers[1].penalties and not peers[2].penalties


def test_a_peer_lying_about_its_height_is_charged_and_the_honest_tip_reached(tmp_path: Path, spec: ChainSpec,
                                                                            honest: ChainBuilder) -> None:
    liar = HeightLiar("liar", copy(honest, tmp_path / "l"))
    peers = [liar, StorePeer("h1", copy(honest, tmp_path / "h1")), StorePeer("h2", copy(honest, tmp_path / "h2"))]
    syncer = Syncer(tmp_path / "s", spec)
    result = syncer.sync(peers)
    assert_honest(syncer, honest)
    assert result.target == 10_000 and result.end_height == HONEST       # it aimed high, stopped at the truth
    assert Event.STALE_DATA in liar.penalties
    assert not peers[1].penalties and not peers[2].penalties


def test_peers_of_another_genesis_are_never_synced_from(tmp_path: Path, spec: ChainSpec,
                                                       honest: ChainBuilder) -> None:
    other = make_genesis(validators=4, chain_id="timecoin-synctest", seed=99, genesis_time=GENESIS_TIME)
    stranger = StorePeer("stranger", build_chain(str(tmp_path / "o"), other, 30).store)
    syncer = Syncer(tmp_path / "s", spec)
    result = syncer.sync([stranger])
    assert result.blocks == 0 and syncer.store.tip_height() == 0
    assert not stranger.hash_requests and not stranger.block_requests


def test_best_peer_is_highest_then_lowest_latency(tmp_path: Path, spec: ChainSpec, honest: ChainBuilder) -> None:
    syncer = Syncer(tmp_path / "s", spec)
    low, high = copy(honest, tmp_path / "a", 50), copy(honest, tmp_path / "b")
    peers = [StorePeer("short", low, latency=0.001), StorePeer("slow", high, latency=0.5),
             StorePeer("fast", copy(honest, tmp_path / "c"), latency=0.05)]
    statuses = {p.peer_id: p.status() for p in peers}
    assert syncer.manager.best_peer(peers, statuses).peer_id == "fast"
    assert [p.peer_id for p in syncer.manager.ranked(peers, statuses)] == ["fast", "slow", "short"]


def test_peers_that_connect_during_a_run_join_it(tmp_path: Path, spec: ChainSpec, honest: ChainBuilder) -> None:
    first = StorePeer("first", copy(honest, tmp_path / "a"))
    later = [first] + [StorePeer(f"later{i}", copy(honest, tmp_path / f"l{i}")) for i in range(2)]
    syncer = Syncer(tmp_path / "s", spec)
    syncer.manager.batch = 10
    syncer.sync([first], more=later)
    assert_honest(syncer, honest)
    assert all(p.hash_requests for p in later)                       # the newcomers voted on hashes
    assert all(p.block_requests for p in later)                      # and served bodies


# -- reputation-aware and asynchronous peers -------------------------------------------------------------
class ScoredPeer(StorePeer):
    """A StorePeer with the score the node keeps (the DELTAS table summed): unusable below 0, as a real peer."""

    @property
    def score(self) -> int:
        return sum(DELTAS[e] for e in self.penalties + self.rewards)

    def usable(self) -> bool:
        return self._usable and self.score >= 0


class DelayedPeer(ScoredPeer):
    """Answers every request ``delay`` seconds of ``clock`` later; tracks the blocks it has pending for us."""

    def __init__(self, peer_id: str, store: Store, clock: Clock, delay: float = 0.5, latency: float = 0.01) -> None:
        super().__init__(peer_id, store, latency=latency)
        self.clock, self.delay = clock, delay
        self.pending_blocks = 0
        self.max_pending_blocks = 0
        self.pending_ranges = 0
        self.max_pending_ranges = 0

    def _later(self, value: Any) -> defer.Deferred[Any]:
        return task.deferLater(self.clock, self.delay, lambda: value)

    def get_block_hashes(self, start: int, count: int) -> defer.Deferred[list[bytes]]:
        self.hash_requests.append((start, count))
        return self._later(self.hashes(start, count))

    def serve(self, start: int, count: int) -> list[tuple[Block, CommitCertificate]]:
        return self.store.get_blocks(start, count)

    def get_blocks(self, start: int, count: int) -> defer.Deferred[list[tuple[Block, CommitCertificate]]]:
        self.block_requests.append((start, count))
        self.pending_blocks += count
        self.max_pending_blocks = max(self.max_pending_blocks, self.pending_blocks)
        self.pending_ranges += 1
        self.max_pending_ranges = max(self.max_pending_ranges, self.pending_ranges)

        def done(value: Any) -> Any:
            self.pending_blocks -= count
            self.pending_ranges -= 1
            return value
        return self._later(self.serve(start, count)).addBoth(done)


class DelayedForger(DelayedPeer):
    """Delayed, and its blocks from ``from_height`` on carry certificates signed by one validator of four."""

    def __init__(self, peer_id: str, store: Store, clock: Clock, keys: Any, chain_id: str, from_height: int,
                 delay: float = 0.5) -> None:
        super().__init__(peer_id, store, clock, delay)
        self.keys, self.chain_id, self.from_height = keys, chain_id, from_height

    def serve(self, start: int, count: int) -> list[tuple[Block, CommitCertificate]]:
        return [(b, certify(b, self.keys[:1], self.chain_id) if b.height >= self.from_height else c)
                for b, c in self.store.get_blocks(start, count)]


class BodyStaller(ScoredPeer):
    """Votes the honest hashes at once, but never answers a request for blocks."""

    def get_blocks(self, start: int, count: int) -> defer.Deferred[list[tuple[Block, CommitCertificate]]]:
        self.block_requests.append((start, count))
        return defer.Deferred()


def test_requests_we_cancel_are_never_charged_to_honest_peers(tmp_path: Path, spec: ChainSpec,
                                                               honest: ChainBuilder) -> None:
    syncer = Syncer(tmp_path / "s", spec)
    forger = DelayedForger("forger", copy(honest, tmp_path / "f"), syncer.clock, spec.validators,
                           spec.genesis.chain_id, 30, delay=0.3)
    good = [DelayedPeer(f"h{i}", copy(honest, tmp_path / f"h{i}"), syncer.clock, delay=0.7) for i in range(2)]
    result = syncer.sync([forger, *good])
    assert_honest(syncer, honest)
    assert result.failed_ranges >= 1                                 # a window failed with bodies in flight
    assert Event.FORGED_CERTIFICATE in forger.penalties
    for peer in good:
        assert Event.TIMEOUT not in peer.penalties and peer.score >= 0, (peer.peer_id, peer.penalties)


@pytest.mark.parametrize("branches", ["one forged branch", "two forged branches"])
def test_a_split_vote_asks_more_peers_and_the_honest_tip_is_reached(tmp_path: Path, spec: ChainSpec,
                                                                   honest: ChainBuilder, branches: str) -> None:
    stores = []
    for i in range(1 if branches == "one forged branch" else 2):
        builder = honest.fork(60, Store(str(tmp_path / f"b{i}")), salt=3 + i)
        builder.build(HONEST - 60, signers=[0])                       # forged certificates from 61 on
        stores.append(builder.store)
    # First voters among fresh peers: the same height as the honest peers, but faster.
    liars = [ScoredPeer(f"branch{i}", stores[i % len(stores)], latency=0.001) for i in range(2)]
    good = [ScoredPeer(f"h{i}", copy(honest, tmp_path / f"h{i}")) for i in range(2)]
    syncer = Syncer(tmp_path / "s", spec)
    assert [p.peer_id for p in syncer.manager.voters([*liars, *good], {p.peer_id: p.status()
                                                                       for p in [*liars, *good]}, 1)][:2] == \
        ["branch0", "branch1"]
    syncer.sync([*liars, *good])
    assert_honest(syncer, honest)
    # Voters of the window that settles block 61 are charged; after the first window the peers that served
    # it (better reputation) vote first, so a liar may not be asked again (then nothing it said was applied).
    asked_again = [liar for liar in liars if len(liar.hash_requests) >= 2]
    assert asked_again and all(liar.penalties for liar in asked_again)
    for liar in liars:
        assert set(liar.penalties) <= {Event.FORGED_CERTIFICATE, Event.STALE_DATA}
    assert all(p.penalties == [] for p in good)
    assert len(good[1].hash_requests) >= 1                            # the fourth peer was asked too


def test_a_peer_that_votes_but_stalls_on_bodies_gets_one_chunk_and_leaves_the_window(
        tmp_path: Path, spec: ChainSpec, honest: ChainBuilder) -> None:
    staller = BodyStaller("staller", copy(honest, tmp_path / "st"), latency=0.001)
    good = [ScoredPeer(f"h{i}", copy(honest, tmp_path / f"h{i}")) for i in range(2)]
    syncer = Syncer(tmp_path / "s", spec)
    result = syncer.sync([staller, *good])
    assert_honest(syncer, honest)
    assert len(staller.block_requests) == 1                          # pruned after its first failure
    # Its chunk, late, was asked of another server, which answered first: charged slow, before any timeout.
    assert staller.penalties == [Event.SLOW_RESPONSE] and not staller.usable()
    assert result.seconds < syncer.manager.request_timeout
    assert all(p.penalties == [] for p in good)
    assert any(r[0] == staller.block_requests[0][0] for p in good for r in p.block_requests)   # moved on


def test_at_most_two_ranges_in_flight_per_peer_with_several_ranges_in_flight(tmp_path: Path, spec: ChainSpec,
                                                                             honest: ChainBuilder) -> None:
    # SPEC §6: at most 2 get_blocks ranges in flight per peer (the bound is on ranges, not blocks: a range
    # is one request of the peer's rate limit, answered with as many blocks as fit its response bytes).
    syncer = Syncer(tmp_path / "s", spec, batch=50)                   # the node default: 50 per transaction
    peers = [DelayedPeer(f"h{i}", copy(honest, tmp_path / f"h{i}"), syncer.clock, delay=0.5) for i in range(3)]
    in_flight: list[int] = []
    for p in peers:
        original = p.get_blocks

        def get_blocks(start: int, count: int, original: Any = original) -> Any:
            in_flight.append(sum(q.pending_ranges for q in peers) + 1)
            return original(start, count)
        p.get_blocks = get_blocks  # type: ignore[method-assign]
    result = syncer.sync(peers)
    assert_honest(syncer, honest)
    assert not result.penalized
    assert all(p.max_pending_ranges <= PEER_RANGES_IN_FLIGHT for p in peers)
    assert max(p.max_pending_ranges for p in peers) == PEER_RANGES_IN_FLIGHT      # and the pipeline used them
    size = range_size(HONEST, len(peers))
    assert all(count <= size for p in peers for _, count in p.block_requests)
    assert all(p.block_requests for p in peers)                      # every peer served
    assert max(in_flight) >= 4                                       # several ranges in flight across peers
    assert max(syncer.batches) <= 50                                 # at most sync_batch per transaction
    assert sum(c for p in peers for _, c in p.block_requests) == HONEST


def test_a_synced_block_whose_parent_is_not_our_tip_reports_a_fork(tmp_path: Path, spec: ChainSpec,
                                                                  honest: ChainBuilder) -> None:
    ours = Store(str(tmp_path / "ours"))
    branch = honest.fork(50, ours, salt=3)
    branch.build(10, signers=[0])                                     # we took a forged branch 51..60
    peers = [StorePeer(f"h{i}", copy(honest, tmp_path / f"h{i}")) for i in range(3)]
    syncer = Syncer(tmp_path / "s", spec, store=ours)
    result = syncer.sync(peers)
    assert result.fork_suspected and syncer.store.tip_height() == 60
    assert len(syncer.forks) == 1
    peer_id, height, their_hash = syncer.forks[0]
    assert peer_id in {"h0", "h1", "h2"} and height == 60 and their_hash == honest.store.block_hash_at(60)
    assert sum(len(p.hash_requests) for p in peers) == 3             # one window: the run stopped, no re-plans
    assert all(p.penalties == [] for p in peers)


def test_a_block_whose_parent_is_not_our_tip_is_reported_as_a_fork_without_judging_its_certificate(
        tmp_path: Path, spec: ChainSpec, honest: ChainBuilder) -> None:
    """Our validator set for the peer's next height comes from our chain, not theirs: sync cannot tell a
    forged certificate from one made by a set that diverged after the fork point, so it charges nothing and
    reports the fork; the fork search verifies at the fork point (tests/unit/test_forks.py charges forged
    branches there)."""
    branch = honest.fork(50, Store(str(tmp_path / "b")), salt=3)
    branch.build(HONEST - 50, signers=[0])                            # weak certificates from 51 on
    others = [StorePeer(f"other{i}", branch.store) for i in range(3)]  # agree on their hashes
    syncer = Syncer(tmp_path / "s", spec, store=copy(honest, tmp_path / "ours", 60))
    result = syncer.sync(others)
    assert result.fork_suspected and syncer.forks                    # handed to the fork search
    assert syncer.store.tip_height() == 60                            # nothing applied
    assert not any(Event.FORGED_CERTIFICATE in p.penalties for p in others)


def test_replans_near_the_tip_are_not_failed_attempts(tmp_path: Path, spec: ChainSpec,
                                                      honest: ChainBuilder) -> None:
    peers = [StorePeer(f"p{i}", copy(honest, tmp_path / f"p{i}")) for i in range(3)]
    syncer = Syncer(tmp_path / "s", spec)
    apply = syncer.apply
    moved = [0]

    def consensus_commits_first(items: list[tuple[Block, CommitCertificate]]) -> tuple[int, Reason | None]:
        if moved[0] < 2 * MAX_WINDOW_ATTEMPTS:                       # consensus committed the next height
            moved[0] += 1
            apply(items[:1])
            return 0, Reason.WRONG_HEIGHT
        return apply(items)
    syncer.manager.apply = consensus_commits_first
    result = syncer.sync(peers)
    assert moved[0] == 2 * MAX_WINDOW_ATTEMPTS
    assert_honest(syncer, honest)
    assert result.failed_ranges == 0 and not result.penalized
