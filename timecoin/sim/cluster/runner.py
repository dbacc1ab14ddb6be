"""One simulated run of whole nodes: scenario, faults, invariants, and the summary ``timecoin sim`` prints.

:func:`run` builds a :class:`~timecoin.sim.cluster.cluster.Cluster`, gives the last ``byzantine`` nodes
their behaviours, schedules the fault plan, submits a tx workload, and runs the world in steps of
``CHECK_EVERY`` simulated seconds, asking every invariant after each step. It ends when every honest node
has finalized ``heights`` blocks after the last fault healed, when the honest nodes have made no progress
for ``STALL_LIMIT`` simulated seconds after that (a halt), or at the deadline. Everything printed on
stdout is a function of the arguments (real time goes to stderr), so a seed is a replayable test case.

With Byzantine power >= 1/3 the bound of the protocol is broken on purpose: the report says so up front
and names what broke (``fork``: two honest nodes finalized different blocks at a height; ``halt``: the
honest nodes stopped finalizing), instead of counting those as violations.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, cast

from twisted.logger import ILogObserver, LogLevel, globalLogPublisher

from timecoin.sim.cluster.base import Behaviour, Invariant, Trace, Violation
from timecoin.sim.cluster.cluster import SIM_EPOCH_MS, Cluster, SimNode
from timecoin.sim.cluster.faults import FAULT_KINDS, Fault, FaultDriver, draw_skews, plan_faults

CHECK_EVERY = 0.5                # simulated seconds between invariant checks
WARMUP = 2.0                     # faults start after the nodes have dialed each other
STALL_LIMIT = 20.0               # simulated seconds without honest progress after healing: a halt
FAULT_SECONDS_PER_HEIGHT = 0.02  # the fault window scales with the run's length ...
MIN_FAULT_WINDOW = 3.0           # ... but is at least this long
WORKLOAD_RATE = 20.0             # client txs per simulated second, while faults last


class Victims:
    """The PeerIDs that received a node's provable offences, over all its behaviours (live: they grow)."""

    def __init__(self, sets: list[set[str]]) -> None:
        self.sets = sets

    def __contains__(self, peer_id: object) -> bool:
        return any(peer_id in s for s in self.sets)

    def __bool__(self) -> bool:
        return any(self.sets)


def behaviour_names() -> list[str]:
    from timecoin.sim.cluster import byzantine
    return sorted(byzantine.BEHAVIOURS)


@dataclass(frozen=True)
class SimOptions:
    nodes: int
    byzantine: int
    seed: int
    heights: int
    scenario: tuple[str, ...] = ("random",)
    stake_dist: str = "equal"

    def validate(self) -> None:
        if self.nodes < 1:
            raise ValueError("--nodes must be at least 1")
        if not 0 <= self.byzantine <= self.nodes:
            raise ValueError("--byzantine must be between 0 and --nodes")
        if self.byzantine == self.nodes:
            raise ValueError("at least one node must be honest (--byzantine < --nodes)")
        if self.heights < 1:
            raise ValueError("--heights must be at least 1")
        known = set(FAULT_KINDS) | set(behaviour_names()) | {"random", "none"}
        unknown = [s for s in self.scenario if s not in known]
        if unknown:
            raise ValueError(f"unknown scenario {', '.join(unknown)}; known: {', '.join(sorted(known))}")


