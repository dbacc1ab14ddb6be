"""A node holding a long chain (issue 15 target 8): RSS, start-up to serving, and ``getblock`` latency.

The chain is built fast and written straight into a store (``timecoin.sim.chaingen``: certified empty
blocks of one validator, 100 ms apart; the store opened without per-commit fsync, ``Store(durable=False)``),
and cached in the temp folder under a key of the sources that define its bytes, so only the first run on a
machine pays for building it. Each run copies it to a fresh datadir and starts a real node process on it
(``twistd -n timecoin``, this checkout on ``PYTHONPATH``) as an observer: its key is not the validator's
and it has no peers, so it serves what it holds and writes nothing of consensus.

* ``bignode.startup``: seconds (median of 3 starts) from spawning the process until ``getblockcount``
  answers the chain's height over JSON-RPC (polled every 10 ms). Target <= 2 s. Baseline: the same on a
  store holding only genesis.
* ``bignode.rss``: the process's ``VmRSS`` (``/proc/<pid>/status``) once it has served the getblock runs.
  Target <= 150 MB. Baseline: the RSS of the genesis-only node at the same point. VmRSS counts the pages
  of the LMDB map the process has touched (RssFile: reclaimable page cache, ~the whole 65 MB file after
  random reads of 100,000 blocks), on top of its own heap (RssAnon, ~46 MB).
* ``bignode.getblock.v1`` / ``.v2``: per-request latency of ``getblock <hash> 1|2`` for random heights, one
  request at a time on one keep-alive HTTP connection (``http.client``). Target: median <= 1 ms. Baseline:
  ``getblockcount`` on the same connection, interleaved with them (what HTTP, auth and JSON-RPC dispatch
  cost by themselves under the same load).
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import threads

from benchmarks.suite import Figure, value_figure
from timecoin import crypto
from timecoin.sim import chaingen
from timecoin.store import SCHEMA_VERSION, Store

ROOT = Path(__file__).resolve().parent.parent
BLOCKS, QUICK_BLOCKS = 100_000, 5_000
GENESIS_TIME_MS = 1_767_225_600_000           # 2026-01-01: fixed, so a cached chain is the same chain
BLOCK_INTERVAL_MS = 100
USER, PASSWORD = "bench", "bench-password"
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
STARTUP_TIMEOUT = 60.0
POLL_S = 0.01
REQUESTS, QUICK_REQUESTS = 2_000, 300
STARTS = 3                                    # start-ups measured per store (the median counts)
MAX_STARTUP_S, MAX_RSS_MB, MAX_GETBLOCK_MS = 2.0, 150.0, 1.0
# The files whose changes change the bytes of a built chain: a cached one built by other code is rebuilt.
SOURCES = ("timecoin/wire/messages.py", "timecoin/ledger/block.py", "timecoin/ledger/genesis.py",
           "timecoin/ledger/state.py", "timecoin/sim/chaingen.py")


def _spec() -> chaingen.ChainSpec:
    return chaingen.make_genesis(validators=1, chain_id="timecoin-bench-bignode", genesis_time=GENESIS_TIME_MS)


def _cache_key(blocks: int) -> str:
    digest = hashlib.sha256(b"%d %d" % (blocks, SCHEMA_VERSION))
    for rel in SOURCES:
        digest.update((ROOT / rel).read_bytes())
    return digest.hexdigest()[:16]


def built_chain(blocks: int) -> Path:
    """A datadir template (``chain/``, ``genesis.json``) holding ``blocks`` certified blocks, built once.

    Built in a private folder and renamed into place whole, so concurrent runs never see a half-built one.
    """
    cache = Path(tempfile.gettempdir()) / f"timecoin-bench-bignode-{blocks}-{_cache_key(blocks)}"
    if (cache / "complete").exists():
        return cache
    building = Path(tempfile.mkdtemp(prefix=cache.name + ".building-", dir=cache.parent))
    try:
        spec = _spec()
        (building / "genesis.json").write_text(spec.genesis.to_json())
        store = Store(str(building / "chain"), durable=False)
        try:
            chaingen.ChainBuilder(store, spec, block_interval_ms=BLOCK_INTERVAL_MS).build(blocks)
            if store.tip_height() != blocks:
                raise RuntimeError(f"built {store.tip_height()} blocks, not {blocks}")
        finally:
            store.close()
        os.sync()                                     # the store was written without fsync: flush it once
        (building / "complete").write_text("ok\n")
        shutil.rmtree(cache, ignore_errors=True)      # an incomplete leftover of a killed run
        try:
            os.rename(building, cache)
        except OSError:
            if not (cache / "complete").exists():     # not another run's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return cache


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RPC:
    """A keep-alive JSON-RPC client (one request at a time)."""

    def __init__(self, port: int) -> None:
        auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.headers = {"Content-Type": "application/json", "Authorization": auth}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, *params: Any) -> Any:
        body = json.dumps({"jsonrpc": "1.0", "id": 1, "method": method, "params": list(params)})
        self.conn.request("POST", "/", body, self.headers)
        reply = json.loads(self.conn.getresponse().read())
        if reply.get("error") is not None:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        self.conn.close()


class NodeProcess:
    """A real ``twistd -n timecoin`` observer on a copy of a datadir template."""

    def __init__(self, template: Path, workdir: Path) -> None:
        self.datadir = workdir / "data"
        shutil.copytree(template / "chain", self.datadir / "chain")
        crypto.PrivateKey(hashlib.sha256(b"bignode observer").digest()).save(str(self.datadir / "node.key"))
        self.genesis = template / "genesis.json"
        self.port = _free_port()
        self.log = workdir / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        args = ["--network", "testnet", "--datadir", str(self.datadir), "--genesis-file", str(self.genesis),
                "--p2p-port", "0", "--rpc-port", str(self.port), "--metrics-port", "0",
                "--rpc-user", USER, "--rpc-password", PASSWORD]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log, "ab") as out:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen([sys.executable, "-c", TWISTD, "-n", "--pidfile=", "timecoin", *args],
                                         cwd=self.datadir.parent, stdout=out, stderr=subprocess.STDOUT, env=env)
        return t0

    def wait_serving(self, t0: float, height: int) -> float:
        """Seconds from ``t0`` until getblockcount answers ``height`` (bounded by STARTUP_TIMEOUT)."""
        for _ in range(int(STARTUP_TIMEOUT / POLL_S) + 1):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                rpc = RPC(self.port)
                try:
                    got = rpc.call("getblockcount")
                finally:
                    rpc.close()
            except (OSError, http.client.HTTPException):
                got = None
            if got is not None:
                if got != height:
                    raise RuntimeError(f"the node serves height {got}, not {height}")
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > STARTUP_TIMEOUT:
                break
            time.sleep(POLL_S)
        raise RuntimeError(f"the node did not serve RPC within {STARTUP_TIMEOUT} s")

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc status")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _latencies(port: int, calls: list[tuple[str, str, tuple[Any, ...]]]) -> dict[str, list[float]]:
    """Seconds per request by label, one at a time on one keep-alive connection, after a short warm-up.

    The caller interleaves the labels (getblock, getblockcount, ...) so that each sees the same machine load.
    """
    rpc = RPC(port)
    try:
        for _, method, params in calls[:20]:
            rpc.call(method, *params)
        out: dict[str, list[float]] = {}
        for label, method, params in calls:
            t0 = time.perf_counter()
            rpc.call(method, *params)
            out.setdefault(label, []).append(time.perf_counter() - t0)
        return out
    finally:
        rpc.close()


def _hashes(template: Path, heights: list[int]) -> list[str]:
    with Store.open_readonly(str(template / "chain")) as store:
        out = [store.block_hash_at(h) for h in heights]
    if any(h is None for h in out):
        raise RuntimeError("the built chain lacks a block")
    return [h.hex() for h in out if h is not None]


def _measure(template: Path, height: int, requests: int, starts: int, rng: random.Random) -> dict[str, Any]:
    """Start a node on a copy of ``template`` (``starts`` times: the median start-up counts, the machine is
    shared); then its getblock/getblockcount latencies and RSS."""
    work = Path(tempfile.mkdtemp(prefix="timecoin-bench-bignode-"))
    node = NodeProcess(template, work)
    try:
        startups = []
        for i in range(starts):
            startups.append(node.wait_serving(node.start(), height))
            if i < starts - 1:
                node.stop()
        out: dict[str, Any] = {"startup": statistics.median(startups), "serving_rss": node.rss_mb()}
        calls: list[tuple[str, str, tuple[Any, ...]]] = []
        hashes = _hashes(template, [rng.randint(1, height) for _ in range(requests)]) if height else []
        for i in range(requests):
            calls.append(("count", "getblockcount", ()))
            calls.extend((f"v{v}", "getblock", (hashes[i], v)) for v in (1, 2) if hashes)
        out.update(_latencies(node.port, calls))
        out["rss"] = node.rss_mb()
        return out
    finally:
        node.stop()
        shutil.rmtree(work, ignore_errors=True)


def _with_baseline(fig: Figure, baseline: float, unit: str) -> Figure:
    fig.baseline, fig.baseline_unit = round(baseline, 3), unit
    fig.ratio = round(fig.value / baseline, 3) if baseline else None
    return fig


async def run(quick: bool) -> list[Figure]:
    blocks = QUICK_BLOCKS if quick else BLOCKS
    requests = QUICK_REQUESTS if quick else REQUESTS
    template = await threads.deferToThread(built_chain, blocks)
    empty = await threads.deferToThread(built_chain, 0)
    rng = random.Random(15)
    starts = 1 if quick else STARTS
    big = await threads.deferToThread(_measure, template, blocks, requests, starts, rng)
    small = await threads.deferToThread(_measure, empty, 0, requests, starts, rng)
    count_ms = statistics.median(big["count"]) * 1e3
    figures = [
        _with_baseline(value_figure(f"bignode.startup_{blocks}_blocks", round(big["startup"], 3), "s",
                                    at_most=MAX_STARTUP_S), small["startup"], "s, the same on a genesis-only store"),
        _with_baseline(value_figure(f"bignode.rss_{blocks}_blocks", round(big["rss"], 1), "MB", at_most=MAX_RSS_MB),
                       small["rss"], "MB, the same on a genesis-only store"),
    ]
    for verbosity in (1, 2):
        samples = big[f"v{verbosity}"]
        figures.append(_with_baseline(
            value_figure(f"bignode.getblock_v{verbosity}.median", round(statistics.median(samples) * 1e3, 3), "ms",
                         at_most=MAX_GETBLOCK_MS), count_ms, "ms, getblockcount on the same connection"))
        figures.append(_with_baseline(
            Figure(f"bignode.getblock_v{verbosity}.p99", round(sorted(samples)[int(0.99 * len(samples))] * 1e3, 3),
                   "ms"), sorted(big["count"])[int(0.99 * len(big["count"]))] * 1e3,
            "ms, getblockcount p99 on the same connection"))
    return figures
