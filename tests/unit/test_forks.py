"""Fork search, detection and resolution (timecoin/sync/forks.py, SPEC §7) on real LMDB stores.

Chains come from ``tests/chaingen.py``: real blocks built by the ledger, certificates with real
precommit signatures of a 4-validator genesis (all four sign unless a test picks ``signers``; one
signer of four is a forged certificate), committed with ``Store.commit_block`` (which does not verify
certificates, so a node "fed a wrong branch" can be built). Peers are :class:`StorePeer` -- the
SyncPeer protocol over another store, answering with ``defer.succeed`` -- so every coroutine finishes
synchronously and :func:`run` takes its result without a reactor. Every refusal compares a snapshot
of every database before and after.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure

from tests.chaingen import ChainBuilder, ChainSpec, build_chain, certify, make_genesis
from tests.syncpeers import StorePeer
from timecoin.ledger.block import Block, CommitCertificate, Evidence
from timecoin.ledger.state import validate_block
from timecoin.p2p.peers import Event
from timecoin.store import DB_NAMES, MAX_REORG_DEPTH, Store
from timecoin.sync.forks import (
    CONFLICT_FILE,
    FORK_SEARCH_BATCH,
    ForkOutcome,
    ForkResolver,
    OutcomeKind,
    detect,
    find_fork_point,
    read_conflict_records,
)
from timecoin.sync.peer import BadResponse, PeerStatus

T = TypeVar("T")
GENESIS_TIME = 1_767_225_600_000
FORGED = [0]                              # one signer of four: no quorum


@pytest.fixture(scope="module")
def spec() -> ChainSpec:
    return make_genesis(validators=4, chain_id="timecoin-forktest", genesis_time=GENESIS_TIME)


def power(spec: ChainSpec) -> int:
    return spec.genesis.validators().validators[0].power


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine whose awaits all fire synchronously (defer.succeed peers); return its result."""
    out: list[Any] = []
    defer.Deferred.fromCoroutine(coro).addBoth(out.append)
    assert out, "the coroutine waited for something that never fires synchronously"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def snapshot(store: Store) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every key and value of every database: compared whole to prove nothing was written."""
    return {name: store.items(name) for name in DB_NAMES}


class RewrittenPeer(StorePeer):
    """Serves the store's hashes, but every hash from ``fork_at`` on is replaced: another branch."""

    def __init__(self, peer_id: str, store: Store, fork_at: int) -> None:
        super().__init__(peer_id, store)
        self.fork_at = fork_at

    def hashes(self, start: int, count: int) -> list[bytes]:
        return [h if start + i < self.fork_at else hashlib.sha256(b"other" + h).digest()
                for i, h in enumerate(super().hashes(start, count))]


class BrokenPeer(StorePeer):
    """Answers every hash request with an undecodable response."""

    def get_block_hashes(self, start: int, count: int) -> defer.Deferred[list[bytes]]:
        self.hash_requests.append((start, count))
        return defer.fail(BadResponse(Event.MALFORMED_FRAME, "garbage"))


class Recorder:
    """The resolver's callbacks, recorded."""

    def __init__(self) -> None:
        self.rollbacks: list[int] = []
        self.halts: list[str] = []
        self.evidence: list[Evidence] = []

    def resolver(self, store: Store, spec: ChainSpec, max_reorg_depth: int = MAX_REORG_DEPTH) -> ForkResolver:
        return ForkResolver(store, spec.genesis.chain_id, max_reorg_depth, on_rollback=self.rollbacks.append,
                            on_halt=self.halts.append, on_evidence=self.evidence.append)


class Chains:
    """Stores under one tmp dir, closed at the end of the test."""

    def __init__(self, root: str, spec: ChainSpec) -> None:
        self.root = root
        self.spec = spec
        self.stores: list[Store] = []

    def store(self, name: str) -> Store:
        s = Store(os.path.join(self.root, name))
        self.stores.append(s)
        return s

    def honest(self, name: str, blocks: int) -> ChainBuilder:
        builder = build_chain(os.path.join(self.root, name), self.spec, blocks)
        self.stores.append(builder.store)
        return builder

    def branch(self, base: ChainBuilder, name: str, common: int, blocks: int,
               signers: list[int] | None = None, salt: int = 1) -> ChainBuilder:
        """``base`` up to ``common``, then ``blocks`` of another branch (fork point ``common + 1``)."""
        b = base.fork(common, self.store(name), salt=salt)
        b.build(blocks, signers=signers)
        return b

    def close(self) -> None:
        for s in self.stores:
            s.close()


