"""The seeded fault plan: same seed same plan, never more than f faulty validators at once, every fault
healed before the end, different seeds differ, bad arguments refused."""
from __future__ import annotations

import pytest

from timecoin.chaos.schedule import HEAL_OF, KINDS, FaultEvent, format_plan, max_faulty, plan

HEALS = set(HEAL_OF.values())


def faulty_intervals(events: list[FaultEvent]) -> list[tuple[float, float, int, str]]:
    """(start, end, victim, kind) of every fault, paired with its heal; a reset lasts an instant."""
    open_: dict[tuple[int, str], FaultEvent] = {}
    out = []
    for e in events:
        if e.action == "reset":
            out.append((e.at, e.at, e.node, "reset"))
        elif e.action in HEAL_OF:
            key = (e.node, HEAL_OF[e.action])
            assert key not in open_, f"{e.describe()}: a second fault of the same kind before the heal"
            open_[key] = e
        else:
            assert e.action in HEALS, e
            fault = next((f for (n, h), f in open_.items() if n == e.node and h == e.action
                          and f.peers == e.peers), None)
            assert fault is not None, f"{e.describe()} heals nothing"
            del open_[(e.node, e.action)]
            out.append((fault.at, e.at, e.node, fault.action))
    assert not open_, f"never healed: {[f.describe() for f in open_.values()]}"
    return out


@pytest.mark.parametrize("nodes", [4, 7, 10])
@pytest.mark.parametrize("seed", range(30))
def test_never_more_than_f_faulty_and_everything_healed_by_the_end(seed: int, nodes: int) -> None:
    duration = 60.0
    events = plan(seed, nodes, duration)
    assert events == sorted(events, key=lambda e: e.at)
    assert all(0 < e.at <= duration for e in events)
    intervals = faulty_intervals(events)
    assert intervals, "an empty plan tests nothing"
    f = max_faulty(nodes)
    for start, _, _, _ in intervals:
        faulty = {v for s, e, v, _ in intervals if s <= start <= e}
        assert len(faulty) <= f, f"seed {seed}: {sorted(faulty)} faulty at t={start} (f = {f})"
    for e in events:
        assert 0 <= e.node < nodes and all(0 <= p < nodes and p != e.node for p in e.peers)
        if e.action == "delay":
            assert 0 < e.value < 1.0


def test_the_checker_of_the_bound_can_fail() -> None:
    """Two overlapping victims with f = 1 must be caught by the same counting the test above uses."""
    events = [FaultEvent(1.0, "kill", 0), FaultEvent(2.0, "stop", 1), FaultEvent(3.0, "restart", 0),
              FaultEvent(4.0, "cont", 1)]
    intervals = faulty_intervals(events)
    assert max(len({v for s, e, v, _ in intervals if s <= t <= e}) for t, _, _, _ in intervals) == 2
    with pytest.raises(AssertionError, match="never healed"):
        faulty_intervals([FaultEvent(1.0, "partition", 0, (1,))])


def test_same_seed_same_plan_different_seeds_differ() -> None:
    assert plan(7, 4, 60.0) == plan(7, 4, 60.0)
    assert format_plan(7, 4, 60.0, plan(7, 4, 60.0)) == format_plan(7, 4, 60.0, plan(7, 4, 60.0))
    plans = {tuple(plan(seed, 4, 60.0)) for seed in range(20)}
    assert len(plans) == 20


def test_a_long_enough_plan_tries_every_kind() -> None:
    for seed in range(20):
        kinds = {e.action for e in plan(seed, 4, 60.0)}
        assert set(KINDS) <= kinds, f"seed {seed}: only {sorted(kinds)}"


def test_format_plan_prints_one_line_per_event() -> None:
    events = plan(1, 4, 30.0)
    text = format_plan(1, 4, 30.0, events)
    lines = text.splitlines()
    assert lines[0].startswith("chaos plan: seed 1, 4 validators (f = 1), 30 s,")
    assert len(lines) == len(events) + 1
    assert FaultEvent(1.5, "delay", 2, (0, 3), 0.25).describe() == "t=  1.50s delay 0.250 s on node2<->node0,node3"
    assert FaultEvent(9.0, "kill", 1).describe() == "t=  9.00s SIGKILL node1"
    assert FaultEvent(1.0, "stall", 0, (1,)).links() == [(0, 1), (1, 0)]


@pytest.mark.parametrize("nodes", [3, 1, 0, True, "4"])
def test_too_few_validators_is_refused(nodes: object) -> None:
    with pytest.raises(ValueError, match="at least 4 validators"):
        plan(1, nodes, 60.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("duration", [0.0, 5.0, -1.0, float("nan")])
def test_too_short_a_duration_is_refused(duration: float) -> None:
    with pytest.raises(ValueError, match="duration of at least"):
        plan(1, 4, duration)
