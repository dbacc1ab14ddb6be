"""``timecoin sim``: run whole nodes in the simulated world and print what happened (docs/simulation.md).

stdout is a function of the arguments alone, byte for byte: Python's string hashing is seeded per process
(``PYTHONHASHSEED``), and set iteration order in the node follows it, so the command re-executes itself
once with ``PYTHONHASHSEED=0`` when it is not already set to that. Real time and the simulated heights per
real second go to stderr. Exit status: 0 when no invariant broke, 1 otherwise (with the seed and the
first violating event), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import IO

HASHSEED = "0"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=4, help="validators in the world (default 4)")
    p.add_argument("--byzantine", type=int, default=0, help="of them Byzantine: the last F nodes (default 0)")
    p.add_argument("--seed", type=int, default=1, help="the seed: the same arguments replay the same run")
    p.add_argument("--heights", type=int, default=50, help="heights every honest node must finalize (default 50)")
    p.add_argument("--scenario", default="random",
                   help="comma-separated Byzantine behaviours and fault kinds, or random / none (default random)")
    p.add_argument("--stake-dist", choices=("equal", "zipf"), default="equal", help="stake per validator")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--trace", metavar="FILE", help="write every event as JSON lines to FILE")
    p.add_argument("--workdir", metavar="DIR", help="where the nodes' datadirs go (default: a fresh temp folder)")


def reexec_with_fixed_hashseed(argv: Sequence[str]) -> None:
    """Run again under ``PYTHONHASHSEED=0`` (once) so that two runs print the same bytes."""
    if os.environ.get("PYTHONHASHSEED") == HASHSEED or os.environ.get("TIMECOIN_SIM_NO_REEXEC"):
        return
    env = dict(os.environ, PYTHONHASHSEED=HASHSEED)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "timecoin", *argv], env)


def _quiet_node_logs() -> None:
    """The nodes' own log lines are counted and traced by the run (``log`` events), not printed: begin
    Twisted's logging with no observer, or its temporary stderr observer would print every error line."""
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)


def run_command(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    from timecoin.sim.cluster.runner import SimOptions, run

    out = out or sys.stdout
    err = err or sys.stderr
    scenario = tuple(s.strip() for s in args.scenario.split(",") if s.strip()) or ("none",)
    options = SimOptions(args.nodes, args.byzantine, args.seed, args.heights, scenario, args.stake_dist)
    try:
        options.validate()
    except ValueError as exc:
        err.write(f"timecoin sim: error: {exc}\n")
        return 2
    _quiet_node_logs()
    trace = None
    try:
        if args.trace:
            trace = open(args.trace, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        report = run(options, trace_out=trace, workdir=args.workdir)
    except OSError as exc:
        err.write(f"timecoin sim: error: {exc}\n")
        return 2
    finally:
        if trace is not None:
            trace.close()
    if args.json:
        out.write(json.dumps(report.to_json(), sort_keys=True) + "\n")
    else:
        out.write(report.text())
    rate = report.heights_min / report.real_seconds if report.real_seconds > 0 else 0.0
    err.write(f"real time: {report.real_seconds:.2f} s ({rate:.1f} simulated heights per real second)\n")
    return 0 if report.ok else 1