@pytest.fixture
def chains(tmp_path: os.PathLike[str], spec: ChainSpec) -> Iterator[Chains]:
    c = Chains(str(tmp_path), spec)
    yield c
    c.close()


# -- find_fork_point -----------------------------------------------------------------------------------
N = 64
SMALL_BATCH = 4


@pytest.fixture(scope="module")
def honest64(tmp_path_factory: pytest.TempPathFactory, spec: ChainSpec) -> Iterator[ChainBuilder]:
    builder = build_chain(str(tmp_path_factory.mktemp("honest64") / "chain"), spec, N)
    yield builder
    builder.store.close()


def bisection_bound(span: int, batch: int) -> int:
    """Round trips of the windowed binary search: one per halving down to one window, plus that window."""
    return max(0, math.ceil(math.log2(span / batch))) + 1


@pytest.mark.parametrize("fork_at", [1, 2, 33, 47, N])
def test_fork_point_found_at_its_height_in_log_round_trips(chains: Chains, honest64: ChainBuilder,
                                                           fork_at: int) -> None:
    other = chains.branch(honest64, "other", fork_at - 1, N - fork_at + 1)
    assert other.store.tip_height() == N
    assert other.store.block_hash_at(fork_at - 1) == honest64.store.block_hash_at(fork_at - 1)
    assert other.store.block_hash_at(fork_at) != honest64.store.block_hash_at(fork_at)
    peer = StorePeer("p", other.store)
    assert run(find_fork_point(honest64.store, peer, 1, N, batch=SMALL_BATCH)) == fork_at
    assert 1 <= len(peer.hash_requests) <= bisection_bound(N, SMALL_BATCH) < N // SMALL_BATCH
    assert all(count <= SMALL_BATCH for _, count in peer.hash_requests)
    # The default batch covers the whole range: one request for the lot.
    peer.hash_requests.clear()
    assert run(find_fork_point(honest64.store, peer, 1, N)) == fork_at
    assert peer.hash_requests == [(1, N)]
    # And the search is symmetric: the peer's view of us finds the same height.
    assert run(find_fork_point(other.store, StorePeer("q", honest64.store), 1, N, batch=SMALL_BATCH)) == fork_at
    assert peer.penalties == []


def test_no_fork_point_when_the_chains_agree(honest64: ChainBuilder) -> None:
    peer = StorePeer("same", honest64.store)
    assert run(find_fork_point(honest64.store, peer, 1, N, batch=SMALL_BATCH)) is None
    assert len(peer.hash_requests) <= bisection_bound(N, SMALL_BATCH)
    assert run(find_fork_point(honest64.store, peer, 10, 5)) is None     # empty range: no request
    assert len(peer.hash_requests) <= bisection_bound(N, SMALL_BATCH)
    # A sub-range starting above the fork point reports its own start (agreement below is assumed).
    rewritten = RewrittenPeer("rw", honest64.store, 20)
    assert run(find_fork_point(honest64.store, rewritten, 30, N, batch=SMALL_BATCH)) == 30
    assert run(find_fork_point(honest64.store, rewritten, 1, 19, batch=SMALL_BATCH)) is None
    assert peer.penalties == rewritten.penalties == []


def test_a_peer_short_of_the_heights_it_claimed_is_charged_stale_data(chains: Chains,
                                                                      honest64: ChainBuilder) -> None:
    short = chains.branch(honest64, "short", 40, 0)          # the same chain, only 40 blocks
    peer = StorePeer("short", short.store)
    assert run(find_fork_point(honest64.store, peer, 1, N, batch=SMALL_BATCH)) is None
    assert peer.penalties == [Event.STALE_DATA]
    diverged = chains.branch(honest64, "diverged", 30, 5)    # 35 blocks, differing from 31
    peer = StorePeer("diverged", diverged.store)
    assert run(find_fork_point(honest64.store, peer, 1, N, batch=SMALL_BATCH)) == 31
    assert len(peer.hash_requests) <= bisection_bound(N, SMALL_BATCH) + 1


