"""The seeded adversarial scheduler: one run per seed, a summary over many, and the command line.

``python -m timecoin.sim.adversary --nodes 4 --byzantine 1 --seeds 2000 [--start 0] [--heights 3]
[--powers 3,3,1,1] [--json]`` runs seeds ``start .. start+seeds-1`` and prints runs, violations by kind,
the first failing seed and the command that replays it; the exit code is 1 if any run violated an
invariant. Byzantine validators are the last ``--byzantine`` indexes. With Byzantine power >= 1/3
(a *control* configuration) liveness is not expected and not checked; safety still is, and a fork
there is the expected finding.

Everything a run does is drawn from ``random.Random(seed)`` in a fixed order: the same arguments give
the same result, byte for byte. Nothing here reads the wall clock (the CLI times itself on stderr).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from timecoin.consensus import engine as eng
from timecoin.sim.byzantine import Behaviour, Byzantine, KeylessRelay
from timecoin.sim.invariants import History, Violation, check_liveness, check_safety
from timecoin.sim.network import NetConfig, Partition
from timecoin.sim.scheduler import World
from timecoin.sim.splitter import LockSplitter
from timecoin.sim.world import START_TIME, TIMEOUTS, make_genesis

DELTA = 0.005                 # post-GST delay bound (seconds): below every phase timeout
GOSSIP_INTERVAL = 0.01
SYNC_AFTER = 0.5
GST_RANGE = (0.3, 1.5)        # GST, seconds after the start
# Liveness bound: every honest node at the target height this long after GST (see docs/simulation.md).
LIVENESS_BASE = 2.0
LIVENESS_PER_HEIGHT = 1.0
MAX_EVENTS = 400_000


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 4
    byzantine: int = 1
    heights: int = 3
    powers: tuple[int, ...] | None = None
    relay: bool = True            # the keyless relay may be drawn (off: to isolate other findings)

    @property
    def power_list(self) -> tuple[int, ...]:
        return self.powers or (1,) * self.nodes

    @property
    def control(self) -> bool:
        """Byzantine power >= 1/3: the model's assumption broken on purpose."""
        p = self.power_list
        return 3 * sum(p[self.nodes - self.byzantine:]) >= sum(p)

    def liveness_bound(self) -> float:
        return LIVENESS_BASE + LIVENESS_PER_HEIGHT * self.heights

    def to_json(self) -> dict[str, object]:
        return {"nodes": self.nodes, "byzantine": self.byzantine, "heights": self.heights,
                "powers": list(self.power_list), "control": self.control, "relay": self.relay}

    def argv(self) -> str:
        s = f"--nodes {self.nodes} --byzantine {self.byzantine} --heights {self.heights}"
        if self.powers:
            s += " --powers " + ",".join(map(str, self.powers))
        if not self.relay:
            s += " --no-relay"
        return s


@dataclass
class SimResult:
    seed: int
    config: SimConfig
    mode: str
    net: NetConfig
    violations: list[Violation]
    heights: dict[int, int]                   # honest node -> committed height
    rounds: dict[int, int]                    # height -> highest commit round among honest nodes
    stats: dict[str, int] = field(default_factory=dict)
    end_time: float = 0.0
    after_gst: float | None = None            # seconds from GST until every honest node held the target height

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, object]:
        return {"seed": self.seed, "config": self.config.to_json(), "mode": self.mode, "net": self.net.to_json(),
                "violations": [v.to_json() for v in self.violations], "heights": self.heights,
                "rounds": self.rounds, "stats": self.stats, "end_time": round(self.end_time, 6),
                "after_gst": None if self.after_gst is None else round(self.after_gst, 6)}


