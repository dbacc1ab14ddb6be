"""The whole-node simulator's invariants: quiet on a clean honest run, and each one fires on a node broken
to violate its property (so none of them is a checker that cannot fail)."""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import pytest

from timecoin.ledger.block import NIL_HASH, Block, Vote, VoteType
from timecoin.ledger.tx import Transaction
from timecoin.sim.cluster.base import Invariant, Trace, Violation
from timecoin.sim.cluster.cluster import Cluster, SimNode
from timecoin.sim.cluster.invariants import (
    Accountability,
    Agreement,
    Durability,
    Integrity,
    Liveness,
    Validity,
    all_invariants,
)
from timecoin.sim.cluster.workload import Workload

CHECK_EVERY = 0.5
SEED = 7


def run(invariants: Callable[[Cluster, Trace], list[Invariant]], seconds: float, *, byzantine: int = 0,
        before_start: Callable[[Cluster], None] | None = None,
        after_start: Callable[[Cluster], None] | None = None) -> tuple[dict[str, list[Violation]], Cluster]:
    """A 4-node cluster of seed SEED for ``seconds`` simulated seconds, checked every CHECK_EVERY and at the
    end; violations by invariant name. Every check's answer is also checked never to repeat a violation."""
    errors: list[tuple[str, BaseException]] = []
    cluster = Cluster(4, seed=SEED, byzantine=byzantine, on_error=lambda where, exc: errors.append((where, exc)))
    trace = Trace()
    found: dict[str, list[Violation]] = {}
    try:
        invs = invariants(cluster, trace)
        for inv in invs:
            inv.attach(cluster, trace)
            found[inv.name] = []
        if before_start is not None:
            before_start(cluster)
        cluster.start_all()
        cluster.healed_at = cluster.now()  # type: ignore[attr-defined]   # no faults: healed from the start
        if after_start is not None:
            after_start(cluster)
        end = cluster.now() + seconds
        while cluster.now() < end:
            cluster.run_for(min(CHECK_EVERY, end - cluster.now()))
            for inv in invs:
                found[inv.name] += inv.check(cluster, False)
        for inv in invs:
            found[inv.name] += inv.check(cluster, True)
            assert inv.check(cluster, True) == []            # nothing new: nothing reported again
        for name, vs in found.items():
            assert len(set(vs)) == len(vs), f"{name} repeated a violation: {vs}"
        assert errors == [], errors
        return found, cluster
    finally:
        cluster.close()


def on_node(name: str, fn: Callable[[SimNode], None]) -> Callable[[Cluster], None]:
    """Install ``fn`` on every incarnation of node ``name`` (after the invariants' own hooks)."""
    def install(cluster: Cluster) -> None:
        cluster.on_build.append(lambda sn: fn(sn) if sn.name == name else None)
    return install


def on_started(*pairs: tuple[str, Callable[[SimNode], None]]) -> Callable[[Cluster], None]:
    """Apply ``fn`` to the running node ``name`` (its store and mempool open at startService)."""
    def install(cluster: Cluster) -> None:
        for name, fn in pairs:
            fn(next(sn for sn in cluster.nodes if sn.name == name))
    return install


# -- (a) a clean honest run: no invariant reports anything --------------------------------------------------

def test_clean_run_reports_nothing() -> None:
    made: dict[str, Any] = {}

    def invariants(cluster: Cluster, trace: Trace) -> list[Invariant]:
        made["workload"] = Workload(cluster, random.Random(1), 30.0, trace, stop_at=cluster.now() + 3.0)
        made["invs"] = all_invariants(made["workload"], bound_rounds=1, grace=0.5)
        return made["invs"]

    found, cluster = run(invariants, 4.0)
    assert sorted(found) == ["accountability", "agreement", "durability", "integrity", "liveness", "validity"]
    assert found == {name: [] for name in found}
    # and they looked at something: heights agreed and replayed, messages observed, txs finalized
    by_name = {inv.name: inv for inv in made["invs"]}
    agreement, validity, integrity = by_name["agreement"], by_name["validity"], by_name["integrity"]
    assert isinstance(agreement, Agreement) and isinstance(validity, Validity) and isinstance(integrity, Integrity)
    assert len(agreement.first) > 50
    assert validity._replay is not None and validity._replay.tip_height() > 50
    assert integrity.seen > 100
    workload = made["workload"]
    assert len(workload.accepted) > 20 and workload.refused == []
    liveness = by_name["liveness"]
    assert isinstance(liveness, Liveness)
    assert liveness.bound(cluster.node_config(cluster.nodes[0])) == pytest.approx(0.5 + 2 + 1)  # 1 round + sync + slack