def test_failed_requests_propagate_to_the_caller(honest64: ChainBuilder) -> None:
    with pytest.raises(BadResponse):
        run(find_fork_point(honest64.store, BrokenPeer("broken", honest64.store), 1, N))


# -- the long chain: a forged branch 1,008 blocks deep ------------------------------------------------
LONG = 1_010
LONG_COMMON = 2                                               # fork point 3, depth 1,008 > 1,000


@pytest.fixture(scope="module")
def long_chains(tmp_path_factory: pytest.TempPathFactory, spec: ChainSpec) -> Iterator[tuple[Store, Store]]:
    """(ours, honest): ours is fed a branch with forged certificates from height 3 to 1,010."""
    root = tmp_path_factory.mktemp("long")
    honest = build_chain(str(root / "honest"), spec, LONG_COMMON)
    ours = honest.fork(LONG_COMMON, Store(str(root / "ours")), salt=1)
    ours.build(LONG - LONG_COMMON, signers=FORGED)
    honest.build(5)
    yield ours.store, honest.store
    ours.store.close()
    honest.store.close()


@pytest.mark.parametrize("fork_at", [1, 2, 505, 777, LONG - 1, LONG])
@pytest.mark.parametrize("batch", [8, FORK_SEARCH_BATCH])
def test_fork_search_over_a_thousand_heights_is_logarithmic(long_chains: tuple[Store, Store], fork_at: int,
                                                            batch: int) -> None:
    ours, _ = long_chains
    peer = RewrittenPeer("rw", ours, fork_at)
    assert run(find_fork_point(ours, peer, 1, LONG, batch=batch)) == fork_at
    assert len(peer.hash_requests) <= bisection_bound(LONG, batch)
    assert sum(count for _, count in peer.hash_requests) <= batch * bisection_bound(LONG, batch)


def test_fork_deeper_than_the_default_max_reorg_depth_halts_with_the_store_untouched(
        long_chains: tuple[Store, Store], spec: ChainSpec) -> None:
    ours, honest = long_chains
    peers = [StorePeer(f"h{i}", honest, power(spec)) for i in range(3)]
    assert run(find_fork_point(ours, peers[0], 1, honest.tip_height())) == LONG_COMMON + 1
    before = snapshot(ours)
    rec = Recorder()
    outcome = run(rec.resolver(ours, spec).resolve(peers, LONG_COMMON + 1))
    assert outcome.kind is OutcomeKind.HALTED and outcome.height == 3 and outcome.new_tip is None
    assert rec.halts == [outcome.detail] and rec.rollbacks == [] and rec.evidence == []
    assert outcome.detail.startswith("fork at 3 is 1008 blocks deep, above max_reorg_depth=1000; "
                                     "block application halted, operator action needed")
    assert snapshot(ours) == before and ours.tip_height() == LONG
    assert all(p.penalties == [] for p in peers)


# -- resolution -----------------------------------------------------------------------------------------
TIP = 12
FORK = 6


def test_forged_branch_is_charged_and_ours_kept(chains: Chains, spec: ChainSpec) -> None:
    ours = chains.honest("ours", TIP)
    honest = chains.honest("honest", TIP)
    forged = chains.branch(ours, "forged", FORK - 1, TIP - FORK + 1, signers=FORGED)
    forger = StorePeer("forger", forged.store, power(spec))
    friends = [StorePeer(f"h{i}", honest.store, power(spec)) for i in range(2)]
    assert run(find_fork_point(ours.store, forger, 1, TIP)) == FORK
    before = snapshot(ours.store)
    rec = Recorder()
    outcome = run(rec.resolver(ours.store, spec).resolve([forger, *friends], FORK))
    assert outcome.kind is OutcomeKind.OURS_KEPT and outcome.height == FORK and outcome.new_tip is None
    assert forger.penalties == [Event.FORGED_CERTIFICATE]
    assert forger.block_requests == [(FORK, 1)]
    assert all(p.penalties == [] and p.block_requests == [] for p in friends)
    assert "forger (forged certificate: signers hold" in outcome.detail
    assert snapshot(ours.store) == before
    assert rec.rollbacks == rec.halts == [] and rec.evidence == []