def _draw_net(rng: random.Random, n: int, chaotic: bool) -> NetConfig:
    gst = START_TIME + rng.uniform(*GST_RANGE)
    if not chaotic:        # the splitter owns delivery: small delays, no blind loss
        return NetConfig(gst=gst, delta=DELTA, max_delay=rng.uniform(0.002, 0.015),
                         duplicate=rng.choice((0.0, 0.05)))
    parts = []
    for _ in range(rng.randint(0, 2)):
        start = rng.uniform(START_TIME, gst)
        side = frozenset(i for i in range(n) if rng.random() < 0.5)
        parts.append(Partition(start, rng.uniform(start, gst), side))
    return NetConfig(gst=gst, delta=DELTA, max_delay=rng.uniform(0.005, 0.08), drop=rng.choice((0.0, 0.05, 0.2)),
                     duplicate=rng.choice((0.0, 0.1)), partitions=tuple(parts))


def _draw_skews(rng: random.Random, n: int, byzantine: set[int], precision: float) -> list[float]:
    """Clock offsets: at most one honest node off, by up to +-precision (so honest clocks stay within
    precision of each other, the timeliness rule's assumption); a Byzantine clock may be off by twice that."""
    skews = [rng.uniform(-2 * precision, 2 * precision) if i in byzantine and rng.random() < 0.5 else 0.0
             for i in range(n)]
    if rng.random() < 0.4:
        honest = [i for i in range(n) if i not in byzantine]
        skews[rng.choice(honest)] = rng.uniform(-precision, precision)
    return skews


def run_seed(seed: int, config: SimConfig, timeouts: eng.Timeouts = TIMEOUTS) -> SimResult:
    """One run: draw the world from ``seed``, run it, check every invariant."""
    rng = random.Random(seed)
    n, f = config.nodes, config.byzantine
    byzantine = set(range(n - f, n))
    mode = "splitter" if f and rng.random() < 0.65 else "behaviours"
    net = _draw_net(rng, n, chaotic=mode == "behaviours")
    skews = _draw_skews(rng, n, byzantine, timeouts.precision)
    genesis = make_genesis(n, config.power_list)
    world = World(genesis, byzantine, skews, timeouts, net, rng, GOSSIP_INTERVAL, SYNC_AFTER,
                  inert_byzantine=mode == "splitter")
    if mode == "splitter":
        world.adversaries.append(LockSplitter(world, rng))
    else:
        world.adversaries.append(Byzantine(world, rng, {i: Behaviour.draw(rng) for i in sorted(byzantine)}))
    if rng.random() < 0.3 and config.relay:
        world.adversaries.append(KeylessRelay(world, rng, rng.uniform(0.2, 0.8)))
    target = config.heights
    deadline = net.gst + config.liveness_bound()
    crash: list[Violation] = []
    try:
        world.start()
        world.run(lambda: min(node.height for node in world.honest) >= target, deadline, MAX_EVENTS)
    except Exception as exc:            # a crash of the code under test is a finding, reported like one
        crash.append(Violation("crash", f"{type(exc).__name__}: {exc}"))
    history = History(genesis, {node.index: node.chain() for node in world.honest},
                      {node.index: node.signed for node in world.honest},
                      {node.index: node.height for node in world.honest})
    violations = crash + check_safety(history)
    if not config.control:
        bound = f"{config.liveness_bound():.1f}s after GST"
        if world.clock.events >= MAX_EVENTS:
            bound += f" (event budget {MAX_EVENTS} spent)"
        violations += check_liveness(history, target, bound)
    rounds: dict[int, int] = {}
    for node in world.honest:
        for h, r in node.commit_rounds.items():
            rounds[h] = max(rounds.get(h, 0), r)
    stats = Counter(world.stats) + Counter(world.network.stats)
    stats["events"] = world.clock.events
    stats["synced"] = sum(len(node.synced) for node in world.honest)
    reached = min(history.heights.values()) >= target
    return SimResult(seed, config, mode, net, violations, history.heights, dict(sorted(rounds.items())),
                     dict(sorted(stats.items())), world.clock.now,
                     max(0.0, world.clock.now - net.gst) if reached else None)