@dataclass
class SimReport:
    options: SimOptions
    byzantine_share: float
    behaviours: dict[str, str]
    faults: list[str]
    heights_min: int = 0
    heights_max: int = 0
    rounds: Counter[int] = field(default_factory=Counter)
    messages: int = 0
    bytes: int = 0
    bans: list[tuple[str, str]] = field(default_factory=list)      # (banned, by)
    evidence: int = 0
    violations: list[Violation] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    logged_errors: int = 0
    sim_seconds: float = 0.0
    final_height: int = 0
    final_hash: str = ""
    broken: str | None = None          # with >= 1/3 Byzantine power: "fork", "halt" or None
    broken_detail: str = ""
    txs_accepted: int = 0
    txs_final: int = 0
    real_seconds: float = 0.0          # not part of the deterministic output

    @property
    def beyond_bound(self) -> bool:
        return 3 * self.byzantine_share >= 1

    @property
    def ok(self) -> bool:
        if self.beyond_bound:
            return self.broken is None and not self.violations
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        o = self.options
        return {
            "nodes": o.nodes, "byzantine": o.byzantine, "seed": o.seed, "heights": o.heights,
            "scenario": list(o.scenario), "stake_dist": o.stake_dist,
            "byzantine_power_share": round(self.byzantine_share, 6), "beyond_bound": self.beyond_bound,
            "behaviours": self.behaviours, "faults": self.faults,
            "heights_reached": {"min": self.heights_min, "max": self.heights_max},
            "rounds_per_height": {str(k): v for k, v in sorted(self.rounds.items())},
            "messages": self.messages, "bytes": self.bytes,
            "bans": [{"banned": b, "by": by} for b, by in self.bans], "evidence_committed": self.evidence,
            "txs": {"accepted": self.txs_accepted, "finalized": self.txs_final},
            "violations": [v.to_json() for v in self.violations], "exceptions": self.exceptions,
            "logged_errors": self.logged_errors, "simulated_seconds": round(self.sim_seconds, 6),
            "final": {"height": self.final_height, "hash": self.final_hash},
            "broken": self.broken, "broken_detail": self.broken_detail, "ok": self.ok,
        }

    def text(self) -> str:
        o = self.options
        share = f"{100 * self.byzantine_share:.1f}% of the power"
        lines = [f"timecoin sim: {o.nodes} nodes, {o.byzantine} Byzantine ({share}), seed {o.seed}, "
                 f"target {o.heights} heights, stake {o.stake_dist}"]
        if self.beyond_bound:
            lines.append("NOTE: Byzantine power is at or above 1/3: BFT guarantees neither safety nor liveness "
                         "here; this run shows what breaks.")
        lines.append("behaviours: " + (", ".join(f"{k} {v}" for k, v in sorted(self.behaviours.items()))
                                       or "none"))
        lines.append("faults: " + ("; ".join(self.faults) or "none"))
        lines.append(f"heights reached (honest): min {self.heights_min}, max {self.heights_max}")
        hist = ", ".join(f"round {r}: {n}" for r, n in sorted(self.rounds.items())) or "none"
        lines.append(f"rounds per height: {hist}")
        lines.append(f"messages: {self.messages}, bytes: {self.bytes}")
        banned = Counter(b for b, _ in self.bans)
        lines.append("bans: " + (", ".join(f"{b} by {n} honest" for b, n in sorted(banned.items())) or "none"))
        lines.append(f"evidence committed: {self.evidence}")
        lines.append(f"txs: {self.txs_accepted} accepted, {self.txs_final} finalized")
        lines.append(f"exceptions in node code: {len(self.exceptions)}; error lines logged: {self.logged_errors}")
        lines.append(f"simulated time: {self.sim_seconds:.3f} s")
        lines.append(f"final: height {self.final_height} hash {self.final_hash}")
        if self.violations:
            lines.append(f"violations: {len(self.violations)}")
            for v in self.violations[:10]:
                lines.append(f"  {v.invariant} at t={v.time:.3f}s on {v.node}: {v.detail}")
        else:
            lines.append("violations: none")
        if self.beyond_bound:
            lines.append(f"what broke: {self.broken or 'nothing this time'}"
                         + (f" ({self.broken_detail})" if self.broken_detail else ""))
        verdict = "PASS" if self.ok else "FAIL"
        lines.append(f"result: {verdict}" + ("" if self.ok else f" (replay: {replay_command(o)})"))
        return "\n".join(lines) + "\n"


