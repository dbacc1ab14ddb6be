"""Finalized heights/s of 4 validator processes on loopback (issue 15 target 1), measured from outside.

``timecoin.bench.localnet.LocalNet`` writes a ``timecoin testnet`` layout with ``block_interval`` 0 on
free ports and runs each node as its own ``twistd`` process (empty blocks: nothing submits txs). After a
warm-up (height 5 and one more second) node 0's ``getblockcount`` is read at the start and end of the
window (10 s; ``--quick`` 3 s): heights/s is the difference over the elapsed time.

Commit-to-commit times come from the blocks themselves, not from polling: ``getblockheader`` of every
height in the window (JSON-RPC batches) gives each block's ``time_ms``, the proposer's timestamp when
it proposed (``max(now, previous + 1 ms)``); with ``block_interval`` 0 the next proposal follows the
previous commit at once, so consecutive timestamps are commit-to-commit intervals to the millisecond.
Median and p99 of those intervals are the latency figures.

The same measurement on ONE validator process (``single_node``) replaces ``bench_devnet.py``: it is the
ceiling a node reaches without any network wait. Baseline of the heights/s ratios: fsynced LMDB
commits/s on this disk (``benchmarks.baselines.lmdb_commits_per_s``), since a height costs at least one.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass

from twisted.internet import threads

from benchmarks.baselines import lmdb_commits_per_s
from benchmarks.suite import Figure, value_figure
from timecoin.bench.conn import Conn
from timecoin.bench.localnet import LocalNet

WARMUP_HEIGHT = 5
HEADER_BATCH = 500


@dataclass
class HeightsRun:
    heights: int
    seconds: float
    intervals_ms: list[int]
    exit_codes: dict[str, int]

    @property
    def rate(self) -> float:
        return self.heights / self.seconds if self.seconds > 0 else 0.0


def block_times_ms(conn: Conn, first: int, last: int) -> list[int]:
    """``time_ms`` of blocks ``first..last`` (getblockhash, then getblockheader, in batches)."""
    out: list[int] = []
    for lo in range(first, last + 1, HEADER_BATCH):
        heights = range(lo, min(last, lo + HEADER_BATCH - 1) + 1)
        hashes = [r["result"] for r in conn.batch([("getblockhash", [h]) for h in heights])]
        headers = conn.batch([("getblockheader", [h, True]) for h in hashes])
        out.extend(int(r["result"]["time_ms"]) for r in headers)
    return out


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank rule; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))])


def measure_heights(nodes: int, window: float) -> HeightsRun:
    """Run ``nodes`` validator processes, measure heights/s and commit intervals over ``window`` seconds."""
    with tempfile.TemporaryDirectory(prefix="tc-bench-testnet-") as folder:
        net = LocalNet(folder, nodes)
        codes: dict[str, int] = {}
        try:
            net.start()
            net.wait_height(WARMUP_HEIGHT, 60.0)
            time.sleep(1.0)
            conn = Conn(net.endpoints[0])
            h0, t0 = int(conn.call("getblockcount")), time.monotonic()
            time.sleep(window)
            h1, t1 = int(conn.call("getblockcount")), time.monotonic()
            times = block_times_ms(conn, h0, h1)
            conn.close()
        finally:
            codes = net.stop()
        bad = {name: code for name, code in codes.items() if code != 0}
        if bad:
            raise RuntimeError(f"nodes did not stop cleanly after SIGTERM: {bad}")
        if h1 <= h0:
            raise RuntimeError(f"no height finalized in {window:g} s ({h0} -> {h1})")
        return HeightsRun(h1 - h0, t1 - t0, [b - a for a, b in zip(times, times[1:], strict=False)], codes)


def with_baseline(fig: Figure, baseline: float, unit: str) -> Figure:
    """A value-target figure that also shows its baseline and ratio (the target stays on the value)."""
    fig.baseline, fig.baseline_unit = round(baseline, 1), unit
    fig.ratio = round(fig.value / baseline, 4) if baseline else None
    return fig


async def run(quick: bool) -> list[Figure]:
    window = 3.0 if quick else 10.0
    fsync = lmdb_commits_per_s(0.3 if quick else 1.0)
    four = await threads.deferToThread(measure_heights, 4, window)
    single = await threads.deferToThread(measure_heights, 1, 2.0 if quick else 5.0)
    unit = "fsynced LMDB commits/s"
    return [
        with_baseline(value_figure("testnet.heights_per_s", round(four.rate, 1), "heights/s", at_least=70),
                      fsync, unit),
        value_figure("testnet.commit_interval_median", statistics.median(four.intervals_ms), "ms", at_most=14),
        value_figure("testnet.commit_interval_p99", percentile([float(x) for x in four.intervals_ms], 0.99), "ms",
                     at_most=40),
        with_baseline(Figure("testnet.single_node_heights_per_s", round(single.rate, 1), "heights/s"), fsync, unit),
    ]