@dataclass
class Summary:
    config: SimConfig
    start: int
    runs: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    failing: list[int] = field(default_factory=list)
    modes: Counter[str] = field(default_factory=Counter)
    max_round: int = 0
    max_after_gst: float = 0.0
    first_detail: str = ""

    def add(self, result: SimResult) -> None:
        self.runs += 1
        self.modes[result.mode] += 1
        self.max_round = max([self.max_round, *result.rounds.values()])
        if result.after_gst is not None:
            self.max_after_gst = max(self.max_after_gst, result.after_gst)
        if result.violations:
            if not self.failing:
                self.first_detail = result.violations[0].detail
            self.failing.append(result.seed)
            for v in result.violations:
                self.by_kind[v.kind] += 1

    def replay_command(self) -> str | None:
        if not self.failing:
            return None
        return f"python -m timecoin.sim.adversary {self.config.argv()} --start {self.failing[0]} --seeds 1 --verbose"

    def to_json(self) -> dict[str, object]:
        return {"config": self.config.to_json(), "start": self.start, "runs": self.runs,
                "violations": dict(sorted(self.by_kind.items())), "failing_seeds": self.failing[:50],
                "first_failing_seed": self.failing[0] if self.failing else None,
                "first_violation": self.first_detail or None, "replay": self.replay_command(),
                "modes": dict(sorted(self.modes.items())), "max_commit_round": self.max_round,
                "max_seconds_after_gst": round(self.max_after_gst, 6), "liveness_bound": self.config.liveness_bound()}

    def text(self) -> str:
        control = " (control: Byzantine power >= 1/3)" if self.config.control else ""
        lines = [f"config: {self.config.argv()}{control}",
                 f"runs: {self.runs} (seeds {self.start}..{self.start + self.runs - 1}), modes "
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.modes.items())),
                 f"highest commit round: {self.max_round}; slowest run reached height {self.config.heights} "
                 f"{self.max_after_gst:.3f}s after GST (bound {self.config.liveness_bound():.1f}s)"]
        if not self.failing:
            lines.append("violations: none")
        else:
            lines.append("violations: " + ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items())))
            lines.append(f"failing runs: {len(self.failing)}; first failing seed: {self.failing[0]}")
            lines.append(f"first violation: {self.first_detail}")
            lines.append(f"replay: {self.replay_command()}")
        return "\n".join(lines)


def run_many(config: SimConfig, start: int, seeds: int) -> tuple[Summary, list[SimResult]]:
    summary = Summary(config, start)
    results = []
    for seed in range(start, start + seeds):
        result = run_seed(seed, config)
        summary.add(result)
        results.append(result)
    return summary, results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m timecoin.sim.adversary", description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--byzantine", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--heights", type=int, default=3)
    ap.add_argument("--powers", type=str, default="", help="comma-separated voting powers, one per node")
    ap.add_argument("--no-relay", action="store_true", help="never draw the keyless relay")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--verbose", action="store_true", help="print every run's result (JSON lines)")
    args = ap.parse_args(argv)
    powers = tuple(int(p) for p in args.powers.split(",")) if args.powers else None
    if powers is not None and len(powers) != args.nodes:
        ap.error("--powers needs one power per node")
    if not 0 <= args.byzantine <= args.nodes or args.nodes < 1 or args.seeds < 0 or args.heights < 1:
        ap.error("need 1 <= nodes, 0 <= byzantine <= nodes, seeds >= 0, heights >= 1")
    config = SimConfig(args.nodes, args.byzantine, args.heights, powers, relay=not args.no_relay)
    summary = Summary(config, args.start)
    began = time.perf_counter()
    for seed in range(args.start, args.start + args.seeds):
        result = run_seed(seed, config)
        summary.add(result)
        if args.verbose:
            print(json.dumps(result.to_json(), sort_keys=True))
    elapsed = time.perf_counter() - began
    print(json.dumps(summary.to_json(), sort_keys=True) if args.json else summary.text())
    print(f"{summary.runs} runs in {elapsed:.1f}s ({summary.runs / max(elapsed, 1e-9):.1f} seeds/s)", file=sys.stderr)
    return 1 if summary.failing else 0


if __name__ == "__main__":
    sys.exit(main())
