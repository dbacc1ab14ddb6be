"""A bounded soak: ``python -m timecoin.chaos.soak --minutes 10 [--json]`` (``tox -e soak``; docs/soak.md).

Four validators as real ``twistd -n timecoin`` processes (the :mod:`timecoin.testnet` layout and
supervisor, JSON logs), under

* **load**: the load generator of ``timecoin bench load`` (:func:`timecoin.bench.load.run_load`) at
  ``--rate`` tx/s for the whole run, to the steady nodes;
* **churn**: every ``--churn-every`` seconds one node of ``--churn`` (rotating) is stopped (SIGTERM) and
  started again; the other nodes see a validator leave and rejoin each time;
* **one Byzantine peer** (:mod:`timecoin.chaos.byzpeer`): far-height votes, replays and requests on a
  connection to every node, then a junk frame, then redials until the end.

Every ``--interval`` seconds each node is sampled: RSS and open fds (``/proc``), ``data.mdb`` size, the LMDB
map in use (``timecoin_store_used_bytes`` on ``/metrics``) and its height. The verdict
(:func:`timecoin.chaos.soakcheck.judge`): the chain kept finalizing, RSS and fd slopes of the steady nodes
are below the bounds after the warm-up, LMDB growth per block is flat, no node logged an error, and every
node has banned the Byzantine peer. Exit status 0 on a pass, 1 on a failure, 2 when it could not start.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from typing import IO, Any

from timecoin import crypto
from timecoin.bench.load import LoadError, LoadReport, LoadSettings, run_load
from timecoin.chaos.soakcheck import Limits, Sample, Verdict, judge, samples_table
from timecoin.rpc import clicall
from timecoin.testnet import (
    KEY_FILE,
    LOG_FILE,
    Child,
    Layout,
    NodeInfo,
    Supervisor,
    TestnetError,
    node_command,
    write_testnet,
)

NODES = 4
STARTUP = 90.0          # seconds for every node to finalize a block
RPC_TIMEOUT = 5.0
LOAD_SEGMENT = 60.0     # seconds of load per run_load call (see Soak.start_load)
# Heap a node may add per transaction while its bounded caches fill (docs/soak.md): the verified-signature
# and seen-cache entries (about 170 bytes each, one or two per tx and per vote) with room for dict growth.
CACHE_BYTES_PER_TX = 600


def free_base_port(count: int, tries: int = 50) -> int:
    """A base port with ``count`` consecutive free loopback ports (P2P, RPC, metrics), bounded tries."""
    import random
    import socket

    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(20_000, 60_000)
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise TestnetError(f"no block of {count} free loopback ports found in {tries} tries")


def proc_figures(pid: int) -> tuple[int, int, int]:
    """(VmRSS in kB, RssAnon in kB, open fds) of a running process; zeros if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return (int(fields["VmRSS"].split()[0]), int(fields["RssAnon"].split()[0]),
                len(os.listdir(f"/proc/{pid}/fd")))
    except (OSError, ValueError, KeyError):
        return 0, 0, 0


