"""``timecoin sim``: the fixed seeds CI runs, replay byte for byte, the bound itself, the trace, bad arguments.

The acceptance commands of the issue run here as real processes (``python -m timecoin sim``), so what is
checked is what a user gets, including the re-execution under ``PYTHONHASHSEED=0``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timecoin.sim.cluster import runner
from timecoin.sim.cluster.faults import FAULT_KINDS, plan_faults
from timecoin.sim.cluster.sweep import parse_configs, parse_seeds


def sim(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "timecoin", "sim", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def test_the_acceptance_run_passes_and_prints_the_same_bytes_twice() -> None:
    """7 nodes, 2 Byzantine, seed 1, 300 heights, random behaviours and faults: passes in < 60 s, replays."""
    args = ("--nodes", "7", "--byzantine", "2", "--seed", "1", "--heights", "300", "--scenario", "random")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}     # the command fixes it itself
    first = sim(*args, env={**env, "PYTHONHASHSEED": "random"})
    second = sim(*args, env=env)
    assert first.returncode == 0, first.stdout + first.stderr[-2000:]
    assert first.stdout == second.stdout
    out = first.stdout
    assert "result: PASS" in out and "violations: none" in out
    reached = int(out.split("heights reached (honest): min ")[1].split(",")[0])
    assert reached >= 300, out
    assert "faults: none" not in out and "behaviours: none" not in out
    real = float(first.stderr.split("real time: ")[1].split(" s")[0])
    assert real < 60, first.stderr


def test_at_one_third_byzantine_the_tool_reports_what_broke() -> None:
    """2 of 4 equal validators equivocating together: the report says so up front and names the break."""
    done = sim("--nodes", "4", "--byzantine", "2", "--seed", "1", "--heights", "50", "--scenario", "equivocate")
    assert done.returncode == 1
    assert "at or above 1/3" in done.stdout
    assert "what broke: halt" in done.stdout or "what broke: fork" in done.stdout
    assert "replay: timecoin sim --nodes 4 --byzantine 2 --seed 1" in done.stdout


@pytest.mark.parametrize("nodes, byzantine", [(4, 2), (7, 3)])
def test_at_one_third_the_coalition_is_cut_off_and_the_honest_nodes_halt_rather_than_fork(nodes: int,
                                                                                          byzantine: int) -> None:
    """A coalition at or above 1/3 splits the honest nodes with A/B proposals and votes. Its split votes are
    duplicate votes, and one provable offence bans: the honest nodes disconnect it before it can complete a
    quorum for either side, so they stop (a halt) instead of finalizing two blocks (a fork)."""
    for seed in (1, 2):
        rep = runner.run(runner.SimOptions(nodes, byzantine, seed, 20, ("equivocate",)))
        assert rep.beyond_bound and rep.broken == "halt" and not rep.ok, rep.text()
        assert {b for b, _ in rep.bans} == {f"n{i}" for i in range(nodes - byzantine, nodes)}
        assert "what broke: halt (the honest nodes stopped at height" in rep.text()


def test_the_same_coalition_below_one_third_breaks_nothing() -> None:
    """2 of 7: the split cannot gather a quorum for either block; the equivocators end banned and slashed."""
    rep = runner.run(runner.SimOptions(7, 2, 3, 40, ("equivocate",)))
    assert rep.ok, rep.text()
    assert rep.evidence >= 1
    assert {b for b, _ in rep.bans} == {"n5", "n6"}


def test_json_and_trace_tell_the_run_step_by_step(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    done = sim("--nodes", "4", "--byzantine", "1", "--seed", "4", "--heights", "30", "--scenario", "crash,garbage",
               "--json", "--trace", str(trace))
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["ok"] and report["heights_reached"]["min"] >= 30 and report["behaviours"] == {"n3": "garbage"}
    assert report["faults"] and all(f.startswith("crash ") for f in report["faults"])
    assert report["bans"] and {b["banned"] for b in report["bans"]} == {"n3"}
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    kinds = {e["kind"] for e in events}
    assert {"fault", "heal", "commit", "send", "lie"} <= kinds
    times = [e["t"] for e in events]
    assert times == sorted(times)                  # one clock, in order


@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS])
def test_every_fault_kind_is_survived(kind: str) -> None:
    """Each fault kind alone, one Byzantine withholder: the honest nodes agree and finish after the heal."""
    rep = runner.run(runner.SimOptions(4, 1, 6, 25, (kind, "withhold")))
    assert rep.ok, rep.text()
    if kind != "skew":
        assert rep.faults and all(f.startswith(kind) for f in rep.faults)
    assert rep.heights_min >= 25


def test_a_mix_of_behaviours_on_one_byzantine_node_is_all_installed() -> None:
    """``--scenario equivocate,withhold,flood`` with one Byzantine node: that node gets all three, in order."""
    rep = runner.run(runner.SimOptions(4, 1, 3, 30, ("equivocate", "withhold", "flood")))
    assert rep.behaviours == {"n3": "equivocate+withhold+flood"}
    assert rep.ok, rep.text()
    assert {b for b, _ in rep.bans} == {"n3"}          # the flood is provable, whatever else it does


def test_zipf_stakes_put_most_power_in_few_hands() -> None:
    rep = runner.run(runner.SimOptions(6, 1, 7, 20, ("none",), stake_dist="zipf"))
    assert rep.ok, rep.text()
    assert rep.byzantine_share < 0.1            # the last (smallest) stake is Byzantine


@pytest.mark.parametrize("args, message", [
    (("--scenario", "nonsense"), "unknown scenario nonsense"),
    (("--byzantine", "5"), "--byzantine must be between 0 and --nodes"),
    (("--heights", "0"), "--heights must be at least 1"),
    (("--nodes", "0"), "--nodes must be at least 1"),
    (("--byzantine", "4"), "at least one node must be honest"),
])
def test_bad_arguments_get_one_clear_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    done = sim("--nodes", "4", *args) if "--nodes" not in args else sim(*args)
    assert done.returncode == 2
    assert done.stdout == "" and message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_trace_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    done = sim("--heights", "5", "--trace", str(tmp_path / "missing" / "trace.jsonl"))
    assert done.returncode == 2 and "No such file or directory" in done.stderr


def test_fault_plans_never_overlap_and_end_inside_their_window() -> None:
    import random
    for seed in range(30):
        faults = plan_faults(random.Random(seed), list(FAULT_KINDS), 7, [0, 1, 2, 3, 4], (2.0, 8.0), 3)
        assert len(faults) == 3
        for a, b in zip(faults, faults[1:], strict=False):
            assert a.end <= b.start
        assert all(2.0 <= f.start < f.end <= 8.0 for f in faults)


def test_sweep_arguments() -> None:
    assert parse_seeds("1-3,7") == [1, 2, 3, 7]
    assert parse_configs("4/1,7/2") == [(4, 1), (7, 2)]
    with pytest.raises(ValueError):
        parse_seeds("5-1")