def test_every_backer_of_a_forged_hash_is_asked_and_charged(chains: Chains, spec: ChainSpec) -> None:
    ours = chains.honest("ours", TIP)
    forged = chains.branch(ours, "forged", FORK - 1, 1, signers=FORGED)
    forgers = [StorePeer(f"f{i}", forged.store, power(spec)) for i in range(3)]
    outcome = run(Recorder().resolver(ours.store, spec).resolve(forgers, FORK))
    assert outcome.kind is OutcomeKind.OURS_KEPT
    assert [p.penalties for p in forgers] == [[Event.FORGED_CERTIFICATE]] * 3


def fed_a_wrong_branch(chains: Chains, depth_above_fork: int = TIP - FORK) -> tuple[ChainBuilder, ChainBuilder]:
    """(ours, honest): ours took a forged branch from FORK on; honest is the certified chain."""
    honest = chains.honest("honest", TIP)
    ours = chains.branch(honest, "ours", FORK - 1, depth_above_fork + 1, signers=FORGED)
    return ours, honest


def test_our_uncertified_branch_is_rolled_back_and_the_honest_chain_resyncs(chains: Chains,
                                                                           spec: ChainSpec) -> None:
    ours, honest = fed_a_wrong_branch(chains)
    peers = [StorePeer(f"h{i}", honest.store, power(spec)) for i in range(3)]
    broken = BrokenPeer("broken", honest.store, power(spec))
    idle = StorePeer("idle", honest.store, power(spec), usable=False)
    assert run(find_fork_point(ours.store, peers[0], 1, TIP)) == FORK
    rec = Recorder()
    outcome = run(rec.resolver(ours.store, spec).resolve([*peers, broken, idle], FORK))
    assert outcome.kind is OutcomeKind.ROLLED_BACK
    assert outcome.height == FORK and outcome.new_tip == FORK - 1 and rec.rollbacks == [FORK - 1]
    assert rec.halts == [] and rec.evidence == []
    assert ours.store.tip_height() == FORK - 1
    assert ours.store.tip_hash() == honest.store.block_hash_at(FORK - 1)
    assert ours.store.get_block(FORK) is None and ours.store.get_certificate(FORK) is None
    assert broken.penalties == [Event.MALFORMED_FRAME]
    assert idle.hash_requests == [] and all(p.penalties == [] for p in peers)
    assert sum(len(p.block_requests) for p in peers) == 1           # one block per distinct hash
    # The rolled-back state is exact: the honest blocks apply on it and reproduce the honest state.
    for block, cert in honest.store.get_blocks(FORK, TIP):
        prev = ours.store.get_block(block.height - 1)
        assert prev is not None
        result = validate_block(ours.store, spec.genesis.params, block, ours.store.tip_hash(), prev.header.timestamp)
        ours.store.commit_block(block, cert, result)
    assert ours.store.tip_hash() == honest.store.tip_hash()
    assert ours.store.lthash() == honest.store.lthash()


@pytest.mark.parametrize(("max_depth", "kind"), [(7, OutcomeKind.ROLLED_BACK), (6, OutcomeKind.HALTED),
                                                 (5, OutcomeKind.HALTED)])
def test_rollback_depth_limit(chains: Chains, spec: ChainSpec, max_depth: int, kind: OutcomeKind) -> None:
    ours, honest = fed_a_wrong_branch(chains)                       # tip 12, fork 6: depth 12 - 5 = 7
    peers = [StorePeer(f"h{i}", honest.store, power(spec)) for i in range(3)]
    before = snapshot(ours.store)
    rec = Recorder()
    outcome = run(rec.resolver(ours.store, spec, max_reorg_depth=max_depth).resolve(peers, FORK))
    assert outcome.kind is kind
    if kind is OutcomeKind.ROLLED_BACK:
        assert ours.store.tip_height() == FORK - 1 and rec.rollbacks == [FORK - 1] and rec.halts == []
    else:
        assert snapshot(ours.store) == before
        assert rec.rollbacks == [] and rec.halts == [outcome.detail]
        assert outcome.detail.startswith(f"fork at {FORK} is 7 blocks deep, above max_reorg_depth={max_depth}; "
                                         "block application halted, operator action needed: ")
        assert "has no valid certificate" in outcome.detail and "re-sync" in outcome.detail