# -- (b) each invariant fires on a node broken to violate it ---------------------------------------------------

def forge(block: Block, **header: Any) -> Block:
    return Block(dataclasses.replace(block.header, **header), block.txs, block.evidence)


def store_lies_at(height: int, **header: Any) -> Callable[[SimNode], None]:
    """The node's store hands out a different block (header fields changed) at ``height``."""
    def install(sn: SimNode) -> None:
        assert sn.node is not None and sn.node.store is not None
        store = sn.node.store
        real = store.get_blocks

        def get_blocks(start: int, count: int) -> list[Any]:
            return [(forge(b, **header), c) if b.height == height else (b, c) for b, c in real(start, count)]

        store.get_blocks = get_blocks  # type: ignore[method-assign]
    return install


def test_agreement_fires_on_a_node_holding_another_block() -> None:
    found, _ = run(lambda c, t: [Agreement()], 2.0, after_start=on_started(("n1", store_lies_at(5, timestamp=1))))
    assert {v.node for v in found["agreement"]} == {"n1"}
    assert all("height 5" in v.detail for v in found["agreement"])      # another hash, and a replaced one


def test_agreement_fires_on_a_commit_listener_told_another_hash() -> None:
    def lying_listener(sn: SimNode) -> None:
        assert sn.node is not None
        listeners = sn.node.consensus.on_commit
        inner = listeners[-1]                                    # Agreement's own listener (the last hook)
        listeners[-1] = lambda block: inner(forge(block, round=block.header.round + 1) if block.height == 9 else block)

    found, _ = run(lambda c, t: [Agreement()], 2.0, before_start=on_node("n2", lying_listener))
    assert any(v.node == "n2" and "height 9" in v.detail for v in found["agreement"])


def test_validity_fires_on_a_wrong_state_root_and_a_diverged_store() -> None:
    def wrong_lthash(sn: SimNode) -> None:
        store = sn.node.store if sn.node is not None else None
        assert store is not None

        def corrupt() -> None:                  # a while in, the stored state stops matching its blocks
            store.lthash = lambda: b"\x01" * 2048  # type: ignore[method-assign]
        assert sn.reactor is not None
        sn.reactor.callLater(1.5, corrupt)

    broken = on_started(("n0", store_lies_at(4, state_root=b"\x02" * 32)), ("n3", wrong_lthash))
    found, _ = run(lambda c, t: [Validity()], 2.0, after_start=broken)
    bad_root = [v for v in found["validity"] if v.node == "n0"]
    assert len(bad_root) == 1 and "height 4" in bad_root[0].detail and "state_root" in bad_root[0].detail
    assert any(v.node == "n3" and "stored state" in v.detail for v in found["validity"])


def test_integrity_fires_on_an_honest_double_vote() -> None:
    def double_voter(sn: SimNode) -> None:
        assert sn.node is not None
        consensus, chain_id = sn.node.consensus, sn.node.genesis.chain_id
        inner = consensus.broadcast

        def broadcast(msg: Any) -> None:
            inner(msg)
            if isinstance(msg, Vote) and msg.type == VoteType.PREVOTE and not msg.is_nil and msg.height == 6:
                inner(Vote(msg.type, msg.height, msg.round, NIL_HASH, msg.validator).signed(sn.key, chain_id))

        consensus.broadcast = broadcast

    found, _ = run(lambda c, t: [Integrity()], 2.0, before_start=on_node("n1", double_voter))
    assert len(found["integrity"]) == 1
    v = found["integrity"][0]
    assert v.node == "n1" and "PREVOTE" in v.detail and "height 6" in v.detail


def test_liveness_fires_when_honest_validators_hang() -> None:
    def hang(cluster: Cluster) -> None:
        for sn in cluster.nodes[2:]:
            assert sn.reactor is not None
            sn.reactor.pause()              # hung processes the cluster still reports as up

    found, _ = run(lambda c, t: [Liveness(bound_rounds=1, slack=0.1)], 3.5, after_start=hang)
    assert sorted(v.node for v in found["liveness"]) == ["n0", "n1", "n2", "n3"]
    assert all("bound 2.600s" in v.detail for v in found["liveness"])