def metric(port: int, name: str) -> int:
    """One gauge of a node's ``/metrics``; -1 when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=RPC_TIMEOUT) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(name + " "):
                    return int(float(line.split()[1]))
    except (OSError, ValueError):
        pass
    return -1


class Soak:
    """One run (see the module doc); ``run()`` returns the verdict."""

    def __init__(self, directory: str, minutes: float, interval: float, rate: float, churn: Sequence[int],
                 churn_every: float, provable_after: float, limits: Limits, out: IO[str]) -> None:
        self.directory = os.path.abspath(directory)
        self.duration = minutes * 60
        self.interval = interval
        self.rate = rate
        self.churn = list(churn)
        self.churn_every = churn_every
        self.provable_after = provable_after
        self.limits = limits
        self.out = out
        self.sup = Supervisor(out, out)
        self.children: dict[int, Child] = {}
        self.samples: list[Sample] = []
        self.layout: Layout | None = None
        self.load_reports: list[LoadReport] = []
        self.load_error: str | None = None
        self.problems: list[str] = []
        self.byz_status: dict[str, Any] = {}
        self.t0 = 0.0

    def say(self, text: str) -> None:
        self.out.write(f"soak [{time.monotonic() - self.t0:6.0f}s] {text}\n" if self.t0 else f"soak: {text}\n")
        self.out.flush()

    # -- setup --------------------------------------------------------------------------------------
    def write(self) -> Layout:
        base = free_base_port(3 * NODES)
        layout = write_testnet(self.directory, NODES, base_port=base)
        for node in layout.nodes:           # JSON lines: every event keeps its level, so the check reads it
            with open(node.config_file, "a", encoding="utf-8") as f:
                f.write("# Written by the soak run: one JSON event per line, with its level.\nlog_format = json\n")
        return layout

    def endpoint(self, node: NodeInfo) -> clicall.Endpoint:
        user, password = clicall.read_cookie(node.datadir)
        return clicall.Endpoint("127.0.0.1", node.rpc_port, user, password)

    def call(self, node: NodeInfo, method: str, *params: Any) -> Any:
        return clicall.call(self.endpoint(node), method, list(params), timeout=RPC_TIMEOUT)

    def height(self, node: NodeInfo) -> int:
        try:
            return int(self.call(node, "getblockcount"))
        except (clicall.CallError, clicall.RPCCallError, OSError, ValueError, TypeError):
            return -1

    def wait_heights(self, nodes: Sequence[NodeInfo], above: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        for _ in range(int(seconds) * 2 + 2):
            if all(self.height(n) > above for n in nodes):
                return True
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return False

    # -- the parts ------------------------------------------------------------------------------------
    def start_byzpeer(self, layout: Layout) -> None:
        folder = os.path.join(self.directory, "byzpeer")
        os.makedirs(folder, exist_ok=True)
        key = crypto.PrivateKey.generate()
        key.save(os.path.join(folder, "byz.key"))
        self.byz_id = key.peer_id
        self.byz_status_file = os.path.join(folder, "status.json")
        argv = [sys.executable, "-m", "timecoin.chaos.byzpeer", "--dir", self.directory, "--key", "byz.key",
                "--status", self.byz_status_file, "--provable-after", f"{self.provable_after:g}"]
        self.byz = self.sup.start("byzpeer", folder, argv, log_file="byzpeer.log")

    def start_load(self, steady: Sequence[NodeInfo], until: float) -> threading.Thread:
        """Load in segments of ``LOAD_SEGMENT`` seconds until ``until`` (seconds into the run): each segment
        funds its senders and pre-signs only its own transactions, so setup stays a few seconds however
        long the run; the figures of the segments are summed."""
        funders = [crypto.PrivateKey.load(os.path.join(n.dir, KEY_FILE)) for n in steady]
        endpoints = [self.endpoint(n) for n in steady]

        def go() -> None:
            for _ in range(100_000):                      # bounded: each pass takes a segment or ends the loop
                left = until - (time.monotonic() - self.t0) - 15.0    # funding, signing and the drain
                if left < 10.0:
                    return
                try:
                    report = run_load(endpoints, funders, LoadSettings(rate=self.rate, duration=min(LOAD_SEGMENT, left),
                                                                      drain=10.0))
                except (LoadError, clicall.CallError, OSError) as exc:
                    self.load_error = str(exc)
                    return
                self.load_reports.append(report)

        thread = threading.Thread(target=go, daemon=True, name="soak-load")
        thread.start()
        return thread

    def restart(self, node: NodeInfo) -> None:
        child = self.children[node.index]
        child.reported = True                             # an exit we caused is not a crash
        child.proc.send_signal(signal.SIGTERM)
        try:
            code = child.proc.wait(timeout=30)
        except Exception:                                 # noqa: BLE001 - TimeoutExpired: the stop hung
            child.proc.kill()
            child.proc.wait(timeout=10)
            code = None
        if code != 0:
            self.problems.append(f"{node.name} did not stop cleanly on SIGTERM (exit {code})")
        self.children[node.index] = self.sup.start(node.name, node.dir, node_command())
        self.say(f"churn: restarted {node.name} (exit {code}; new pid {self.children[node.index].pid})")

    def sample(self, layout: Layout) -> None:
        at = round(time.monotonic() - self.t0, 1)
        for node in layout.nodes:
            pid = self.children[node.index].pid
            rss, anon, fds = proc_figures(pid)
            try:
                mdb = os.path.getsize(os.path.join(node.datadir, "chain", "data.mdb"))
            except OSError:
                mdb = 0
            self.samples.append(Sample(at, node.name, pid, rss, anon, fds, mdb,
                                       metric(node.metrics_port, "timecoin_store_used_bytes"), self.height(node)))
        last = self.samples[-len(layout.nodes):]
        self.say("sample: " + "; ".join(f"{s.node} h{s.height} {s.rss_kb / 1024:.0f}MB (anon {s.anon_kb / 1024:.0f}) "
                                        f"{s.fds}fd" for s in last))

    def banned_by(self, layout: Layout) -> dict[str, bool]:
        out = {}
        for node in layout.nodes:
            try:
                bans = self.call(node, "listbanned")
                out[node.name] = any(b.get("address") == self.byz_id for b in bans)
            except (clicall.CallError, clicall.RPCCallError, OSError):
                self.problems.append(f"{node.name}: listbanned did not answer")
        return out

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> Verdict:
        layout = self.layout = self.write()
        self.say(f"testnet {layout.chain_id} in {self.directory}; {self.duration:g} s, sample every "
                 f"{self.interval:g} s, load {self.rate:g} tx/s, churn {self.churn} every {self.churn_every:g} s")
        for node in layout.nodes:
            self.children[node.index] = self.sup.start(node.name, node.dir, node_command())
        if not self.wait_heights(layout.nodes, 1, STARTUP):
            return Verdict([f"not every node finalized a block within {STARTUP:g} s of starting"])
        steady = [n for n in layout.nodes if n.index not in self.churn]
        self.t0 = time.monotonic()
        self.start_byzpeer(layout)
        load = self.start_load(steady, self.duration)
        next_sample, next_churn, turn = 0.0, self.churn_every, 0
        while True:                                        # bounded: ends at the duration
            now = time.monotonic() - self.t0
            if now >= next_sample:
                self.sample(layout)
                next_sample += self.interval
                if next_sample > self.duration + 0.5:
                    break
            if self.churn and now >= next_churn and now < self.duration - self.interval / 2:
                node = next(n for n in layout.nodes if n.index == self.churn[turn % len(self.churn)])
                self.restart(node)
                turn += 1
                next_churn += self.churn_every
            for child in self.sup.check():
                self.problems.append(f"{child.name} exited unexpectedly (see {os.path.join(child.dir, LOG_FILE)})")
            time.sleep(min(0.5, max(0.0, next_sample - (time.monotonic() - self.t0))))
        load.join(60.0)
        if load.is_alive():
            self.problems.append("the load generator did not finish within 60 s of the end")
        banned = self.banned_by(layout)
        return self.finish(layout, steady, banned)

    def finish(self, layout: Layout, steady: Sequence[NodeInfo], banned: dict[str, bool]) -> Verdict:
        self.stop()
        try:
            with open(self.byz_status_file, encoding="utf-8") as f:
                self.byz_status = json.load(f)
        except (OSError, ValueError, AttributeError):
            self.problems.append("the Byzantine peer wrote no status")
        logs = {}
        for node in layout.nodes:
            with open(os.path.join(node.dir, LOG_FILE), encoding="utf-8", errors="replace") as f:
                logs[node.name] = f.readlines()
        verdict = judge(self.samples, logs, banned, self.limits, [n.name for n in steady])
        verdict.problems = self.problems + verdict.problems
        if self.load_error:
            verdict.problems.append(f"load generator: {self.load_error}")
        elif not self.load_reports:
            verdict.problems.append("the load generator reported nothing")
        elif sum(r.finalized for r in self.load_reports) == 0:
            verdict.problems.append("the load generator saw no transaction finalized")
        for name, counts in self.byz_status.get("nodes", {}).items():
            if not counts.get("far_votes") or not counts.get("junk_frames"):
                verdict.problems.append(f"the Byzantine peer delivered too little to {name}: {counts}")
        return verdict

    def stop(self) -> None:
        self.sup.stop(grace=15.0)


def load_summary(reports: Sequence[LoadReport]) -> dict[str, Any]:
    """The load segments summed: txs submitted, finalized and rejected, and tx/s over the submitting time."""
    seconds = sum(r.submitted / r.submit_tx_per_s for r in reports if r.submit_tx_per_s)
    finalized = sum(r.finalized for r in reports)
    return {"segments": len(reports), "submitted": sum(r.submitted for r in reports),
            "unsent": sum(r.unsent for r in reports), "rejected": sum(r.rejected for r in reports),
            "finalized": finalized, "submit_seconds": round(seconds, 1),
            "finalized_tx_per_s": round(finalized / seconds, 1) if seconds else 0.0,
            "latency_p50_ms_worst": max((r.latency_ms.get("p50", 0.0) for r in reports), default=0.0),
            "latency_p99_ms_worst": max((r.latency_ms.get("p99", 0.0) for r in reports), default=0.0)}


def report(soak: Soak, verdict: Verdict, as_json: bool, out: IO[str]) -> None:
    load = load_summary(soak.load_reports)
    if as_json:
        out.write(json.dumps({"passed": verdict.passed, "problems": verdict.problems, "figures": verdict.figures,
                              "load": load, "byzantine": soak.byz_status,
                              "limits": asdict(soak.limits), "samples": [asdict(s) for s in soak.samples]},
                             indent=1) + "\n")
        return
    out.write(samples_table(soak.samples) + "\n\n")
    for node, figures in sorted(verdict.figures.items()):
        out.write(f"{node}: " + ", ".join(f"{k} {v:g}" for k, v in figures.items()) + "\n")
    out.write("load: " + ", ".join(f"{k} {v}" for k, v in load.items()) + "\n")
    for name, counts in soak.byz_status.get("nodes", {}).items():
        out.write(f"byzantine peer -> {name}: {counts}\n")
    if verdict.passed:
        out.write("soak: PASS\n")
    else:
        out.write(f"soak: FAIL: {len(verdict.problems)} problem(s)\n" + "".join(f"  {p}\n" for p in verdict.problems))
    out.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m timecoin.chaos.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=None, help="seconds not judged for slopes (default: 2 samples)")
    ap.add_argument("--rate", type=float, default=100.0, help="load in tx/s")
    ap.add_argument("--churn", default="3", help="comma-separated indexes of the nodes restarted in turn")
    ap.add_argument("--churn-every", type=float, default=60.0)
    ap.add_argument("--provable-after", type=float, default=None,
                    help="seconds before the Byzantine peer's provable offence (default: half the run)")
    ap.add_argument("--rss-mb-per-min", type=float, default=None,
                    help="bound on the RssAnon slope (default: 1 MB + 600 bytes per tx of load, per minute)")
    ap.add_argument("--fd-per-min", type=float, default=Limits.fd_per_min)
    ap.add_argument("--dir", default=None, help="the testnet folder (default: a temporary one, removed on a pass)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not 0.5 <= args.minutes <= 24 * 60 or not 1 <= args.interval <= args.minutes * 30:
        sys.stderr.write("soak: --minutes must be 0.5..1440 and --interval 1 s .. half the run\n")
        return 2
    warmup = args.warmup if args.warmup is not None else 2 * args.interval
    rss_bound = args.rss_mb_per_min if args.rss_mb_per_min is not None else \
        Limits.rss_mb_per_min + args.rate * 60 * CACHE_BYTES_PER_TX / 2**20
    limits = Limits(warmup=warmup, rss_mb_per_min=rss_bound, fd_per_min=args.fd_per_min)
    churn = [int(i) for i in args.churn.split(",") if i.strip()]
    if any(not 0 <= i < NODES for i in churn) or len(churn) >= NODES - 1:
        sys.stderr.write(f"soak: --churn takes at most {NODES - 2} indexes of 0..{NODES - 1}\n")
        return 2
    provable = args.provable_after if args.provable_after is not None else args.minutes * 30
    directory = args.dir or tempfile.mkdtemp(prefix="timecoin-soak-")
    log_out = sys.stderr if args.json else sys.stdout
    soak = Soak(directory, args.minutes, args.interval, args.rate, churn, args.churn_every, provable, limits, log_out)
    try:
        verdict = soak.run()
    except (TestnetError, OSError) as exc:
        sys.stderr.write(f"soak: cannot run: {exc}\n")
        return 2
    finally:
        soak.stop()                                  # every child, whatever happened (idempotent)
    report(soak, verdict, args.json, sys.stdout)
    if not verdict.passed:
        sys.stderr.write(f"soak: the testnet is kept in {directory}\n")
    elif args.dir is None:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
