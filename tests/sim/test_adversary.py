"""The seeded adversarial scheduler (timecoin.sim): fixed seeds on the real engine, determinism, the
control configuration (>= 1/3 Byzantine power) forking, and each invariant checker failing on a crafted
bad history."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from timecoin.ledger.block import CommitCertificate, Proposal, Vote, VoteType
from timecoin.ledger.state import build_block
from timecoin.memstore import MemoryStore
from timecoin.sim import adversary
from timecoin.sim.adversary import SimConfig, run_seed
from timecoin.sim.invariants import (
    History,
    check_agreement,
    check_double_sign,
    check_liveness,
    check_one_body,
    check_safety,
    check_validity,
)
from timecoin.sim.world import CHAIN_ID, candidates_for, key_of, make_genesis, with_body

FOUR_ONE = SimConfig(4, 1, 3)
SEVEN_TWO = SimConfig(7, 2, 3)
CONTROL = SimConfig(4, 2, 3)          # half the power Byzantine: forks are expected and must be found


def _assert_clean(config: SimConfig, seeds: range) -> list[adversary.SimResult]:
    results = [run_seed(seed, config) for seed in seeds]
    bad = {r.seed: [v.to_json() for v in r.violations] for r in results if r.violations}
    assert not bad, f"violations on the real engine: {bad}"
    for r in results:
        assert min(r.heights.values()) >= config.heights
    # the seeds exercise both adversaries and reach rounds beyond 0 (the splitter did split something)
    assert {r.mode for r in results} == {"splitter", "behaviours"}
    assert max(max(r.rounds.values()) for r in results) >= 3
    return results


def test_four_nodes_one_byzantine_fixed_seeds() -> None:
    results = _assert_clean(FOUR_ONE, range(0, 80))
    assert sum(r.stats.get("evidence", 0) for r in results) > 0        # equivocations were caught
    assert sum(r.stats.get("relay_forged", 0) for r in results) > 0    # the keyless relay ran
    for healing in ("held", "gossiped", "quorum_proofs", "fetch"):      # the splitter held copies back; the
        assert sum(r.stats.get(healing, 0) for r in results) > 0, healing  # post-GST mechanisms all ran


def test_seven_nodes_two_byzantine_fixed_seeds() -> None:
    _assert_clean(SEVEN_TWO, range(0, 20))


def test_same_seed_same_run_byte_for_byte() -> None:
    a, b = run_seed(17, FOUR_ONE), run_seed(17, FOUR_ONE)
    assert json.dumps(a.to_json(), sort_keys=True) == json.dumps(b.to_json(), sort_keys=True)
    assert json.dumps(a.to_json()) != json.dumps(run_seed(18, FOUR_ONE).to_json())


def test_cli_summary_is_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    outs = []
    for _ in range(2):
        assert adversary.main(["--nodes", "4", "--byzantine", "1", "--seeds", "3", "--start", "5", "--json"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    summary = json.loads(outs[0])
    assert summary["runs"] == 3 and summary["violations"] == {} and summary["replay"] is None


def test_same_run_in_processes_with_different_hash_seeds() -> None:
    """No set or dict order leaks into a run: two interpreters with different hash seeds agree."""
    outs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        proc = subprocess.run([sys.executable, "-m", "timecoin.sim.adversary", "--seeds", "1", "--start", "10",
                               "--verbose", "--json"], capture_output=True, text=True, env=env, timeout=60,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    assert outs[0] == outs[1]
    assert json.loads(outs[0].splitlines()[0])["seed"] == 10


def test_control_reports_a_fork_and_exits_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert CONTROL.control and not FOUR_ONE.control and not SEVEN_TWO.control
    forks = [r.seed for r in (run_seed(s, CONTROL) for s in range(0, 10))
             if any(v.kind == "agreement" for v in r.violations)]
    assert forks, "the lock splitter found no fork with half the power Byzantine"
    assert adversary.main(["--nodes", "4", "--byzantine", "2", "--seeds", "10", "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["violations"].get("agreement", 0) > 0
    assert summary["first_failing_seed"] == forks[0]
    assert summary["replay"].endswith(f"--start {forks[0]} --seeds 1 --verbose")


def test_equal_third_is_control_but_stake_below_a_third_is_not() -> None:
    assert SimConfig(3, 1).control                            # 1/3 exactly is not < 1/3
    assert not SimConfig(4, 2, powers=(3, 3, 1, 1)).control   # 2 of 4 validators, 2/8 of the power


# -- the checkers on crafted histories --------------------------------------------------------------
GENESIS = make_genesis(4, (1, 1, 1, 1))
KEYS = [key_of(i) for i in range(4)]


def _block(ts: int, variant: int = 0):  # type: ignore[no-untyped-def]
    store = MemoryStore(GENESIS)
    block, _ = build_block(store, GENESIS.params, 1, 0, store.tip_hash(), ts, KEYS[0].address,
                           candidates_for(store, variant))
    return block


def _cert(block, signers: int = 3) -> CommitCertificate:  # type: ignore[no-untyped-def]
    return CommitCertificate.from_votes([Vote(VoteType.PRECOMMIT, block.height, 0, block.hash, k.address)
                                         .signed(k, CHAIN_ID) for k in KEYS[:signers]])


def test_agreement_checker_reports_two_commits_at_one_height() -> None:
    a, b = _block(10), _block(11)
    good = History(GENESIS, {0: [(a, _cert(a))], 1: [(a, _cert(a))]})
    assert check_safety(good) == []
    bad = History(GENESIS, {0: [(a, _cert(a))], 1: [(b, _cert(b))]})
    found = check_agreement(bad)
    assert [v.kind for v in found] == ["agreement"] and "height 1" in found[0].detail
    assert check_validity(bad) == []           # each chain on its own is fine: only agreement catches it


def test_body_checkers_report_a_body_that_is_not_its_headers() -> None:
    a = _block(10)
    assert a.txs, "the workload puts transactions in blocks"
    forged = with_body(Proposal(1, 0, -1, KEYS[0].address, a), a.txs[1:]).block
    assert forged.hash == a.hash
    bad = History(GENESIS, {0: [(a, _cert(a))], 1: [(forged, _cert(a))]})
    assert [v.kind for v in check_one_body(bad)] == ["one_body"]
    assert [v.kind for v in check_validity(bad)] == ["validity"]


def test_validity_checker_reports_a_certificate_without_quorum() -> None:
    a = _block(10)
    found = check_validity(History(GENESIS, {0: [(a, _cert(a, signers=2))]}))
    assert [v.kind for v in found] == ["validity"] and "2/3" in found[0].detail


def test_validity_checker_reports_a_timestamp_that_does_not_increase() -> None:
    store = MemoryStore(GENESIS)
    first, result = build_block(store, GENESIS.params, 1, 0, store.tip_hash(), 10, KEYS[0].address, ())
    store.commit_block(first, _cert(first), result)

    def second(ts: int):  # type: ignore[no-untyped-def]
        return build_block(store, GENESIS.params, 2, 0, store.tip_hash(), ts, KEYS[0].address, ())[0]

    ok, same = second(11), second(10)
    assert check_validity(History(GENESIS, {0: [(first, _cert(first)), (ok, _cert(ok))]})) == []
    found = check_validity(History(GENESIS, {0: [(first, _cert(first)), (same, _cert(same))]}))
    assert [v.kind for v in found] == ["validity"] and "timestamp" in found[0].detail


def test_double_sign_checker() -> None:
    k = KEYS[1]
    a, b = _block(10), _block(11)
    v1 = Vote(VoteType.PREVOTE, 1, 0, a.hash, k.address).signed(k, CHAIN_ID)
    v2 = Vote(VoteType.PREVOTE, 1, 0, b.hash, k.address).signed(k, CHAIN_ID)
    pre = Vote(VoteType.PRECOMMIT, 1, 0, a.hash, k.address).signed(k, CHAIN_ID)
    assert check_double_sign(History(GENESIS, signed={1: [v1, v1, pre]})) == []     # a re-send is not a second vote
    assert [v.kind for v in check_double_sign(History(GENESIS, signed={1: [v1, pre, v2]}))] == ["double_sign"]
    p1 = Proposal(1, 0, -1, k.address, a).signed(k, CHAIN_ID)
    p2 = Proposal(1, 0, -1, k.address, b).signed(k, CHAIN_ID)
    assert check_double_sign(History(GENESIS, signed={1: [p1, p1]})) == []
    assert [v.kind for v in check_double_sign(History(GENESIS, signed={1: [p1, p2]}))] == ["double_sign"]


def test_liveness_checker() -> None:
    assert check_liveness(History(GENESIS, heights={0: 3, 1: 4}), 3, "5s") == []
    found = check_liveness(History(GENESIS, heights={0: 3, 1: 2}), 3, "5s after GST")
    assert [v.kind for v in found] == ["liveness"] and "{1: 2}" in found[0].detail