def test_liveness_expects_nothing_with_a_third_of_the_power_down() -> None:
    def crash(cluster: Cluster) -> None:
        cluster.crash(cluster.nodes[2])
        cluster.crash(cluster.nodes[3])

    found, _ = run(lambda c, t: [Liveness(bound_rounds=1, slack=0.1)], 3.5, after_start=crash)
    assert found["liveness"] == []


def double_vote_always(sn: SimNode) -> None:
    """A Byzantine validator: every prevote for a block goes out with a nil prevote of the same round."""
    assert sn.node is not None
    consensus, chain_id = sn.node.consensus, sn.node.genesis.chain_id
    inner = consensus.broadcast

    def broadcast(msg: Any) -> None:
        inner(msg)
        if isinstance(msg, Vote) and msg.type == VoteType.PREVOTE and not msg.is_nil:
            inner(Vote(msg.type, msg.height, msg.round, NIL_HASH, msg.validator).signed(sn.key, chain_id))

    consensus.broadcast = broadcast


def provable(kind: str) -> Callable[[Cluster], None]:
    def install(cluster: Cluster) -> None:
        cluster.provable = {"n3": kind}  # type: ignore[attr-defined]
        on_node("n3", double_vote_always)(cluster)
    return install


def test_accountability_holds_when_the_equivocation_is_on_chain() -> None:
    found, _ = run(lambda c, t: [Accountability()], 2.0, byzantine=1, before_start=provable("evidence"))
    assert found["accountability"] == []


def test_accountability_fires_when_honest_nodes_do_not_punish() -> None:
    def no_evidence(cluster: Cluster) -> None:
        provable("either")(cluster)
        for name in ("n0", "n1", "n2"):
            on_node(name, lambda sn: setattr(sn.node.consensus, "record_evidence", lambda ev: None))(cluster)

    found, _ = run(lambda c, t: [Accountability()], 2.0, byzantine=1, before_start=no_evidence)
    assert sorted(v.node for v in found["accountability"]) == ["n0", "n1", "n2"]
    assert all("n3" in v.detail for v in found["accountability"])


def test_accountability_evidence_is_not_a_ban() -> None:
    # the equivocation goes on chain, but the honest nodes' P2P never charges (bans) the equivocator
    def no_ban(cluster: Cluster) -> None:
        provable("ban")(cluster)
        for name in ("n0", "n1", "n2"):
            on_node(name, lambda sn: setattr(sn.node.p2p, "charge_equivocator", lambda ev: None))(cluster)

    made: list[Accountability] = []
    found, _ = run(lambda c, t: made.append(Accountability()) or made, 2.0, byzantine=1, before_start=no_ban)
    assert sorted(v.node for v in found["accountability"]) == ["n0", "n1", "n2"]
    assert all("evidence on chain=True" in v.detail for v in found["accountability"])


def test_durability_fires_on_a_mempool_that_drops_accepted_txs() -> None:
    def black_hole(sn: SimNode) -> None:
        assert sn.node is not None and sn.node.mempool is not None
        sn.node.mempool.add = lambda tx: None  # type: ignore[method-assign]
        real = sn.node.p2p.broadcast
        sn.node.p2p.broadcast = lambda msg: None if isinstance(msg, Transaction) else real(msg)  # type: ignore[method-assign]

    made: dict[str, Workload] = {}

    def invariants(cluster: Cluster, trace: Trace) -> list[Invariant]:
        made["w"] = Workload(cluster, random.Random(2), 20.0, trace, stop_at=cluster.now() + 2.0)
        return [Durability(made["w"], grace=0.5)]

    found, _ = run(invariants, 3.0, after_start=on_started(("n0", black_hole)))
    lost = found["durability"]
    dropped = [s for s in made["w"].accepted if s.node == "n0"]
    assert dropped and len(lost) == len(dropped)
    assert all(v.node == "n0" and "silently lost" in v.detail for v in lost)


