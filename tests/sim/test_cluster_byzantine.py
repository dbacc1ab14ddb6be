"""Byzantine behaviours in whole simulated nodes (timecoin.sim.cluster.byzantine).

Each test runs 4 real nodes for a few simulated seconds, the last one Byzantine with one behaviour, and
shows (1) the lie really happens -- seen at the honest nodes where it can be, counted in the trace -- and
(2) the honest nodes keep agreeing (one hash per height) and finalizing; for provable behaviours, the
offender ends banned (or charged) by the honest nodes and/or its evidence committed.
"""
from __future__ import annotations

import io
import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from timecoin.ledger.block import Proposal, Vote
from timecoin.sim.cluster.base import Trace
from timecoin.sim.cluster.byzantine import BEHAVIOURS, Amnesia, make_behaviour
from timecoin.sim.cluster.cluster import Cluster, SimNode


@dataclass
class Run:
    cluster: Cluster
    trace: Trace
    behaviour: Any
    out: io.StringIO
    errors: list[tuple[str, BaseException]] = field(default_factory=list)
    # what honest nodes received from the Byzantine validator: (height, round, kind) -> block hashes
    seen: dict[tuple[int, int, int], set[bytes]] = field(default_factory=lambda: defaultdict(set))
    received: int = 0

    @property
    def byz(self) -> SimNode:
        return self.cluster.nodes[-1]

    def lies(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines() if '"lie"' in line]

    def banned_by(self) -> list[str]:
        byz = self.byz
        return [sn.name for sn in self.cluster.honest()
                if sn.node is not None and sn.node.p2p.peers.is_banned(byz.peer_id, None, sn.reactor.seconds())]

    def score_at(self, sn: SimNode) -> int:
        assert sn.node is not None
        return sn.node.p2p.peers.score(self.byz.peer_id)

    def evidence_against_byz(self) -> int:
        sn = self.cluster.honest()[0]
        assert sn.node is not None and sn.node.store is not None
        return sum(1 for block, _ in sn.node.store.get_blocks(1, sn.height())
                   for ev in block.evidence if ev.validator == self.byz.key.address)


def _observe(run: Run, sn: SimNode) -> None:
    """On honest nodes: record every proposal/vote signed by the Byzantine validator that reaches consensus."""
    if sn.byzantine or sn.node is None or sn.node.consensus is None:
        return
    consensus = sn.node.consensus
    addr = run.byz.key.address
    on_proposal, on_vote = consensus.receive_proposal, consensus.receive_vote

    def receive_proposal(p: Proposal, timely: bool | None = None) -> None:
        if p.proposer == addr:
            run.received += 1
            run.seen[(p.height, p.round, 0)].add(p.block.hash)
        on_proposal(p, timely)

    def receive_vote(v: Vote) -> None:
        if v.validator == addr:
            run.received += 1
            run.seen[(v.height, v.round, int(v.type))].add(v.block_hash)
        on_vote(v)

    consensus.receive_proposal = receive_proposal  # type: ignore[method-assign]
    consensus.receive_vote = receive_vote          # type: ignore[method-assign]


@contextmanager
def byzantine_run(name: str | None, seed: int = 1) -> Iterator[Run]:
    errors: list[tuple[str, BaseException]] = []
    cluster = Cluster(4, seed=seed, byzantine=1, on_error=lambda where, exc: errors.append((where, exc)))
    out = io.StringIO()
    trace = Trace(out, start=cluster.now())
    behaviour = make_behaviour(name) if name is not None else None
    run = Run(cluster, trace, behaviour, out, errors)
    rng = random.Random(f"test-byz/{seed}/{name}")
    if behaviour is not None:
        cluster.on_build.append(lambda sn: behaviour.install(sn, cluster, rng, trace) if sn.byzantine else None)
    cluster.on_build.append(lambda sn: _observe(run, sn))
    try:
        cluster.start_all()
        yield run
    finally:
        cluster.close()


