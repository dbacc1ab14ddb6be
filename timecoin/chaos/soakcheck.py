"""The verdict of a soak run (``python -m timecoin.chaos.soak``): pure functions over its samples and logs.

Kept apart from the runner so each check is tested on crafted data and can be seen to fail: a leaking RSS
or fd series, a chain that stops, a planted ERROR line, a Byzantine peer that was never banned.

What "flat" means (docs/soak.md):

* **RSS**: the least-squares slope of a node's anonymous resident memory (``RssAnon``: the heap; VmRSS
  also counts the LMDB file pages read through the memory map, which grow with the chain) over the samples
  after the warm-up must stay below ``rss_mb_per_min``. The runner's default is 1 MB/min plus 600 bytes
  per transaction of load: bounded caches that a short run does not fill (the verified-signature cache of
  200,000 ids, the gossip seen-cache of 100,000, about 170 bytes an entry, one or two entries each per tx
  and per vote) grow by about 2 MB/min at 100 tx/s until full; more than that per transaction is a leak.
* **fds**: the slope must stay below ``fd_per_min`` and the last sample at most ``fd_slack`` above the
  first one after the warm-up: the peers reconnect and the RPC clients come and go, but no descriptor may
  be kept for each of them.
* **LMDB**: the used part of the map (pages up to the last written, ``timecoin_store_used_bytes``) grows
  with the chain, so its growth *per block* is what must be flat: the bytes per block of the second half of
  the samples after the warm-up may be at most ``lmdb_ratio`` (1.5) times those of the first half (plus one
  page per block of slack). Something stored per block that is never pruned at a growing cost shows up here.
* **Finality**: every node's height grows between consecutive samples (a restarted node may be caught
  up by the next sample), and the highest height grows at least ``min_blocks_per_sample`` each interval.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from twisted.logger import eventFromJSON, formatEvent

BAD_LINE = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback \(most recent call last\)|Unhandled [Ee]rror")
PAGE = 4096


@dataclass(frozen=True)
class Sample:
    """One reading of one node, ``at`` seconds into the run."""

    at: float
    node: str
    pid: int
    rss_kb: int               # VmRSS of /proc/PID/status
    anon_kb: int              # RssAnon: the heap (VmRSS also counts the LMDB file pages read through the map)
    fds: int                  # entries of /proc/PID/fd
    mdb_bytes: int            # size of data.mdb on disk
    used_bytes: int           # LMDB map in use (timecoin_store_used_bytes), -1 when /metrics did not answer
    height: int               # finalized height, -1 when RPC did not answer


@dataclass(frozen=True)
class Limits:
    """The thresholds of a verdict; defaults justified in the module doc and docs/soak.md."""

    warmup: float = 120.0             # seconds of samples not judged for slopes
    rss_mb_per_min: float = 1.0
    fd_per_min: float = 1.0
    fd_slack: int = 8
    lmdb_ratio: float = 1.5
    min_blocks_per_sample: int = 1


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    figures: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.problems


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope dy/dx of ``points``; 0.0 for fewer than two distinct x."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def by_node(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: (s.node, s.at)):
        out.setdefault(s.node, []).append(s)
    return out


def check_resources(series: Sequence[Sample], limits: Limits) -> tuple[list[str], dict[str, float]]:
    """RSS and fd slopes of one process lifetime (one pid) after the warm-up; (problems, figures)."""
    node = series[0].node if series else "?"
    judged = [s for s in series if s.at >= limits.warmup]
    figures = {"rss_start_mb": series[0].rss_kb / 1024 if series else 0.0,
               "rss_end_mb": series[-1].rss_kb / 1024 if series else 0.0,
               "anon_start_mb": series[0].anon_kb / 1024 if series else 0.0,
               "anon_end_mb": series[-1].anon_kb / 1024 if series else 0.0,
               "fds_start": float(series[0].fds) if series else 0.0,
               "fds_end": float(series[-1].fds) if series else 0.0}
    if len(judged) < 3:
        return [f"{node}: only {len(judged)} sample(s) after the {limits.warmup:g} s warm-up; need 3 to judge "
                "a slope (run longer or sample more often)"], figures
    rss = slope([(s.at / 60, s.anon_kb / 1024) for s in judged])
    fds = slope([(s.at / 60, float(s.fds)) for s in judged])
    figures |= {"anon_mb_per_min": round(rss, 3), "vmrss_mb_per_min": round(slope([(s.at / 60, s.rss_kb / 1024)
                                                                               for s in judged]), 3),
                "fd_per_min": round(fds, 3)}
    problems = []
    if rss > limits.rss_mb_per_min:
        problems.append(f"{node}: RssAnon grows {rss:.2f} MB/min after the warm-up "
                        f"({judged[0].anon_kb / 1024:.1f} -> {judged[-1].anon_kb / 1024:.1f} MB); "
                        f"the bound is {limits.rss_mb_per_min:g}")
    if fds > limits.fd_per_min:
        problems.append(f"{node}: open fds grow {fds:.2f}/min after the warm-up "
                        f"({judged[0].fds} -> {judged[-1].fds}); the bound is {limits.fd_per_min:g}")
    if judged[-1].fds > judged[0].fds + limits.fd_slack:
        problems.append(f"{node}: {judged[-1].fds} open fds at the end, {judged[0].fds} after the warm-up "
                        f"(more than {limits.fd_slack} kept)")
    return problems, figures


def check_lmdb(series: Sequence[Sample], limits: Limits) -> tuple[list[str], dict[str, float]]:
    """Bytes of LMDB map used per block: the second half's rate at most ``lmdb_ratio`` x the first half's."""
    node = series[0].node if series else "?"
    judged = [s for s in series if s.at >= limits.warmup and s.used_bytes >= 0 and s.height >= 0]
    if len(judged) < 4:
        return [], {}
    mid = len(judged) // 2
    first, second = judged[:mid + 1], judged[mid:]

    def per_block(part: Sequence[Sample]) -> float:
        blocks = part[-1].height - part[0].height
        return (part[-1].used_bytes - part[0].used_bytes) / blocks if blocks > 0 else 0.0

    a, b = per_block(first), per_block(second)
    figures = {"lmdb_used_mb": round(judged[-1].used_bytes / 2**20, 2),
               "mdb_file_mb": round(judged[-1].mdb_bytes / 2**20, 2),
               "bytes_per_block_first": round(a), "bytes_per_block_second": round(b)}
    if b > limits.lmdb_ratio * max(a, 0.0) + PAGE:
        return [f"{node}: LMDB grows {b:,.0f} bytes per block in the second half of the run, "
                f"{a:,.0f} in the first (more than {limits.lmdb_ratio:g}x): something stored per block grows"], figures
    return [], figures


def check_finality(nodes: Mapping[str, Sequence[Sample]], limits: Limits) -> list[str]:
    """The chain keeps finalizing: the top height grows each interval, and every node ends near the top."""
    problems = []
    times = sorted({s.at for series in nodes.values() for s in series})
    top = {t: max((s.height for series in nodes.values() for s in series if s.at == t), default=-1) for t in times}
    for prev, cur in zip(times, times[1:], strict=False):
        if top[cur] - top[prev] < limits.min_blocks_per_sample:
            problems.append(f"no node finalized {limits.min_blocks_per_sample} block(s) between t={prev:.0f}s "
                            f"(height {top[prev]}) and t={cur:.0f}s (height {top[cur]})")
    if times:
        end = top[times[-1]]
        for node, series in sorted(nodes.items()):
            last = series[-1].height if series else -1
            if series and series[-1].at == times[-1] and last < end - 20:
                problems.append(f"{node} ends at height {last}, {end - last} behind the top {end}")
    return problems


def bad_line(line: str) -> str | None:
    """The line, rendered, if it is an error: a JSON log event (``log_format = json``) at level error or
    critical or carrying a failure; any other line (what the process wrote outside its logger, or a text
    log) naming ERROR/CRITICAL or holding a traceback. None for a line that is fine."""
    text = line.strip()
    if text.startswith("{"):
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        if isinstance(event, dict):
            level = event.get("log_level")
            name = level.get("name") if isinstance(level, dict) else None
            if name in ("error", "critical") or "log_failure" in event:
                try:
                    message = formatEvent(eventFromJSON(text))
                except Exception:  # noqa: BLE001 - a line we cannot render is still reported, raw
                    message = text
                return f"[{name}] {event.get('log_namespace', '?')}: {message}"
            return None
    return text if BAD_LINE.search(text) else None


def scan_log(lines: Iterable[str], name: str, limit: int = 10) -> list[str]:
    """Error lines and tracebacks of one node's log (:func:`bad_line`), as problems (at most ``limit`` shown)."""
    bad = [b for b in (bad_line(line) for line in lines) if b is not None]
    out = [f"{name} log: {line[:300]}" for line in bad[:limit]]
    if len(bad) > limit:
        out.append(f"{name} log: ... and {len(bad) - limit} more such line(s)")
    return out