def test_integrity_remembers_across_restarts() -> None:
    # n1's second incarnation prevotes nil where its first incarnation prevoted a block
    signed: list[Vote] = []

    def remember_or_contradict(sn: SimNode) -> None:
        assert sn.node is not None
        consensus, chain_id = sn.node.consensus, sn.node.genesis.chain_id
        inner = consensus.broadcast
        if sn.incarnation == 1:
            def remember(msg: Any) -> None:
                if isinstance(msg, Vote) and msg.type == VoteType.PREVOTE and not msg.is_nil:
                    signed.append(msg)
                inner(msg)
            consensus.broadcast = remember
        else:                                   # once running (the P2P service sends from startService on)
            old = signed[-1]
            vote = Vote(old.type, old.height, old.round, NIL_HASH, old.validator).signed(sn.key, chain_id)
            assert sn.reactor is not None
            sn.reactor.callLater(0.2, consensus.broadcast, vote)

    def restart_n1(cluster: Cluster) -> None:
        n1 = cluster.nodes[1]
        cluster.scheduler.at(cluster.now() + 1.5, None, lambda: cluster.restart(n1))

    found, _ = run(lambda c, t: [Integrity()], 2.0, before_start=on_node("n1", remember_or_contradict),
                   after_start=restart_n1)
    assert len(found["integrity"]) == 1
    assert found["integrity"][0].node == "n1" and f"height {signed[-1].height}" in found["integrity"][0].detail


def test_check_never_repeats_a_violation() -> None:
    # faults that persist across many checks: a stall, a double voter at every height, lost txs
    made: dict[str, Any] = {}

    def invariants(cluster: Cluster, trace: Trace) -> list[Invariant]:
        made["w"] = Workload(cluster, random.Random(3), 20.0, trace, stop_at=cluster.now() + 2.0)
        made["invs"] = [Integrity(), Liveness(bound_rounds=1, slack=0.1), Durability(made["w"], grace=0.5)]
        return made["invs"]

    def broken(cluster: Cluster) -> None:
        on_node("n1", double_vote_always)(cluster)

    def hang_later(cluster: Cluster) -> None:
        def hang() -> None:
            for sn in cluster.nodes[2:]:
                assert sn.reactor is not None
                sn.reactor.pause()
        cluster.scheduler.at(cluster.now() + 1.6, None, hang)

    errors: list[Any] = []
    cluster = Cluster(4, seed=SEED, on_error=lambda where, exc: errors.append(exc))
    trace = Trace()
    try:
        invs = invariants(cluster, trace)
        for inv in invs:
            inv.attach(cluster, trace)
        broken(cluster)
        cluster.start_all()
        cluster.healed_at = cluster.now()  # type: ignore[attr-defined]
        hang_later(cluster)
        seen: list[Violation] = []
        for _ in range(50):                            # a check every 0.1 s, and several final ones
            cluster.run_for(0.1)
            for inv in invs:
                seen += inv.check(cluster, False)
        for _ in range(3):
            for inv in invs:
                seen += inv.check(cluster, True)
        assert errors == []
    finally:
        cluster.close()
    kinds = {v.invariant for v in seen}
    assert kinds == {"integrity", "liveness", "durability"}, kinds
    assert len(seen) == len(set(seen)) and len(seen) >= 5
    assert len({(v.invariant, v.node, v.detail) for v in seen}) == len(seen)


def test_durability_excuses_a_tx_lost_with_the_node_that_accepted_it() -> None:
    made: dict[str, Any] = {}

    def invariants(cluster: Cluster, trace: Trace) -> list[Invariant]:
        made["w"] = Workload(cluster, random.Random(4), 10.0, trace, stop_at=cluster.now() + 3.0)
        made["invs"] = all_invariants(made["w"], bound_rounds=2, grace=0.5)
        return made["invs"]

    def crash_after_submit(cluster: Cluster) -> None:
        n0 = cluster.nodes[0]

        def submit_and_crash() -> None:
            workload: Workload = made["w"]
            user = next(u for u in cluster.users if u.address not in workload.inflight)
            nonce = max(workload.nonces[user.address], 0)
            made["sub"] = workload.submit(n0, workload.build(user, nonce, n0))
            cluster.crash(n0)                           # before the relayed tx leaves the host

        def back() -> None:
            cluster.start(n0)
            cluster.healed_at = cluster.now()  # type: ignore[attr-defined]

        cluster.scheduler.at(cluster.now() + 1.5, None, submit_and_crash)
        cluster.scheduler.at(cluster.now() + 1.8, None, back)

    found, _ = run(invariants, 4.0, after_start=crash_after_submit)
    assert found == {name: [] for name in found}
    workload = made["w"]
    sub = made["sub"]
    assert sub.node == "n0" and sub.txid in workload.excused and "crashed" in workload.excused[sub.txid]