def honest_agree_and_advance(run: Run, seconds: float, min_heights: int = 3,
                             between: Callable[[], None] | None = None) -> None:
    """Run ``seconds`` more (``between`` halfway); honest nodes finalize >= ``min_heights`` more heights, all
    agree on every height, and no callback raised."""
    cluster = run.cluster
    before = min(sn.height() for sn in cluster.honest())
    cluster.run_for(seconds / 2)
    if between is not None:
        between()
    cluster.run_for(seconds / 2)
    honest = [sn for sn in cluster.honest() if sn.node is not None and sn.node.store is not None]
    top = min(sn.height() for sn in honest)
    assert top >= before + min_heights, (before, cluster.heights())
    for h in range(1, top + 1):
        hashes = {sn.node.store.block_hash_at(h) for sn in honest}  # type: ignore[union-attr]
        assert len(hashes) == 1, f"honest nodes disagree at height {h}: {hashes}"
    assert not run.errors, run.errors


def conflicts(run: Run, kinds: set[int]) -> list[tuple[int, int, int]]:
    return [k for k, hashes in run.seen.items() if k[2] in kinds and len(hashes) >= 2]


def test_registry_and_unknown_name() -> None:
    assert sorted(BEHAVIOURS) == sorted(["equivocate", "double_vote", "withhold", "bad_signatures", "far_votes",
                                         "amnesia", "garbage", "flood", "lie_height", "forged_certs",
                                         "forked_branch"])
    for name, cls in BEHAVIOURS.items():
        b = make_behaviour(name)
        assert isinstance(b, cls) and b.name == name and isinstance(b.provable, bool)
    with pytest.raises(ValueError, match="known: amnesia, bad_signatures"):
        make_behaviour("nonsense")


def test_control_an_honest_last_node_is_neither_banned_nor_accused() -> None:
    """Without a behaviour the checks below do not fire: no lies, no ban, no evidence, its messages arrive."""
    with byzantine_run(None) as run:
        run.cluster.run_for(1.5)
        honest_agree_and_advance(run, 1.0, min_heights=20)
        assert run.lies() == [] and run.banned_by() == [] and run.evidence_against_byz() == 0
        assert run.received > 0 and conflicts(run, {0, 1, 2}) == []


def test_equivocate_two_real_proposals_reach_honest_nodes() -> None:
    with byzantine_run("equivocate") as run:
        run.cluster.run_for(1.5)
        honest_agree_and_advance(run, 1.5, min_heights=20)
        assert {e["what"] for e in run.lies()} == {"two_proposals", "split_votes"}
        assert conflicts(run, {0}), "no (height, round) with two proposals by the Byzantine proposer"
        # its split votes (A to one group, B to the other) are duplicate votes: evidence and bans
        assert run.behaviour.provable
        assert run.evidence_against_byz() >= 1
        assert run.banned_by() == ["n0", "n1", "n2"]


def test_double_vote_evidence_committed_and_offender_banned() -> None:
    with byzantine_run("double_vote") as run:
        run.cluster.run_for(1.5)
        honest_agree_and_advance(run, 1.5, min_heights=20)
        assert run.lies()
        assert conflicts(run, {1, 2}), "no conflicting votes by the Byzantine validator seen"
        assert run.evidence_against_byz() >= 1
        assert run.banned_by() == ["n0", "n1", "n2"]


def test_withhold_silent_validator_does_not_stop_the_others() -> None:
    with byzantine_run("withhold") as run:
        run.cluster.run_for(1.5)
        honest_agree_and_advance(run, 2.0, min_heights=8)
        assert len(run.lies()) > 10 and run.received == 0
        assert run.banned_by() == []


def test_bad_signatures_banned() -> None:
    with byzantine_run("bad_signatures") as run:
        run.cluster.run_for(1.5)
        honest_agree_and_advance(run, 2.0, min_heights=8)
        assert run.lies()
        assert run.banned_by() == ["n0", "n1", "n2"]