def test_pruned_undo_records_halt_instead_of_half_rolling_back(chains: Chains, spec: ChainSpec) -> None:
    honest = chains.honest("honest", TIP)
    ours = honest.fork(FORK - 1, Store(os.path.join(chains.root, "ours"), undo_depth=3), salt=1)
    chains.stores.append(ours.store)
    ours.build(TIP - FORK + 1, signers=FORGED)
    before = snapshot(ours.store)
    rec = Recorder()
    outcome = run(rec.resolver(ours.store, spec).resolve([StorePeer("h", honest.store, power(spec))], FORK))
    assert outcome.kind is OutcomeKind.HALTED and "undo record" in outcome.detail
    assert rec.halts == [outcome.detail] and snapshot(ours.store) == before


@pytest.mark.parametrize(("powers", "kind"), [
    ((3, 1, 0), OutcomeKind.ROLLED_BACK),     # 3 of 4 power on the certified branch: >= 2/3
    ((1, 1, 0), OutcomeKind.UNDECIDED),       # 1 of 2: not enough
    ((2, 1, 0), OutcomeKind.ROLLED_BACK),     # exactly 2/3
    ((1, 3, 0), OutcomeKind.UNDECIDED),       # the uncertified branch holds the stake: still not ours to keep
    ((0, 0, 0), OutcomeKind.ROLLED_BACK),     # no power anywhere: one peer one vote -> 2 of 3
])
def test_support_is_weighted_by_stake(chains: Chains, spec: ChainSpec, powers: tuple[int, int, int],
                                      kind: OutcomeKind) -> None:
    ours, honest = fed_a_wrong_branch(chains)
    p = power(spec)
    certified = StorePeer("certified", honest.store, powers[0] * p)
    wrong = StorePeer("wrong", ours.store, powers[1] * p)           # backs our uncertified block
    observer = StorePeer("observer", honest.store, powers[2] * p)
    before = snapshot(ours.store)
    rec = Recorder()
    outcome = run(rec.resolver(ours.store, spec).resolve([certified, wrong, observer], FORK))
    assert outcome.kind is kind
    assert certified.penalties == wrong.penalties == observer.penalties == []   # a minority is not charged
    if kind is OutcomeKind.ROLLED_BACK:
        assert ours.store.tip_hash() == honest.store.block_hash_at(FORK - 1)
    else:
        assert snapshot(ours.store) == before and rec.rollbacks == rec.halts == []
        assert "no certified branch has >= 2/3" in outcome.detail and "certified" in outcome.detail


def test_uncertified_ours_and_no_competitor_is_undecided(chains: Chains, spec: ChainSpec) -> None:
    ours, _ = fed_a_wrong_branch(chains)
    same = StorePeer("same", ours.store, power(spec))
    outcome = run(Recorder().resolver(ours.store, spec).resolve([same], FORK))
    assert outcome.kind is OutcomeKind.UNDECIDED and ours.store.tip_height() == TIP


def check_equivocation(outcome: ForkOutcome, rec: Recorder, spec: ChainSpec, signers: set[bytes]) -> None:
    assert outcome.kind is OutcomeKind.CONFLICTING_CERTIFICATES and outcome.height == FORK
    assert rec.evidence == outcome.evidence and rec.halts == [outcome.detail] and rec.rollbacks == []
    vs = spec.genesis.validators()
    assert {ev.validator for ev in outcome.evidence} == signers
    for ev in outcome.evidence:
        ev.verify(vs, spec.genesis.chain_id)                     # real, admissible duplicate-vote evidence
        assert ev.height == FORK and ev.vote_a.round == ev.vote_b.round == 0
    assert outcome.detail.startswith(f"conflicting commit certificates at height {FORK}: ")


