"""Profile before optimizing: ``python -m benchmarks.profile`` (``tox -e profile``).

Two ways in, both printing the functions that take the time (self and inclusive, by share of samples):

* ``--testnet``: writes and starts 4 validator processes on loopback (``block_interval = 0``, empty
  blocks, the issue-15 network), lets them warm up, then samples one node with **py-spy** (a sampling
  profiler outside the process: the node runs unmodified) for ``--seconds``. ``--idle`` keeps the
  samples where the node waits (epoll, fsync), which is where latency hides; without it only the busy
  samples count (CPU). Also prints heights/s over the window, and CPU ms per height per node from
  ``/proc`` (all 4 nodes), which stays meaningful when the machine is shared.
* ``--part NAME``: runs one benchmark part (``python -m benchmarks --only NAME``) under **pyinstrument**
  in this process and prints its call tree.

``--raw FILE`` keeps py-spy's raw (collapsed-stack) output for flamegraph tools.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from base64 import b64encode
from pathlib import Path

WARMUP_S = 6.0
STARTUP_TIMEOUT_S = 60.0


def summarize(raw_lines: list[str], top: int = 30) -> str:
    """A table of the hottest functions from py-spy's raw (collapsed) output: self time and inclusive time."""
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] for f in stack.split(";")]
        self_t[frames[-1]] += n
        for name in set(frames):
            incl[name] += n
    if not total:
        return "no samples\n"
    out = [f"{total} samples", "", "self %   function"]
    out += [f"{100 * n / total:6.1f}   {name}" for name, n in self_t.most_common(top)]
    out += ["", "incl %   function"]
    out += [f"{100 * n / total:6.1f}   {name}" for name, n in incl.most_common(top + 12)[12:]]
    return "\n".join(out) + "\n"


def _free_base_port(count: int) -> int:
    """A base port with ``count`` consecutive free ports above it (127.0.0.1), for the testnet layout."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count >= 65_000:
            continue
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no run of free ports found on 127.0.0.1")


def _height(folder: Path, port: int) -> int:
    cookie = (folder / "node0" / "data" / ".cookie").read_text().strip()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=b'{"method":"getblockcount","id":1}',
                                 headers={"Authorization": "Basic " + b64encode(cookie.encode()).decode()})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(json.load(resp)["result"])


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])          # utime + stime
    return total


def profile_testnet(seconds: float, idle: bool, raw_out: str | None) -> int:
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy (or run tox -e profile)", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="tc-profile-"))
    base = _free_base_port(12)
    try:
        subprocess.run([sys.executable, "-m", "timecoin", "testnet", "--nodes", "4", "--dir", str(folder / "tn"),
                        "--block-interval", "0", "--base-port", str(base)], check=True, capture_output=True)
        net = folder / "tn"
        runner = subprocess.Popen([sys.executable, "-m", "timecoin", "testnet", "--dir", str(net), "--start"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                try:
                    if _height(net, base + 1) > 0:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    print("the testnet did not start", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            time.sleep(WARMUP_S)
            pids = [int(p) for p in subprocess.run(["pgrep", "-P", str(runner.pid)], capture_output=True,
                                                   text=True).stdout.split()]
            if len(pids) != 4:
                print(f"expected 4 node processes, found {len(pids)}", file=sys.stderr)
                return 1
            raw = raw_out or str(folder / "raw.txt")
            h0, c0, t0 = _height(net, base + 1), _cpu_ticks(pids), time.monotonic()
            cmd = ["py-spy", "record", "-p", str(pids[0]), "-d", str(max(1, int(seconds))), "-r", "250",
                   "-f", "raw", "-o", raw] + (["--idle"] if idle else [])
            subprocess.run(cmd, check=True, capture_output=True)
            h1, c1, t1 = _height(net, base + 1), _cpu_ticks(pids), time.monotonic()
        finally:
            runner.send_signal(signal.SIGTERM)
            runner.wait(timeout=30)
        heights = max(1, h1 - h0)
        cpu_s = (c1 - c0) / os.sysconf("SC_CLK_TCK")
        print(f"{heights} heights in {t1 - t0:.1f} s = {heights / (t1 - t0):.1f} heights/s (node0 sampled by py-spy);"
              f" CPU {1000 * cpu_s / heights / 4:.2f} ms per height per node")
        with open(raw) as f:
            print(summarize(f.readlines()))
        return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def profile_part(name: str) -> int:
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("pyinstrument is not installed: pip install pyinstrument (or run tox -e profile)", file=sys.stderr)
        return 2
    from benchmarks.__main__ import main as bench_main
    profiler = Profiler(interval=0.001)
    profiler.start()
    try:
        bench_main(["--only", name])
    except SystemExit as exc:
        if exc.code not in (0, None):
            return int(exc.code) if isinstance(exc.code, int) else 1
    finally:
        profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    from benchmarks.suite import PARTS
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--testnet", action="store_true", help="py-spy one node of a 4-validator loopback testnet")
    which.add_argument("--part", choices=sorted(PARTS), help="pyinstrument one benchmark part")
    ap.add_argument("--seconds", type=float, default=10.0, help="sampling window (--testnet), default 10")
    ap.add_argument("--idle", action="store_true", help="keep waiting samples too (--testnet)")
    ap.add_argument("--raw", metavar="FILE", help="keep py-spy's raw collapsed stacks here (--testnet)")
    args = ap.parse_args(argv)
    if args.testnet:
        return profile_testnet(args.seconds, args.idle, args.raw)
    return profile_part(args.part)


if __name__ == "__main__":
    raise SystemExit(main())