def replay_command(o: SimOptions) -> str:
    return (f"timecoin sim --nodes {o.nodes} --byzantine {o.byzantine} --seed {o.seed} --heights {o.heights} "
            f"--scenario {','.join(o.scenario)} --stake-dist {o.stake_dist} --trace trace.jsonl")


class _Run:
    """The state of one run (the cluster, the trace, what was seen)."""

    def __init__(self, options: SimOptions, trace_out: IO[str] | None,
                 invariants: list[Invariant] | None, workdir: str | None) -> None:
        self.o = options
        self.exceptions: list[str] = []
        self.logged_errors = 0
        self.cluster = Cluster(options.nodes, options.seed, workdir=workdir, stake_dist=options.stake_dist,
                               byzantine=options.byzantine, on_error=self._exception)
        self.trace = Trace(trace_out, start=self.cluster.now())
        self.rng = random.Random(f"timecoin-sim/{options.seed}/scenario")
        self.given_invariants = invariants
        self.invariants: list[Invariant] = []
        self.workload: Any = None
        self.behaviours: dict[str, list[Behaviour]] = {}     # node name -> its behaviours, installed in order
        self.faults: list[Fault] = []
        self.t0 = self.cluster.now()

    def emit(self, kind: str, **fields: Any) -> None:
        self.trace.emit(self.cluster.now(), kind, **fields)

    def _exception(self, where: str, exc: BaseException) -> None:
        text = f"{where}: {type(exc).__name__}: {exc}"
        self.exceptions.append(text)
        self.emit("exception", node=where, error=f"{type(exc).__name__}: {exc}")

    def _log_observer(self, event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical):
            self.logged_errors += 1
            fmt = str(event.get("log_format", ""))
            self.emit("log", level=event["log_level"].name, text=fmt[:200])

    # -- set-up ----------------------------------------------------------------------------------------
    def setup(self) -> None:
        c, o = self.cluster, self.o
        kinds = self._choose()
        window = max(MIN_FAULT_WINDOW, FAULT_SECONDS_PER_HEIGHT * o.heights)
        from timecoin.sim.cluster.workload import Workload
        self.workload = Workload(c, random.Random(f"timecoin-sim/{o.seed}/workload"), WORKLOAD_RATE, self.trace,
                                 stop_at=self.t0 + WARMUP + window)
        if self.given_invariants is not None:
            self.invariants = self.given_invariants
        else:
            from timecoin.sim.cluster.invariants import all_invariants
            self.invariants = all_invariants(workload=self.workload)
        for inv in self.invariants:
            inv.attach(c, self.trace)
        c.on_build.append(self._install)
        c.on_build.append(self._watch_commits)
        if self.trace.out is not None:
            c.network.on_chunk = lambda a, b, n: self.emit("send", src=a, dst=b, bytes=n)
        if "skew" in kinds:
            precision = float(c.config_extra.get("precision", "0.05"))
            for sn, skew in zip(c.nodes, draw_skews(self.rng, o.nodes, precision), strict=True):
                sn.skew = skew
        honest = [sn.index for sn in c.honest()]
        count = self.rng.randint(1, 3) if any(k in kinds for k in FAULT_KINDS) else 0
        self.faults = plan_faults(self.rng, kinds, o.nodes, honest, (WARMUP, WARMUP + window), count)
        c.healed_at = self.t0 + (max((f.end for f in self.faults), default=0.0))  # type: ignore[attr-defined]
        c.provable = {}  # type: ignore[attr-defined]
        c.victims = {}  # type: ignore[attr-defined]
        for name, bs in self.behaviours.items():
            provable = [b for b in bs if b.provable]
            if provable:
                proofs = {getattr(b, "proof", "either") for b in provable}
                c.provable[name] = proofs.pop() if len(proofs) == 1 else "either"  # type: ignore[attr-defined]
                c.victims[name] = Victims([getattr(b, "victims", set()) for b in provable])  # type: ignore[attr-defined]
        FaultDriver(c, self.faults, self.emit).schedule(self.t0)
        self._schedule_restarts(self.t0 + WARMUP, self.t0 + WARMUP + window)
        c.start_all()

    def _choose(self) -> list[str]:
        """Behaviours of the Byzantine nodes and the fault kinds, from the scenario (``random``: drawn)."""
        c, o = self.cluster, self.o
        names = set(behaviour_names()) if o.byzantine else set()
        scen = [s for s in o.scenario if s != "none"]
        wanted = [s for s in scen if s in names]
        kinds = [s for s in scen if s in FAULT_KINDS]
        if "random" in scen:
            kinds = list(FAULT_KINDS)
        byz = [sn for sn in c.nodes if sn.byzantine]
        from timecoin.sim.cluster.byzantine import make_behaviour
        if byz and wanted:
            # Named behaviours go to the Byzantine nodes in turn; with more names than nodes a node gets several.
            for i, name in enumerate(wanted):
                self.behaviours.setdefault(byz[i % len(byz)].name, []).append(make_behaviour(name))
            for i, sn in enumerate(byz[len(wanted):]):
                self.behaviours[sn.name] = [make_behaviour(wanted[i % len(wanted)])]
        elif byz and "random" in scen:
            for sn in byz:
                self.behaviours[sn.name] = [make_behaviour(self.rng.choice(sorted(names)))]
        return kinds

    def _schedule_restarts(self, start: float, end: float) -> None:
        """Behaviours that need restarts (amnesia: it forgets its lock each time) get them inside the fault window."""
        c = self.cluster
        for name, bs in sorted(self.behaviours.items()):
            every = min((getattr(b, "restart_every", 0) or 0 for b in bs), default=0)
            if not every:
                continue
            sn = next(n for n in c.nodes if n.name == name)
            t = start + every
            while t < end:
                c.scheduler.at(t, None, self._restart_byzantine, sn)
                t += every

    def _restart_byzantine(self, sn: SimNode) -> None:
        if sn.state in ("up", "paused"):
            self.emit("fault", fault="restart", nodes=[sn.name])
            self.cluster.restart(sn)

    def _install(self, sn: SimNode) -> None:
        for i, b in enumerate(self.behaviours.get(sn.name, [])):
            suffix = f"/{i}" if i else ""
            b.install(sn, self.cluster,
                      random.Random(f"timecoin-sim/{self.o.seed}/{sn.name}/{sn.incarnation}{suffix}"), self.trace)

    def _watch_commits(self, sn: SimNode) -> None:
        node = sn.node
        assert node is not None

        def committed(block: Any, *rest: Any) -> None:
            self.emit("commit", node=sn.name, height=block.height, hash=block.hash.hex()[:16])

        node.consensus.on_commit.append(committed)

    # -- the run ---------------------------------------------------------------------------------------
    def execute(self) -> SimReport:
        c, o = self.cluster, self.o
        healed = c.healed_at  # type: ignore[attr-defined]
        deadline = max(healed, self.t0 + WARMUP) + 30.0 + 0.5 * o.heights
        violations: list[Violation] = []
        last_progress, last_min = self.t0, -1
        while c.now() < deadline:
            c.run_for(CHECK_EVERY)
            self._collect(violations, final=False)
            hs = [sn.height() for sn in c.honest() if sn.state == "up"]
            low = min(hs) if hs else -1
            if low > last_min:
                last_min, last_progress = low, c.now()
            if c.now() >= healed and low >= o.heights:
                break
            if c.now() >= healed and c.now() - max(last_progress, healed) > STALL_LIMIT:
                self.emit("stall", since=round(last_progress - self.t0, 6), height=low)
                break
        self._collect(violations, final=True)
        return self._report(violations)

    def _collect(self, into: list[Violation], final: bool) -> None:
        """Ask every invariant; violations keep their time relative to the run's start."""
        for inv in self.invariants:
            for v in inv.check(self.cluster, final=final):
                v = Violation(v.invariant, v.time - self.t0, v.node, v.detail)
                into.append(v)
                self.emit("violation", **v.to_json())

    def _report(self, violations: list[Violation]) -> SimReport:
        c, o = self.cluster, self.o
        share = c.byzantine_power / c.total_power
        rep = SimReport(o, share, {k: "+".join(b.name for b in v) for k, v in self.behaviours.items()},
                        [f.describe() for f in self.faults])
        honest = [sn for sn in c.honest() if sn.node is not None and sn.node.store is not None]
        hs = [sn.height() for sn in honest]
        rep.heights_min, rep.heights_max = (min(hs), max(hs)) if hs else (0, 0)
        if honest:
            ref = honest[0].node
            assert ref is not None and ref.store is not None
            top = min(rep.heights_min, o.heights) if rep.heights_min >= 0 else 0
            for h in range(1, top + 1):
                cert = ref.store.get_certificate(h)
                block = ref.store.get_block(h)
                if cert is not None:
                    rep.rounds[cert.round] += 1
                if block is not None:
                    rep.evidence += len(block.evidence)
            rep.final_height = top
            fh = ref.store.block_hash_at(top) if top > 0 else None
            rep.final_hash = fh.hex() if fh else ""
            now = c.now()
            names = {sn.peer_id: sn.name for sn in c.nodes}
            for sn in honest:
                assert sn.node is not None
                peers = getattr(sn.node.p2p, "peers", None)
                if peers is None:
                    continue
                for ban in peers.list_bans(now):
                    if ban.kind == "peer" and ban.target in names:
                        rep.bans.append((names[ban.target], sn.name))
            rep.bans.sort()
        rep.messages, rep.bytes = c.network.stats.chunks, c.network.stats.bytes
        rep.exceptions = list(self.exceptions)
        rep.logged_errors = self.logged_errors
        rep.sim_seconds = c.now() - self.t0
        if self.workload is not None and honest:
            store: Any = honest[0].node.store  # type: ignore[union-attr]
            rep.txs_accepted = len(self.workload.accepted)
            rep.txs_final = len([s for s in self.workload.accepted if store.tx_location(s.txid) is not None])
        if rep.beyond_bound:
            forks = [v for v in violations if v.invariant == "agreement"]
            safety = [v for v in violations if v.invariant in ("agreement", "validity")]
            rep.broken = "fork" if forks else ("halt" if rep.heights_min < o.heights else None)
            if forks:
                v = forks[0]
                rep.broken_detail = f"first at t={v.time:.3f}s on {v.node}: {v.detail}"
            elif rep.broken == "halt":
                rep.broken_detail = f"the honest nodes stopped at height {rep.heights_min}"
            # Beyond the bound only what honest nodes themselves do wrong still counts (signing conflicts);
            # agreement, validity, liveness, durability and accountability are what the bound buys.
            rep.violations = [v for v in violations if v not in safety and v.invariant == "integrity"]
        else:
            rep.violations = violations
            if rep.heights_min < o.heights and not any(v.invariant == "liveness" for v in violations):
                rep.violations.append(Violation("liveness", c.now() - self.t0, "honest",
                                                f"the honest nodes reached only height {rep.heights_min} of "
                                                f"{o.heights} by the deadline"))
        for e in self.exceptions:
            rep.violations.append(Violation("exception", 0.0, e.split(":", 1)[0], e))
        return rep


def run(options: SimOptions, trace_out: IO[str] | None = None, invariants: list[Invariant] | None = None,
        workdir: str | None = None) -> SimReport:
    """One run; the report's ``real_seconds`` is the only figure that is not a function of ``options``."""
    options.validate()
    started = time.perf_counter()
    r = _Run(options, trace_out, invariants, workdir)
    globalLogPublisher.addObserver(cast(ILogObserver, r._log_observer))
    try:
        r.setup()
        report = r.execute()
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, r._log_observer))
        r.cluster.close()
    report.real_seconds = time.perf_counter() - started
    return report


__all__ = ["SIM_EPOCH_MS", "SimOptions", "SimReport", "replay_command", "run"]
