"""Sync against hostile peers (issue 11, SYNC findings 1-3): real LMDB stores, certified chains, task.Clock.

Peers are the SyncPeers of ``timecoin/sim/syncpeers.py`` answering through ``clock.callLater``; the
syncing node (``SimSyncer``) runs the production apply and certificate check, and its clock jumps from
one scheduled call to the next, so times are simulated seconds.

1. A liar claiming a huge height, extending the honest hashes with made-up ones and serving one block
   per request (late, or at once) loses its work to the honest peers and its standing, and the run
   takes at most 1.5x the honest-only time.
2. A crowd of fresh power-0 identities agreeing on made-up hashes cannot outvote a validator: the run
   reaches the honest tip and the Sybils that voted are charged; Sybils faster than the validator
   cannot get it dropped from the vote or charged into unusability either.
3. A backer withholding the chunk at the head of the in-order apply cannot make the node hold more
   received-but-unapplied blocks than the in-flight bound (``max_ranges_in_flight`` ranges).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaingen import ChainBuilder, ChainSpec, build_chain, make_genesis
from tests.syncpeers import PacedPeer, SimSyncer, SlowLiar, SybilPeer, TimedPeer, Withholder
from timecoin.p2p.peers import Event
from timecoin.sync.manager import DEFAULT_REQUEST_TIMEOUT, HEDGE_MIN_S, range_size

BLOCKS = 400
LATENCY = 0.05                     # seconds an honest answer takes, plus PER_BLOCK per block served
PER_BLOCK = 0.005
GENESIS_TIME = 1_700_000_000_000
IN_FLIGHT = 3                      # ranges in flight or held (the default 8 would hold this whole chain)


@pytest.fixture(scope="module")
def spec() -> ChainSpec:
    return make_genesis(validators=4, chain_id="timecoin-hostile", genesis_time=GENESIS_TIME)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, spec: ChainSpec) -> Iterator[ChainBuilder]:
    builder = build_chain(str(tmp_path_factory.mktemp("hostile") / "chain"), spec, BLOCKS)
    yield builder
    builder.store.close()


def syncer_at(path: Path, spec: ChainSpec, **args: Any) -> SimSyncer:
    return SimSyncer(str(path), spec, request_timeout=DEFAULT_REQUEST_TIMEOUT, **args)


def honest_peers(chain: ChainBuilder, syncer: SimSyncer, n: int = 2, **kwargs: Any) -> list[TimedPeer]:
    return [TimedPeer(f"honest{i}", chain.store, syncer.clock, LATENCY, PER_BLOCK, **kwargs) for i in range(n)]


def assert_honest_tip(syncer: SimSyncer, chain: ChainBuilder) -> None:
    assert syncer.store.tip_height() == BLOCKS
    for h in (1, BLOCKS // 2, BLOCKS):
        assert syncer.store.block_hash_at(h) == chain.store.block_hash_at(h)


def honest_only_seconds(tmp_path: Path, spec: ChainSpec, chain: ChainBuilder, n: int = 2) -> float:
    syncer = syncer_at(tmp_path / "honest-only", spec)
    result = syncer.sync(honest_peers(chain, syncer, n))
    assert_honest_tip(syncer, chain)
    syncer.close()
    return result.seconds


# -- 1. one peer throttles sync ------------------------------------------------------------------------
LIARS = {
    "late single blocks": {},                                            # 1 block per request, at 14.9 s
    "prompt single blocks": {"body_delay": LATENCY},                     # 1 block per request, at once
    "late hashes too": {"hash_delay": DEFAULT_REQUEST_TIMEOUT - 0.1},   # and its vote comes at 14.9 s
}


@pytest.mark.parametrize("kind", list(LIARS))
def test_a_liar_extending_the_hashes_and_serving_one_block_at_a_time_loses_its_work_and_standing(
        tmp_path: Path, spec: ChainSpec, chain: ChainBuilder, kind: str) -> None:
    base = honest_only_seconds(tmp_path, spec, chain)
    syncer = syncer_at(tmp_path / "s", spec)
    honest = honest_peers(chain, syncer)
    liar = SlowLiar("liar", chain.store, syncer.clock, latency=LATENCY / 2, **LIARS[kind])   # ranked first
    result = syncer.sync([liar, *honest])
    assert_honest_tip(syncer, chain)
    ratio = result.seconds / base
    assert ratio <= 1.5, f"{kind}: {result.seconds:.2f} s with the liar, {base:.2f} s honest-only ({ratio:.1f}x)"
    # A height only the liar vouched for (above the honest tip) was never accepted: never asked of anyone.
    assert all(s + n - 1 <= BLOCKS for p in [liar, *honest] for s, n in p.block_requests)
    assert all(p.block_requests for p in honest)                     # the honest peers served bodies
    assert Event.SLOW_RESPONSE in liar.penalties and liar.score < 0, (liar.penalties, liar.rewards)
    assert not any(p.penalties for p in honest)


# -- 2. the hash vote counts trust, not identities -----------------------------------------------------
@pytest.mark.parametrize("diverge_at", [1, BLOCKS // 2])
def test_a_sybil_crowd_cannot_outvote_a_validator(tmp_path: Path, spec: ChainSpec, chain: ChainBuilder,
                                                  diverge_at: int) -> None:
    alone = honest_only_seconds(tmp_path, spec, chain, 1)           # from one honest peer alone
    syncer = syncer_at(tmp_path / "s", spec)
    observer = TimedPeer("observer", chain.store, syncer.clock, LATENCY, PER_BLOCK)
    validator = TimedPeer("validator", chain.store, syncer.clock, LATENCY, PER_BLOCK, power=10)
    sybils = [SybilPeer(f"sybil{i}", chain.store, syncer.clock, claim=BLOCKS + 100, diverge_at=diverge_at)
              for i in range(18)]
    result = syncer.sync([*sybils, observer, validator])
    assert_honest_tip(syncer, chain)
    assert result.failed_ranges == 0
    # No stall: at worst the validator serves every body (the rest of the committee were Sybils).
    assert result.seconds <= 1.5 * alone, (result.seconds, alone)
    assert validator.hash_requests                                   # the validator always votes
    voters = [s for s in sybils if s.hash_requests]
    assert voters and all(s.penalties for s in voters)               # made-up hashes were charged
    assert not validator.penalties and not observer.penalties


def test_sybils_faster_than_a_validator_cannot_get_it_dropped_from_the_vote(tmp_path: Path, spec: ChainSpec,
                                                                           chain: ChainBuilder) -> None:
    """The Sybils serve the real blocks below 200, far faster than the validator (it answers in 0.3 s):
    its answers are waited for, and being outpaced costs it no standing, so it still anchors the vote
    on their made-up hashes from 200 on."""
    alone = honest_only_seconds(tmp_path, spec, chain, 1)
    syncer = syncer_at(tmp_path / "s", spec)
    validator = TimedPeer("validator", chain.store, syncer.clock, 0.3, PER_BLOCK, power=10)
    sybils = [SybilPeer(f"sybil{i}", chain.store, syncer.clock, claim=BLOCKS + 100, diverge_at=BLOCKS // 2)
              for i in range(18)]
    result = syncer.sync([*sybils, validator])
    assert_honest_tip(syncer, chain)
    assert not validator.penalties and validator.usable()
    assert result.failed_ranges == 0
    assert result.seconds <= 3 * alone, (result.seconds, alone)


# -- 3. the reorder buffer is bounded by the in-flight limit ---------------------------------------------
WITHHOLDERS = {
    # never answers: its chunk is asked of another server once late, and it is charged
    "never answers": (None, LATENCY, PER_BLOCK),
    # answers the real blocks under the lateness floor (never hedged), while the others serve at once
    "slow, never late": (0.8 * HEDGE_MIN_S, 0.001, 0.0),
}


@pytest.mark.parametrize("kind", list(WITHHOLDERS))
def test_a_backer_withholding_the_head_chunk_cannot_grow_the_reorder_buffer(tmp_path: Path, spec: ChainSpec,
                                                                           chain: ChainBuilder, kind: str) -> None:
    delay, latency, per_block = WITHHOLDERS[kind]
    syncer = syncer_at(tmp_path / "s", spec, max_ranges_in_flight=IN_FLIGHT)
    withholder = Withholder("withholder", chain.store, syncer.clock, delay=delay)   # fastest: voted, serves
    honest = [TimedPeer(f"honest{i}", chain.store, syncer.clock, latency, per_block) for i in range(2)]
    peers: list[TimedPeer] = [withholder, *honest]
    held: list[int] = [0]

    def measure() -> None:
        """Heights requested and not answered, or received and not applied (distinct, above our tip)."""
        tip = syncer.store.tip_height()
        heights = {h for p in peers for h in p.delivered if h > tip}
        for p in peers:
            for start, count in p.outstanding.values():
                heights.update(h for h in range(start, start + count) if h > tip)
        held[0] = max(held[0], len(heights))

    for p in peers:
        p.observer = measure
    syncer.sync(peers)
    assert_honest_tip(syncer, chain)
    size = range_size(BLOCKS, len(peers))
    bound = IN_FLIGHT * size                 # the window of 400 blocks is 6 ranges: only 3 may be held
    assert held[0] <= bound, f"{held[0]} blocks requested or received but not applied (bound {bound})"
    assert syncer.manager.max_buffered_blocks <= bound
    assert syncer.manager.max_buffered_blocks >= 2 * size                     # the pipeline did fill
    assert withholder.block_requests
    if delay is None:
        assert withholder.penalties                                  # it lost its chunk, and was charged
    assert not any(p.penalties for p in honest)


# -- our own pacing is not the peer's slowness ------------------------------------------------------------
def test_requests_held_back_by_our_own_pacing_are_neither_hedged_nor_charged_slow(tmp_path: Path, spec: ChainSpec,
                                                                                   chain: ChainBuilder) -> None:
    # Three honest peers behind our request pacing: one with budget to spare, two at 90/min with their burst
    # spent (the default once a sync is under way), whose requests wait ~0.7 s in our own queue before they
    # leave. Counting that wait as the peer's response time made the head chunk look late, hedged it (a second
    # request, spending the budget again) and charged an honest server slow_response, leaving it out of the
    # run: sync at default settings fell from 150 to ~100 blocks/s.
    syncer = syncer_at(tmp_path / "paced", spec)
    peers = [PacedPeer(f"paced{i}", chain.store, syncer.clock, per_minute=rate, burst=burst, latency=LATENCY,
                       per_block=PER_BLOCK) for i, (rate, burst) in enumerate(((6000, 100), (90, 2), (90, 2)))]
    syncer.sync(peers)
    assert_honest_tip(syncer, chain)
    chunks = len(range(0, BLOCKS, range_size(BLOCKS, len(peers))))
    assert sum(len(p.block_requests) for p in peers) == chunks, "a chunk was asked twice (hedged)"
    assert all(Event.SLOW_RESPONSE not in p.penalties for p in peers), [p.penalties for p in peers]
    syncer.close()