def test_far_votes_do_not_hurt_liveness() -> None:
    with byzantine_run("far_votes") as run:
        run.cluster.run_for(1.5)
        honest_agree_and_advance(run, 1.5, min_heights=20)
        lies = run.lies()
        assert len(lies) > 20
        assert any(e["height"] > e["real_height"] for e in lies) and any(e["round"] > e["real_round"] for e in lies)
        assert run.banned_by() == []               # race-prone at most: not a ban


def test_amnesia_forgets_and_double_signs_after_restarts() -> None:
    with byzantine_run("amnesia") as run:
        behaviour: Amnesia = run.behaviour
        run.cluster.run_for(1.5)
        for _ in range(3):                          # what the runner does every Amnesia.restart_every
            run.cluster.restart(run.byz)
            run.cluster.run_for(0.5)
        honest_agree_and_advance(run, 1.0, min_heights=10)
        assert behaviour.wiped == 3 and run.byz.incarnation == 4
        assert sum(e["what"] == "forgot" for e in run.lies()) == 3
        # seed 1: the forgetful node signed something conflicting with its earlier incarnation
        assert behaviour.double_signs and sum(e["what"] == "double_sign" for e in run.lies()) >= 1


def test_garbage_frames_banned() -> None:
    with byzantine_run("garbage") as run:
        run.cluster.run_for(1.5)
        honest_agree_and_advance(run, 1.0, min_heights=8)
        assert run.lies()
        assert run.banned_by() == ["n0", "n1", "n2"]


def test_request_flood_banned() -> None:
    with byzantine_run("flood") as run:
        run.cluster.run_for(1.5)
        honest_agree_and_advance(run, 1.0, min_heights=8)
        assert run.lies()
        assert run.banned_by() == ["n0", "n1", "n2"]


def _crash_and_catch_up(run: Run) -> None:
    """n0 is down for 1 s (about 100 heights), then syncs them from its peers, the Byzantine one among them."""
    n0 = run.cluster.nodes[0]
    run.cluster.run_for(1.5)
    run.cluster.crash(n0)
    run.cluster.run_for(1.0)
    run.cluster.restart(n0)


def test_lie_height_does_not_stop_catch_up() -> None:
    with byzantine_run("lie_height") as run:
        _crash_and_catch_up(run)
        honest_agree_and_advance(run, 2.5, min_heights=20)
        heights = run.cluster.heights()
        assert max(heights[:3]) - heights[0] <= 5, heights         # n0 caught up
        claimed = max(e["claimed"] for e in run.lies())
        assert claimed >= max(heights) + 500


def test_blocks_served_with_forged_certificates_ban_the_server() -> None:
    """FORGED_CERTIFICATE is provable: every node it served bans it at the first, whatever credit it had."""
    with byzantine_run("forged_certs") as run:
        _crash_and_catch_up(run)
        honest_agree_and_advance(run, 2.5, min_heights=20)
        heights = run.cluster.heights()
        assert max(heights[:3]) - heights[0] <= 5, heights         # n0 caught up, on the honest chain
        served = {e["peer"] for e in run.lies() if e["what"] != "block_hashes"}
        assert served, "no honest node asked the Byzantine node for blocks"
        by_peer = {sn.peer_id: sn for sn in run.cluster.honest()}
        assert {by_peer[p].name for p in served} <= set(run.banned_by())


def test_a_forked_branch_served_in_sync_is_refused() -> None:
    """The branch's blocks are off the agreed hashes: refused before their certificate is read, so not provable
    (an honest peer on another branch looks the same); the syncing node still takes the honest chain."""
    name = "forked_branch"
    with byzantine_run(name) as run:
        _crash_and_catch_up(run)
        honest_agree_and_advance(run, 2.5, min_heights=20)
        heights = run.cluster.heights()
        assert max(heights[:3]) - heights[0] <= 5, heights         # n0 caught up, on the honest chain
        served = {e["peer"] for e in run.lies() if e["what"] != "block_hashes"}
        assert served, "no honest node asked the Byzantine node for blocks"
        by_peer = {sn.peer_id: sn for sn in run.cluster.honest()}
        for peer in served:
            sn = by_peer[peer]
            assert run.score_at(sn) < 0, (sn.name, run.score_at(sn))       # charged, if not provably