def test_two_valid_certificates_yield_evidence_and_halt_without_touching_the_store(chains: Chains,
                                                                                  spec: ChainSpec) -> None:
    ours = chains.honest("ours", TIP)                             # every block signed by all four
    other = chains.branch(ours, "other", FORK - 1, TIP - FORK + 1)  # ... and so is every block of this one
    peers = [StorePeer(f"o{i}", other.store, power(spec)) for i in range(3)]
    before = snapshot(ours.store)
    rec = Recorder()
    outcome = run(rec.resolver(ours.store, spec).resolve(peers, FORK))
    check_equivocation(outcome, rec, spec, {k.address for k in spec.validators})
    assert len(outcome.evidence) == 4
    for k in spec.validators:
        assert k.address.hex() in outcome.detail
    assert snapshot(ours.store) == before
    assert all(p.penalties == [] for p in peers)


def test_a_single_conflicting_certificate_is_enough_and_only_double_signers_are_named(chains: Chains,
                                                                                     spec: ChainSpec) -> None:
    ours = chains.honest("ours", TIP)
    other = ours.fork(FORK - 1, chains.store("other"), salt=1)
    other.build(1, signers=[1, 2, 3])                              # 3 of 4: a quorum; validator 0 did not sign
    minority = StorePeer("minority", other.store, power(spec))
    majority = [StorePeer(f"h{i}", ours.store, power(spec)) for i in range(5)]
    rec = Recorder()
    before = snapshot(ours.store)
    outcome = run(rec.resolver(ours.store, spec).resolve([minority, *majority], FORK))
    check_equivocation(outcome, rec, spec, {k.address for k in spec.validators[1:]})
    assert spec.validators[0].address.hex() not in outcome.detail
    assert snapshot(ours.store) == before


# -- detection ------------------------------------------------------------------------------------------
def test_detect_reports_forked_peers_with_their_fork_heights(chains: Chains, spec: ChainSpec) -> None:
    ours = chains.honest("ours", TIP)
    same = StorePeer("same", ours.store)
    behind = StorePeer("behind", chains.branch(ours, "behind", 8, 0).store)
    forked = StorePeer("forked", chains.branch(ours, "forked", FORK - 1, TIP - FORK + 1).store)
    ahead_store = chains.store("ahead")
    ahead_builder = ours.fork(TIP, ahead_store, salt=2)
    ahead_builder.build(4)
    ahead = StorePeer("ahead", ahead_store)                        # our chain plus 4 blocks
    ahead_forked = StorePeer("ahead_forked", chains.branch(ours, "ahead_forked", 9, 7).store)   # 16 blocks
    stale = StorePeer("stale", ours.store)                          # status lies, hashes agree
    other_net = StorePeer("other_net", chains.branch(ours, "other_net", 0, 3).store)
    idle = StorePeer("idle", chains.branch(ours, "idle", 2, 3).store, usable=False)
    peers = [same, behind, forked, ahead, ahead_forked, stale, other_net, idle]
    statuses = {p.peer_id: p.status() for p in peers}
    statuses["stale"] = PeerStatus(TIP, bytes(32), TIP, bytes(32), ours.store.genesis_hash(), 0.01)
    statuses["other_net"] = PeerStatus(3, bytes(32), 3, bytes(32), hashlib.sha256(b"x").digest(), 0.01)
    found = run(detect(ours.store, peers, statuses))
    assert sorted((p.peer_id, h) for p, h in found) == [("ahead_forked", 10), ("forked", FORK)]
    assert ahead.hash_requests == [(TIP, 1)] and same.hash_requests == behind.hash_requests == []
    assert other_net.hash_requests == idle.hash_requests == []
    assert all(p.penalties == [] for p in peers)
    # Detection and resolution together: the certified forked peer proves an equivocation at 6.
    rec = Recorder()
    outcome = run(rec.resolver(ours.store, spec).resolve(peers, FORK))
    assert outcome.kind is OutcomeKind.CONFLICTING_CERTIFICATES


def test_detect_charges_a_peer_whose_search_fails(chains: Chains, spec: ChainSpec) -> None:
    ours = chains.honest("ours", TIP)
    forked = chains.branch(ours, "forked", 3, 9)
    broken = BrokenPeer("broken", forked.store)
    found = run(detect(ours.store, [broken], {"broken": broken.status()}))
    assert found == [] and broken.penalties == [Event.MALFORMED_FRAME]


