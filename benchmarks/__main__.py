"""``python -m benchmarks [--quick] [--json] [--only NAME]``: run the benchmark parts (benchmarks/suite.py).

Exit status 0 when every part ran (targets are reported, not enforced: machines are noisy), 2 on a bad
argument, 1 if a part failed to run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from twisted.internet import defer, task
from twisted.logger import globalLogBeginner

from benchmarks.suite import PARTS, Figure


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the suite runs, not the targets")
    ap.add_argument("--json", action="store_true", help="print one JSON list of figures")
    ap.add_argument("--only", action="append", choices=sorted(PARTS), metavar="NAME",
                    help=f"run only this part (repeatable): {', '.join(sorted(PARTS))}")
    return ap.parse_args(argv)


async def _run(reactor: Any, args: argparse.Namespace) -> None:
    figures: list[Figure] = []
    failed = []
    for name in args.only or sorted(PARTS):
        module, func = PARTS[name].split(":")
        part = getattr(importlib.import_module(module), func)
        try:
            got = await defer.ensureDeferred(part(args.quick))
        except Exception as exc:  # noqa: BLE001 - a part that fails is reported, the others still run
            failed.append(name)
            print(f"{name}: FAILED: {exc!r}", file=sys.stderr)
            continue
        figures.extend(got)
        if not args.json:
            for fig in got:
                print(fig.line(), flush=True)
    if args.json:
        print(json.dumps([f.to_json() for f in figures], indent=1, allow_nan=False))
    if failed:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    # Node log events would otherwise be buffered in memory (and counted as retained by memory figures).
    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)
    task.react(lambda reactor: defer.ensureDeferred(_run(reactor, args)))


if __name__ == "__main__":
    main()