def judge(samples: Sequence[Sample], logs: Mapping[str, Iterable[str]], banned_by: Mapping[str, bool],
          limits: Limits, steady: Sequence[str]) -> Verdict:
    """Every check: resources of the ``steady`` nodes (never restarted), LMDB and finality of all, the logs,
    and the Byzantine peer banned by every honest node (``banned_by``: node -> banned at the end)."""
    verdict = Verdict()
    nodes = by_node(samples)
    for node, series in nodes.items():
        figures: dict[str, float] = {"height_end": float(series[-1].height)}
        if node in steady:
            pids = {s.pid for s in series}
            if len(pids) != 1:
                verdict.problems.append(f"{node} was meant to run throughout but had pids {sorted(pids)}")
            problems, res = check_resources(series, limits)
            verdict.problems += problems
            figures |= res
        else:
            figures |= {"rss_end_mb": series[-1].rss_kb / 1024, "anon_end_mb": series[-1].anon_kb / 1024,
                        "fds_end": float(series[-1].fds),
                        "restarts": float(len({s.pid for s in series}) - 1)}
        problems, lmdb = check_lmdb(series, limits)
        verdict.problems += problems
        verdict.figures[node] = figures | lmdb
    verdict.problems += check_finality(nodes, limits)
    for name, lines in sorted(logs.items()):
        verdict.problems += scan_log(lines, name)
    if not banned_by:
        verdict.problems.append("the Byzantine peer's ban could not be read from any node")
    for node, banned in sorted(banned_by.items()):
        if not banned:
            verdict.problems.append(f"{node} has not banned the Byzantine peer at the end")
    return verdict


def samples_table(samples: Sequence[Sample]) -> str:
    """The samples, one line each: what an operator reads to see the trend."""
    lines = [f"{'t(s)':>6} {'node':<6} {'pid':>7} {'rss MB':>8} {'anon MB':>8} {'fds':>5} {'mdb MB':>8} "
             f"{'used MB':>8} {'height':>7}"]
    for s in sorted(samples, key=lambda s: (s.at, s.node)):
        used = f"{s.used_bytes / 2**20:8.2f}" if s.used_bytes >= 0 else f"{'-':>8}"
        lines.append(f"{s.at:6.0f} {s.node:<6} {s.pid:>7} {s.rss_kb / 1024:8.1f} {s.anon_kb / 1024:8.1f} {s.fds:>5} "
                     f"{s.mdb_bytes / 2**20:8.2f} {used} {s.height:>7}")
    return "\n".join(lines)
