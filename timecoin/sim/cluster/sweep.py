"""Many seeds of ``timecoin sim`` in one go (``tox -e sim``): one line per run, a summary, exit 1 on any failure.

``python -m timecoin.sim.cluster.sweep --seeds 1-50 --configs 4/1,7/2 --heights 100 [--scenario random]``
runs every (config, seed) pair in a child process (each a clean interpreter under ``PYTHONHASHSEED=0``,
exactly the command a failure prints for replay) and ends with the failing runs' replay commands.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence


def parse_seeds(text: str) -> list[int]:
    """``1-50`` or ``3,7,9`` (or a mix: ``1-5,9``)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            if hi < lo:
                raise ValueError(f"empty seed range {part!r}")
            out.extend(range(lo, hi + 1))
        elif part:
            out.append(int(part))
    if not out:
        raise ValueError("no seeds given")
    return out


def parse_configs(text: str) -> list[tuple[int, int]]:
    """``4/1,7/2``: nodes/byzantine pairs."""
    out = []
    for part in text.split(","):
        nodes, _, byz = part.strip().partition("/")
        out.append((int(nodes), int(byz or 0)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m timecoin.sim.cluster.sweep", description=__doc__)
    p.add_argument("--seeds", default="1-20")
    p.add_argument("--configs", default="4/1,7/2")
    p.add_argument("--heights", type=int, default=100)
    p.add_argument("--scenario", default="random")
    args = p.parse_args(argv)
    try:
        seeds, configs = parse_seeds(args.seeds), parse_configs(args.configs)
    except ValueError as exc:
        p.error(str(exc))
    env = dict(os.environ, PYTHONHASHSEED="0")
    failed: list[str] = []
    runs = 0
    for nodes, byz in configs:
        for seed in seeds:
            cmd = ["timecoin", "sim", "--nodes", str(nodes), "--byzantine", str(byz), "--seed", str(seed),
                   "--heights", str(args.heights), "--scenario", args.scenario]
            proc = subprocess.run([sys.executable, "-m", "timecoin", *cmd[1:]], env=env, capture_output=True,
                                  text=True, check=False)
            runs += 1
            verdict = next((ln for ln in proc.stdout.splitlines() if ln.startswith("result:")), "result: ?")
            print(f"{nodes}/{byz} seed {seed}: exit {proc.returncode}, {verdict}", flush=True)
            if proc.returncode != 0:
                failed.append(" ".join(cmd))
    print(f"{runs} runs, {len(failed)} failed")
    for line in failed:
        print(f"  replay: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