class RecertifiedPeer(StorePeer):
    """Serves its store's blocks, but the one at ``height`` with a certificate of all four in ``round_``."""

    def __init__(self, peer_id: str, store: Store, spec: ChainSpec, height: int, round_: int) -> None:
        super().__init__(peer_id, store, power(spec))
        self.spec, self.at, self.round = spec, height, round_

    def get_blocks(self, start: int, count: int) -> defer.Deferred[list[tuple[Block, CommitCertificate]]]:
        self.block_requests.append((start, count))
        return defer.succeed([(b, certify(b, self.spec.validators, self.spec.genesis.chain_id, self.round)
                               if b.height == self.at else c) for b, c in self.store.get_blocks(start, count)])


def test_conflicting_certificates_of_different_rounds_name_the_amnesia_signers_and_are_recorded(
        chains: Chains, spec: ChainSpec) -> None:
    ours = chains.honest("ours", TIP)                                # round-0 certificates by all four
    other = chains.branch(ours, "other", FORK - 1, TIP - FORK + 1)
    peers = [RecertifiedPeer(f"o{i}", other.store, spec, FORK, 1) for i in range(3)]   # ... theirs in round 1
    record_path = os.path.join(chains.root, CONFLICT_FILE)
    before = snapshot(ours.store)
    rec = Recorder()
    resolver = ForkResolver(ours.store, spec.genesis.chain_id, on_rollback=rec.rollbacks.append,
                            on_halt=rec.halts.append, on_evidence=rec.evidence.append, record_path=record_path)
    outcome = run(resolver.resolve(peers, FORK))
    assert outcome.kind is OutcomeKind.CONFLICTING_CERTIFICATES and outcome.height == FORK
    assert outcome.evidence == [] and rec.evidence == []             # no same-round duplicate vote to prove
    signers = sorted(k.address for k in spec.validators)
    assert outcome.amnesia == signers
    assert rec.halts == [outcome.detail] and rec.rollbacks == [] and snapshot(ours.store) == before
    assert "amnesia" in outcome.detail and record_path in outcome.detail
    for k in spec.validators:
        assert k.address.hex() in outcome.detail
    # The record survives a restart: a fresh reader finds both certificates and the names.
    records = read_conflict_records(record_path)
    assert len(records) == 1
    record = records[0]
    assert record["height"] == FORK and record["amnesia"] == [a.hex() for a in signers]
    assert record["equivocators"] == []
    our_cert = ours.store.get_certificate(FORK)
    assert our_cert is not None and record["ours"]["certificate"] == our_cert.encoded.hex()
    assert record["ours"]["round"] == 0
    [theirs] = record["theirs"]
    their_block = other.store.get_block(FORK)
    assert their_block is not None
    their_cert = certify(their_block, spec.validators, spec.genesis.chain_id, 1)
    assert theirs == {"block_hash": their_block.hash.hex(), "round": 1, "kind": "amnesia",
                      "validators": [a.hex() for a in signers], "certificate": their_cert.encoded.hex()}
    # A second conflict is appended, never overwriting the first.
    run(resolver.resolve(peers, FORK))
    assert len(read_conflict_records(record_path)) == 2


def test_same_round_conflicts_are_recorded_with_their_equivocators(chains: Chains, spec: ChainSpec) -> None:
    ours = chains.honest("ours", TIP)
    other = chains.branch(ours, "other", FORK - 1, TIP - FORK + 1)
    record_path = os.path.join(chains.root, CONFLICT_FILE)
    resolver = ForkResolver(ours.store, spec.genesis.chain_id, record_path=record_path)
    outcome = run(resolver.resolve([StorePeer("o", other.store, power(spec))], FORK))
    assert outcome.kind is OutcomeKind.CONFLICTING_CERTIFICATES and len(outcome.evidence) == 4
    [record] = read_conflict_records(record_path)
    assert record["equivocators"] == sorted(k.address.hex() for k in spec.validators) and record["amnesia"] == []
    assert record["theirs"][0]["kind"] == "equivocation"
